// Where models come from. Shared by the page side (gitcap.js, app.js) and the model worker.
//
// Assumption (no network where this was written, so it could not be checked): the Hugging Face
// hub's `microsoft/git-large-r-coco` has only pytorch_model.bin on `main`, and model.safetensors
// at the revision `refs/pr/1` (the safetensors conversion pull request). For
// `microsoft/git-base-coco` the revision is assumed to be `main`. Both are plain settings below;
// when a revision turns out to have no model.safetensors, the worker looks through the repo's
// pull-request refs for one that has (see findSafetensorsRevision in hub.js) and says so.

export const HUB = 'https://huggingface.co';

export const MODELS = [
  {
    id: 'microsoft/git-large-r-coco',
    revision: 'refs/pr/1',
    label: 'GIT large (COCO)',
    note: 'best captions',
    // model.safetensors (f32) and the small files. Stored with the default store, q8_0 (converted
    // while downloading): 425.7 MB, the size gitcap quantize gives git-large's shapes.
    downloadBytes: 1_577_000_000,
    storedBytes: 426_000_000,
  },
  {
    id: 'microsoft/git-base-coco',
    revision: 'main',
    label: 'GIT base (COCO)',
    note: 'faster, smaller',
    // q8_0: the converter's size for git-base's shapes (ViT-B/16, 12 + 6 layers), 192.7 MB.
    downloadBytes: 707_000_000,
    storedBytes: 193_000_000,
  },
];

export const DEFAULT_MODEL = MODELS[0];

/** Files besides the weights that a checkpoint folder may hold, in the order they are loaded. */
export const SMALL_FILES = [
  { name: 'config.json', required: true },
  { name: 'tokenizer.json', required: false },
  { name: 'vocab.txt', required: false },
  { name: 'tokenizer_config.json', required: false },
  { name: 'preprocessor_config.json', required: false },
  { name: 'generation_config.json', required: false },
];

export const WEIGHTS_FILE = 'model.safetensors';

export function hubResolveBase(id, revision) {
  return `${HUB}/${id}/resolve/${encodeURIComponent(revision)}/`;
}

/**
 * Turns the page's `?model=` value (or nothing) into a model source:
 *   (none)                      the default hub checkpoint
 *   hf:owner/name[@revision]    a hub checkpoint
 *   <url ending in .gguf>       a single-file GGUF model
 *   <folder url>                a checkpoint folder (a mirror, `gitcap serve --model-dir`, ...)
 * Relative URLs are resolved against `pageUrl`.
 */
export function parseModelParam(param, pageUrl) {
  if (!param) return hubSource(DEFAULT_MODEL.id, DEFAULT_MODEL.revision);
  const hf = /^hf:([\w.-]+\/[\w.-]+)(?:@(.+))?$/.exec(param.trim());
  if (hf) {
    const known = MODELS.find((m) => m.id === hf[1]);
    return hubSource(hf[1], hf[2] || known?.revision || 'main');
  }
  let url;
  try {
    url = new URL(param, pageUrl);
  } catch {
    throw new Error(`?model=${param} is neither a URL nor hf:owner/name`);
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') {
    throw new Error(`?model=${param}: only http(s) URLs can be loaded`);
  }
  // A hub resolve URL is a hub source (its file list and SHA-256s come from the hub's API).
  const m = /^\/([\w.-]+\/[\w.-]+)\/resolve\/([^/]+)\/?$/.exec(url.pathname);
  if (url.origin === HUB && m) return hubSource(m[1], decodeURIComponent(m[2]));
  if (/\.gguf$/i.test(url.pathname)) {
    const name = decodeURIComponent(url.pathname.split('/').pop());
    return {
      kind: 'gguf',
      key: `url:${url.href}`,
      label: name,
      base: new URL('./', url).href,
      weights: { name, url: url.href, kind: 'gguf' },
    };
  }
  if (!url.pathname.endsWith('/')) url.pathname += '/';
  url.search = '';
  url.hash = '';
  const parts = url.pathname.split('/').filter(Boolean);
  return {
    kind: 'folder',
    key: `url:${url.href}`,
    label: decodeURIComponent(parts[parts.length - 1] || url.host),
    base: url.href,
    weights: { name: WEIGHTS_FILE, url: new URL(WEIGHTS_FILE, url).href, kind: 'safetensors' },
  };
}

export function hubSource(id, revision) {
  const base = hubResolveBase(id, revision);
  const known = MODELS.find((m) => m.id === id);
  return {
    kind: 'folder',
    hub: { id, revision },
    key: `hf:${id}@${revision}`,
    label: known ? known.label : id,
    base,
    weights: { name: WEIGHTS_FILE, url: base + WEIGHTS_FILE, kind: 'safetensors' },
  };
}

export function formatBytes(n) {
  if (n == null || !isFinite(n)) return '?';
  const units = ['B', 'KB', 'MB', 'GB', 'TB'];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) {
    n /= 1000;
    i++;
  }
  return `${n >= 100 || i === 0 ? Math.round(n) : n.toFixed(1)} ${units[i]}`;
}
