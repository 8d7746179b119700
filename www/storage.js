// The browser's storage for models (OPFS): one folder per model (keyed by model id and revision,
// or URL, and how it is stored), holding manifest.json and the files as chunk files
// `<name>.<index>`. A chunk file is only used when its size is exactly right; createWritable()
// commits on close, so a chunk either exists whole or not at all.
//
// Used by the worker (reading and writing) and by the page (listing and deleting, before any
// worker exists), so nothing here needs the WebAssembly module.

import { formatBytes } from './models.js';
import { errorMessage } from './protocol.js';

export const STORE_DIR = 'gitcap-models';
export const MANIFEST = 'manifest.json';

export async function storeRoot(create = true) {
  if (!globalThis.navigator?.storage?.getDirectory) return null;
  try {
    const root = await navigator.storage.getDirectory();
    return await root.getDirectoryHandle(STORE_DIR, { create });
  } catch {
    return null;
  }
}

/** The folder name for a model key: readable slug plus 16 hex digits of the key's SHA-256. */
export function keyDirName(key, sha256Hex) {
  const hex = sha256Hex(new TextEncoder().encode(key));
  const slug = key.replace(/^[a-z]+:(https?:\/\/)?/, '').replace(/[^A-Za-z0-9._-]+/g, '_').slice(0, 60);
  return `${slug}-${hex.slice(0, 16)}`;
}

export async function readJson(dir, name) {
  try {
    const f = await (await dir.getFileHandle(name)).getFile();
    return JSON.parse(await f.text());
  } catch {
    return null;
  }
}

export async function writeFile(dir, name, bytes) {
  try {
    await writeFileUnchecked(dir, name, bytes);
  } catch (e) {
    if (e?.name === 'QuotaExceededError') throw quotaError(null, null);
    throw new Error(`Could not save ${name} in the browser's storage: ${errorMessage(e)}`);
  }
}

export const writeJson = (dir, name, value) => writeFile(dir, name, new TextEncoder().encode(JSON.stringify(value)));

async function writeFileUnchecked(dir, name, bytes) {
  const fh = await dir.getFileHandle(name, { create: true });
  if (fh.createWritable) {
    const w = await fh.createWritable();
    await w.write(bytes);
    await w.close();
    return;
  }
  // Safari: sync access handles only (in workers, where the writing happens).
  const h = await fh.createSyncAccessHandle();
  try {
    h.truncate(0);
    h.write(bytes, { at: 0 });
    h.flush();
  } finally {
    h.close();
  }
}

export async function fileSize(dir, name) {
  try {
    return (await (await dir.getFileHandle(name)).getFile()).size;
  } catch {
    return -1;
  }
}

export async function readBytes(dir, name) {
  const f = await (await dir.getFileHandle(name)).getFile();
  return new Uint8Array(await f.arrayBuffer());
}

export async function removeEntry(dir, name) {
  try {
    await dir.removeEntry(name, { recursive: true });
  } catch {}
}

async function dirBytes(dir) {
  let n = 0;
  for await (const [, h] of dir.entries()) {
    if (h.kind === 'file') n += (await h.getFile()).size;
  }
  return n;
}

export async function storageEstimate() {
  try {
    return await navigator.storage.estimate();
  } catch {
    return null;
  }
}

/** The stored models (complete or partial) and the origin's storage estimate. */
export async function cacheInfo() {
  const entries = [];
  const root = await storeRoot(false);
  if (root) {
    for await (const [name, h] of root.entries()) {
      if (h.kind !== 'directory') continue;
      const m = await readJson(h, MANIFEST);
      entries.push({
        dir: name,
        key: m?.key ?? name,
        source: m?.source ?? m?.key ?? null,
        store: m?.store ?? (m ? 'as-is' : null),
        label: m?.label ?? name,
        complete: !!m?.complete,
        bytes: await dirBytes(h),
        total: m?.total ?? null,
      });
    }
  }
  const est = await storageEstimate();
  return { entries, usage: est?.usage ?? null, quota: est?.quota ?? null, available: !!globalThis.navigator?.storage?.getDirectory };
}

/** Deletes every stored model. */
export async function clearCache() {
  const root = await storeRoot(false);
  if (!root) return;
  const names = [];
  for await (const [name] of root.entries()) names.push(name);
  for (const n of names) await removeEntry(root, n);
}

export function quotaError(needed, available) {
  const what = needed != null ? `The model needs ${formatBytes(needed)} of storage` : 'The model does not fit in storage';
  const room =
    available != null
      ? `, but this browser lets this page store only ${formatBytes(Math.max(0, available))} more.`
      : ', but this browser refused to store more for this page (its storage quota or the disk is full).';
  const err = new Error(
    `${what}${room} Free up disk space or clear other sites' data, choose the smaller model, ` +
      'or load it without saving (it is then downloaded again on every visit).'
  );
  err.code = 'quota';
  err.needed = needed;
  err.available = available;
  return err;
}
