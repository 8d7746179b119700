// The model store: the browser's origin private file system (OPFS), one folder per model. Used by
// the model worker (worker.js); nothing here needs the wasm module.
import { formatBytes } from './models.js';

const STORE_DIR = 'gitcap-models';
export const MANIFEST = 'manifest.json';

export function errorMessage(e) {
  if (e == null) return 'unknown error';
  if (typeof e === 'string') return e;
  return e.message || String(e);
}

/** The error for a model that does not fit the storage quota (`needed`, `available`: bytes or null). */
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

// Storage (OPFS): one folder per model (keyed by model id and revision, or URL), holding
// manifest.json and the files as chunk files `<name>.<index>`. A chunk file is only used when
// its size is exactly right; createWritable() commits on close, so a chunk either exists whole
// or not at all.

export async function storeRoot(create = true) {
  if (!navigator.storage?.getDirectory) return null;
  try {
    const root = await navigator.storage.getDirectory();
    return await root.getDirectoryHandle(STORE_DIR, { create });
  } catch {
    return null;
  }
}

/** The folder name of a model's key: readable, and unique by the key's SHA-256 (`sha256Hex`,
 *  bytes to hex, is the wasm module's: this file does not load it). */
export async function keyDirName(key, sha256Hex) {
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

export async function writeFileUnchecked(dir, name, bytes) {
  const fh = await dir.getFileHandle(name, { create: true });
  if (fh.createWritable) {
    const w = await fh.createWritable();
    await w.write(bytes);
    await w.close();
    return;
  }
  // Safari: sync access handles only (workers only, which this is).
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

export async function dirBytes(dir) {
  let n = 0;
  for await (const [, h] of dir.entries()) {
    if (h.kind === 'file') n += (await h.getFile()).size;
  }
  return n;
}

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
        label: m?.label ?? name,
        complete: !!m?.complete,
        bytes: await dirBytes(h),
        total: m?.total ?? null,
      });
    }
  }
  let usage = null;
  let quota = null;
  try {
    ({ usage, quota } = await navigator.storage.estimate());
  } catch {}
  return { entries, usage, quota, available: !!navigator.storage?.getDirectory };
}

/** Removes every stored model; `busy`: a download is writing to the store. */
export async function clearCache(busy) {
  if (busy) throw new Error('A download is in progress; wait for it to finish before clearing the cache.');
  const root = await storeRoot(false);
  if (!root) return;
  const names = [];
  for await (const [name] of root.entries()) names.push(name);
  for (const n of names) await removeEntry(root, n);
}
