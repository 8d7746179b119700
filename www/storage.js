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
    // A file being written through a sync access handle (ChunkAppender) may refuse getFile()
    // in some engines while it is open; it is counted once the download is over.
    if (h.kind === 'file') n += await h.getFile().then((f) => f.size, () => 0);
  }
  return n;
}

/** Removes every file of `dir` whose name starts with `prefix`. */
export async function removeByPrefix(dir, prefix) {
  const names = [];
  for await (const [name] of dir.entries()) if (name.startsWith(prefix)) names.push(name);
  for (const name of names) await removeEntry(dir, name);
}

/**
 * Writes a file that arrives in pieces as chunk files of `chunkSize` bytes (`chunkFile(i)` names
 * them), appending to the last one, so that what was written can be kept across an interruption
 * without rewriting it: a converted download (store_q8.js) saves its resume point after
 * `flush()`, and the next visit opens the file again at that point's length, cutting off
 * anything written after it. Appends go through a sync access handle (dedicated workers: the
 * model worker); where there is none, the incomplete last chunk is kept in memory and written
 * whole at each flush.
 */
export class ChunkAppender {
  /** Opens the file at `length` bytes: the chunks before are kept, the one it ends in is cut there, later ones are removed. */
  static async open(dir, chunkFile, chunkSize, length = 0) {
    const a = new ChunkAppender(dir, chunkFile, chunkSize);
    a.index = Math.floor(length / chunkSize);
    a.offset = length % chunkSize;
    a.length = length;
    // Chunks past the one being continued belong to output written after the resume point.
    const later = [];
    for await (const [name] of dir.entries()) {
      const i = Number(/\.(\d+)$/.exec(name)?.[1]);
      if (i > a.index && chunkFile(i) === name) later.push(name);
    }
    for (const name of later) await removeEntry(dir, name);
    if (a.offset === 0) {
      await removeEntry(dir, chunkFile(a.index));
    } else {
      const have = await fileSize(dir, chunkFile(a.index));
      if (have < a.offset) throw new Error(`${chunkFile(a.index)} holds ${Math.max(have, 0)} bytes, ${a.offset} were saved`);
      await a._openChunk(true); // cut there
      await a.flush();
    }
    return a;
  }

  constructor(dir, chunkFile, chunkSize) {
    this.dir = dir;
    this.chunkFile = chunkFile;
    this.chunkSize = chunkSize;
    this.index = 0; // chunk being written
    this.offset = 0; // bytes in it
    this.length = 0; // bytes of the file
    this.handle = null; // sync access handle of chunk `index`
    this.memory = null; // without sync access handles: chunk `index`'s bytes so far
  }

  async _openChunk(keep) {
    const fh = await this.dir.getFileHandle(this.chunkFile(this.index), { create: true });
    if (fh.createSyncAccessHandle) {
      try {
        this.handle = await fh.createSyncAccessHandle();
        await this.handle.truncate(keep ? this.offset : 0);
        return;
      } catch (e) {
        if (this.handle) await this.handle.close();
        this.handle = null;
        if (e?.name === 'QuotaExceededError') throw quotaError(null, null);
        if (e?.name !== 'InvalidStateError' && e?.name !== 'NotSupportedError' && e?.name !== 'TypeError') throw e;
        // Not a dedicated worker: fall back to whole-chunk writes.
      }
    }
    this.memory = new Uint8Array(this.chunkSize);
    if (keep) this.memory.set((await readBytes(this.dir, this.chunkFile(this.index))).subarray(0, this.offset));
  }

  async append(bytes) {
    let at = 0;
    while (at < bytes.length) {
      if (!this.handle && !this.memory) await this._openChunk(this.offset > 0);
      const n = Math.min(this.chunkSize - this.offset, bytes.length - at);
      const part = bytes.subarray(at, at + n);
      if (this.handle) {
        let written;
        try {
          written = await this.handle.write(part, { at: this.offset });
        } catch (e) {
          if (e?.name === 'QuotaExceededError') throw quotaError(null, null);
          throw new Error(`Could not save ${this.chunkFile(this.index)} in the browser's storage: ${errorMessage(e)}`);
        }
        if (written !== n) throw quotaError(null, null); // a short write: the disk or quota is full
      } else {
        this.memory.set(part, this.offset);
      }
      this.offset += n;
      this.length += n;
      at += n;
      if (this.offset === this.chunkSize) await this._closeChunk();
    }
  }

  async _closeChunk() {
    await this.flush();
    this.memory = null;
    this.index++;
    this.offset = 0;
  }

  /**
   * Makes everything appended so far durable (before a resume point that counts it is saved),
   * and lets go of the chunk's handle until the next append: between resume points nothing
   * holds a lock on the stored files (the page may list them; an interrupted visit leaves none).
   */
  async flush() {
    if (this.handle) {
      await this.handle.flush();
      await this.handle.close();
      this.handle = null;
    } else if (this.memory && this.offset > 0) {
      await writeFile(this.dir, this.chunkFile(this.index), this.memory.subarray(0, this.offset));
    }
  }

  /** Flushes and lets go of the file (always call it, also after an error: an open handle locks the chunk). */
  async close() {
    try {
      await this.flush();
    } finally {
      if (this.handle) await this.handle.close();
      this.handle = null;
      this.memory = null;
    }
  }
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
