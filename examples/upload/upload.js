// Suggests alt text for the chosen photo; the suggestion is only a starting point the person
// edits, and it never replaces text they typed.
import { Captioner } from '../../dist/gitcap/gitcap.js';

const $ = (id) => document.getElementById(id);
const model = new URLSearchParams(location.search).get('model') ?? undefined;
const ready = Captioner.load({ model });
let pending = null;

$('photo').addEventListener('change', async () => {
  const file = $('photo').files[0];
  if (!file) return;
  $('preview').src = URL.createObjectURL(file);
  $('preview').hidden = false;
  pending?.abort();
  pending = new AbortController();
  const alt = $('alt');
  if (alt.dataset.typed) return; // the person's words stay
  $('hint').textContent = '(suggesting…)';
  alt.value = '';
  try {
    const captioner = await ready;
    const { text } = await captioner.caption(file, {
      signal: pending.signal,
      onToken: (t) => {
        if (!alt.dataset.typed) alt.value += t;
      },
    });
    if (!alt.dataset.typed) alt.value = text;
    $('hint').textContent = '(suggested: edit it as you like)';
    alt.dataset.suggested = text;
  } catch (e) {
    if (e.name !== 'AbortError') $('hint').textContent = `(no suggestion: ${e.message})`;
  }
});
$('alt').addEventListener('input', () => ($('alt').dataset.typed = '1'));
$('form').addEventListener('submit', (e) => {
  e.preventDefault();
  alert(`Would publish with alt text: ${$('alt').value}`);
});
