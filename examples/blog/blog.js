// Fills in the alt text of every image of the post that has none, on this device.
import { Captioner, fillMissingAlt } from '../../dist/gitcap/gitcap.js';

const status = document.getElementById('status');
const model = new URLSearchParams(location.search).get('model') ?? undefined;
const captioner = await Captioner.load({
  model,
  onProgress: (p) => (status.textContent = `Loading the captioner: ${Math.round((100 * p.loadedBytes) / p.totalBytes)}%`),
});
status.textContent = 'Writing alt text…';
const entries = await fillMissingAlt(document.getElementById('post'), { captioner, maxNewTokens: 20 });
for (const e of entries) {
  const shown = e.img.closest('figure')?.querySelector('.alt');
  if (shown) shown.textContent = 'text' in e ? `alt: ${e.text}` : `no alt text: ${e.error.message}`;
}
status.textContent = `Alt text written for ${entries.filter((e) => 'text' in e).length} images.`;
document.body.dataset.done = '';
