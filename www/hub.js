// Planning a download: which files a model source has, their sizes and SHA-256s, from the
// Hugging Face hub's API or from HEAD requests to a plain folder or a .gguf URL.

import { SMALL_FILES, HUB } from './models.js';
import { errorMessage } from './protocol.js';

export function sha256FromEtag(v) {
  if (!v) return null;
  const t = v.trim().replace(/^W\//, '').replace(/^"|"$/g, '').toLowerCase();
  return /^[0-9a-f]{64}$/.test(t) ? t : null;
}

async function head(url) {
  try {
    const r = await fetch(url, { method: 'HEAD', cache: 'no-store' });
    const sizeHeader = r.headers.get('x-linked-size') ?? r.headers.get('content-length');
    const size = sizeHeader == null ? null : Number(sizeHeader);
    return {
      ok: r.ok,
      status: r.status,
      html: (r.headers.get('content-type') || '').includes('text/html'),
      size: Number.isSafeInteger(size) && size >= 0 ? size : null,
      sha256: sha256FromEtag(r.headers.get('x-linked-etag')) ?? sha256FromEtag(r.headers.get('etag')),
    };
  } catch (e) {
    return { ok: false, status: 0, error: errorMessage(e) };
  }
}

async function hubTree(id, revision) {
  const url = `${HUB}/api/models/${id}/tree/${encodeURIComponent(revision)}`;
  const r = await fetch(url, { cache: 'no-store' });
  if (!r.ok) throw new Error(`the hub answered ${r.status} for ${id} at revision ${revision}`);
  const list = await r.json();
  const files = new Map();
  for (const e of list) {
    if (e.type !== 'file') continue;
    files.set(e.path, { size: e.lfs?.size ?? e.size ?? null, sha256: e.lfs?.oid ?? e.lfs?.sha256 ?? null });
  }
  return files;
}

/** For a hub repo whose revision lacks model.safetensors: a pull-request ref that has it. */
async function findSafetensorsRevision(id) {
  try {
    const r = await fetch(`${HUB}/api/models/${id}/refs?include_prs=1`, { cache: 'no-store' });
    if (!r.ok) return null;
    const refs = await r.json();
    for (const pr of refs.pullRequests || []) {
      const files = await hubTree(id, pr.ref).catch(() => null);
      if (files?.has('model.safetensors')) return pr.ref;
    }
  } catch {}
  return null;
}

export async function planFromNetwork(src) {
  const files = [];
  if (src.kind === 'gguf') {
    const h = await head(src.weights.url);
    if (!h.ok) throw new Error(fetchFailure(src.weights.url, h));
    files.push({ ...src.weights, size: h.size, sha256: h.sha256, weights: true });
    return files;
  }
  if (src.hub) {
    let tree;
    try {
      tree = await hubTree(src.hub.id, src.hub.revision);
    } catch (e) {
      throw new Error(`Could not list ${src.hub.id} on the Hugging Face hub (${errorMessage(e)}). Are you offline?`);
    }
    if (!tree.has('model.safetensors')) {
      const alt = await findSafetensorsRevision(src.hub.id);
      const weights = [...tree.keys()].filter((p) => /\.(bin|safetensors|gguf|h5|msgpack)$/.test(p));
      throw new Error(
        `${src.hub.id} at revision ${src.hub.revision} has no model.safetensors` +
          (weights.length ? ` (only ${weights.join(', ')})` : '') +
          '; the browser can read only safetensors or GGUF.' +
          (alt ? ` Revision ${alt} has it: open this page with ?model=hf:${src.hub.id}@${alt}` : '')
      );
    }
    for (const f of SMALL_FILES) {
      if (f.name === 'vocab.txt' && tree.has('tokenizer.json')) continue;
      const t = tree.get(f.name);
      if (!t) {
        if (f.required) throw new Error(`${src.hub.id} has no ${f.name}`);
        continue;
      }
      files.push({ name: f.name, url: src.base + f.name, size: t.size, sha256: t.sha256 });
    }
    const w = tree.get('model.safetensors');
    files.push({ ...src.weights, size: w.size, sha256: w.sha256, weights: true });
    return files;
  }
  // A plain folder: ask for each file.
  const heads = await Promise.all([...SMALL_FILES.map((f) => head(src.base + f.name)), head(src.weights.url)]);
  for (const [i, f] of SMALL_FILES.entries()) {
    const h = heads[i];
    if (f.name === 'vocab.txt' && files.some((x) => x.name === 'tokenizer.json')) continue;
    if (!h.ok || h.html) {
      if (f.required) {
        if (h.status === 0) throw new Error(`Could not reach ${src.base} (${h.error || 'network error'}). Are you offline?`);
        throw new Error(`No checkpoint at ${src.base}: ${f.name} ${h.html ? 'is an HTML page' : `answered ${h.status}`}`);
      }
      continue;
    }
    files.push({ name: f.name, url: src.base + f.name, size: h.size, sha256: h.sha256 });
  }
  if (!files.some((f) => f.name === 'tokenizer.json' || f.name === 'vocab.txt')) {
    throw new Error(`${src.base} has neither tokenizer.json nor vocab.txt`);
  }
  const w = heads[heads.length - 1];
  if (!w.ok || w.html) throw new Error(fetchFailure(src.weights.url, w));
  files.push({ ...src.weights, size: w.size, sha256: w.sha256, weights: true });
  return files;
}

function fetchFailure(url, h) {
  const name = decodeURIComponent(new URL(url).pathname.split('/').pop());
  if (h.status === 0) return `Could not reach ${url} (${h.error || 'network error'}). Are you offline?`;
  if (h.status === 404) return `${name} was not found at ${url}`;
  if (h.html) return `${url} is an HTML page, not ${name}`;
  return `${url} answered HTTP ${h.status}`;
}
