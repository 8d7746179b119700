import { Captioner } from 'gitcap';

const out = document.getElementById('out');
const model = new URLSearchParams(location.search).get('model') ?? undefined;
try {
  const captioner = await Captioner.load({ model, store: 'as-is' });
  const { text, tokenIds } = await captioner.caption(document.getElementById('photo'));
  out.textContent = text;
  out.dataset.tokenIds = tokenIds.join(',');
  out.dataset.done = '';
} catch (e) {
  out.textContent = e.message;
  out.dataset.error = e.message;
}
