// Downloading a model's files: HTTP Range requests chunk by chunk, each chunk stored (OPFS)
// before the next is asked for, so an interrupted download resumes where it stopped; retries
// with back-off; SHA-256 checked as the bytes go by; progress with the rate over the last seconds.
//
// `store` below is the model's OPFS folder (null: nothing is stored). How the weights are kept
// (Captioner.load's `store` option) is decided in model.js, which hands streamFile its sink.

import { formatBytes } from './models.js';
import { errorMessage } from './protocol.js';
import { fileSize, readBytes, writeFile, removeEntry } from './storage.js';
import { sha256FromEtag } from './hub.js';

export const DEFAULT_CHUNK = 16 * 1024 * 1024;
const RETRY_DELAYS_MS = [250, 1000, 3000, 6000];
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Bytes available so far; reports through `report` (the worker posts it), at most every 100 ms. */
export class Progress {
  constructor(total, report) {
    this.report = report;
    this.total = total;
    this.done = 0; // bytes available (from the store or the network)
    this.net = 0; // bytes fetched over the network in this load
    this.phase = 'download';
    this.file = '';
    this.samples = [];
    this.lastPost = 0;
  }
  add(n, fromNetwork) {
    this.done += n;
    if (fromNetwork) {
      this.net += n;
      this.samples.push([performance.now(), this.net]);
      if (this.samples.length > 50) this.samples.shift();
    }
    this.emit();
  }
  rate() {
    const s = this.samples;
    const now = performance.now();
    while (s.length > 2 && now - s[0][0] > 5000) s.shift();
    if (s.length < 2) return 0;
    const [t0, b0] = s[0];
    const [t1, b1] = s[s.length - 1];
    return t1 > t0 ? ((b1 - b0) * 1000) / (t1 - t0) : 0;
  }
  emit(force = false) {
    const now = performance.now();
    if (!force && now - this.lastPost < 100) return;
    this.lastPost = now;
    this.report({
      phase: this.phase,
      file: this.file,
      loadedBytes: this.done,
      totalBytes: this.total,
      networkBytes: this.net,
      rate: this.rate(),
    });
  }
}

class HttpError extends Error {
  constructor(msg, retry) {
    super(msg);
    this.retry = retry;
  }
}

function checkNotHtml(res, url) {
  const ct = res.headers.get('content-type') || '';
  if (ct.includes('text/html')) throw new HttpError(`${url} sent an HTML page instead of the file`, false);
}

async function readExactly(res, len, url) {
  if (!res.body) throw new HttpError(`no body from ${url}`, true);
  const out = new Uint8Array(len);
  let off = 0;
  const reader = res.body.getReader();
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      if (off + value.length > len) throw new HttpError(`${url} sent more bytes than expected`, false);
      out.set(value, off);
      off += value.length;
    }
  } catch (e) {
    if (e instanceof HttpError) throw e;
    throw new HttpError(`download of ${url} was interrupted at ${formatBytes(off)} (${errorMessage(e)})`, true);
  } finally {
    reader.releaseLock?.();
  }
  if (off !== len) throw new HttpError(`${url} ended after ${off} of ${len} bytes`, true);
  return out;
}

/** Fetches bytes [start, end] (inclusive) of a file of `size` bytes. */
async function fetchRange(file, start, end) {
  let res;
  try {
    res = await fetch(file.url, { headers: { Range: `bytes=${start}-${end}` }, cache: 'no-store' });
  } catch (e) {
    throw new HttpError(`could not fetch ${file.name}: ${errorMessage(e)}`, true);
  }
  if (res.status === 206) {
    checkNotHtml(res, file.url);
    const cr = res.headers.get('content-range');
    if (cr) {
      const m = /bytes (\d+)-(\d+)\/(\d+|\*)/.exec(cr);
      if (!m || Number(m[1]) !== start || Number(m[2]) !== end || (m[3] !== '*' && Number(m[3]) !== file.size)) {
        throw new HttpError(`${file.name}: the server sent ${cr}, expected bytes ${start}-${end}/${file.size}; the file changed?`, false);
      }
    }
    const etagSha = sha256FromEtag(res.headers.get('x-linked-etag')) ?? sha256FromEtag(res.headers.get('etag'));
    if (file.sha256 && etagSha && etagSha !== file.sha256) {
      throw new HttpError(`${file.name} changed on the server during the download`, false);
    }
    return readExactly(res, end - start + 1, file.url);
  }
  if (res.status === 200) {
    // No range support: take the part we need from the whole body.
    checkNotHtml(res, file.url);
    const reader = res.body.getReader();
    const out = new Uint8Array(end - start + 1);
    let pos = 0;
    let off = 0;
    try {
      while (off < out.length) {
        const { done, value } = await reader.read();
        if (done) break;
        const a = Math.max(start - pos, 0);
        const b = Math.min(value.length, end + 1 - pos);
        if (b > a) {
          out.set(value.subarray(a, b), off);
          off += b - a;
        }
        pos += value.length;
      }
    } catch (e) {
      throw new HttpError(`download of ${file.name} was interrupted (${errorMessage(e)})`, true);
    } finally {
      reader.cancel().catch(() => {});
    }
    if (off !== out.length) throw new HttpError(`${file.name} ended early`, true);
    return out;
  }
  const retry = res.status >= 500 || res.status === 429 || res.status === 408;
  throw new HttpError(
    res.status === 404 ? `${file.name} was not found at ${file.url}` : `${file.url} answered HTTP ${res.status}`,
    retry
  );
}

/** Runs `fn`, again after a pause when it fails in a way worth retrying; `onRetry` hears each retry. */
async function withRetries(what, fn, onRetry) {
  for (let attempt = 0; ; attempt++) {
    try {
      return await fn();
    } catch (e) {
      if (!(e instanceof HttpError) || !e.retry || attempt >= RETRY_DELAYS_MS.length) throw e;
      onRetry?.({ type: 'retry', what, attempt: attempt + 1, message: errorMessage(e) });
      await sleep(RETRY_DELAYS_MS[attempt]);
    }
  }
}

export const chunkName = (file, i) => `${file.name}.${String(i).padStart(5, '0')}`;

/** Bytes [start, end] (inclusive) of `file`, with the downloads' retries (e.g. a file's header). */
export const fetchBytes = (file, start, end, onRetry) => withRetries(file.name, () => fetchRange(file, start, end), onRetry);

/**
 * Delivers a file's bytes to `sink` chunk by chunk, in order: chunks already in the store are
 * read from it; the others are fetched with HTTP Range requests and stored before the next
 * one is requested. The SHA-256 (when known) is computed as the chunks go by, so nothing is
 * buffered whole; a mismatch discards the stored chunks and fails (an Error with code 'damaged').
 * `from`: the first chunk to deliver, for a caller that kept what the earlier ones gave (a
 * converted download resuming); `hasher` then has to hold the hash of the chunks before it.
 */
export async function streamFile({ file, store, progress, sink, newHasher, hasher = null, from = 0, onRetry }) {
  const chunk = file.chunkSize;
  const size = file.size;
  const n = Math.max(1, Math.ceil(size / chunk));
  if (from > 0 && file.sha256 && !hasher) throw new Error(`streamFile: resuming ${file.name} at chunk ${from} needs the hash of the chunks before`);
  hasher = file.sha256 ? hasher ?? newHasher() : null;
  progress.file = file.name;
  try {
    for (let i = from; i < n; i++) {
      const start = i * chunk;
      const end = Math.min(size, start + chunk) - 1;
      const len = end - start + 1;
      let bytes = null;
      if (store && (await fileSize(store, chunkName(file, i))) === len) {
        bytes = await readBytes(store, chunkName(file, i));
        progress.add(len, false);
      } else {
        if (file.complete) throw new CacheDamaged(`${file.name} chunk ${i} is missing from the cache`);
        bytes = await withRetries(file.name, () => fetchRange(file, start, end), onRetry);
        if (store) await writeFile(store, chunkName(file, i), bytes);
        progress.add(len, true);
      }
      if (hasher) hasher.update(bytes);
      await sink(bytes);
      bytes = null;
    }
    if (hasher) {
      const got = hasher.hex();
      if (got !== file.sha256) {
        if (store) for (let i = 0; i < n; i++) await removeEntry(store, chunkName(file, i));
        const err = new Error(
          `${file.name} is damaged: its SHA-256 is ${got.slice(0, 12)}…, the server published ${file.sha256.slice(0, 12)}…. ` +
            'The download was discarded; try again.'
        );
        err.code = 'damaged';
        throw err;
      }
    }
  } finally {
    hasher?.free?.();
  }
}

export class CacheDamaged extends Error {}

/** A small file, whole. Without a known size it is fetched without Range and checked as JSON. */
export async function fetchSmall({ file, store, progress, sha256Hex, onRetry }) {
  if (store && file.stored) {
    const s = await fileSize(store, file.name);
    if (s >= 0 && (file.size == null || s === file.size)) {
      const bytes = await readBytes(store, file.name);
      progress.add(bytes.length, false);
      return bytes;
    }
  }
  if (file.complete) throw new CacheDamaged(`${file.name} is missing from the cache`);
  const bytes = await withRetries(file.name, async () => {
    let res;
    try {
      res = await fetch(file.url, { cache: 'no-store' });
    } catch (e) {
      throw new HttpError(`could not fetch ${file.name}: ${errorMessage(e)}`, true);
    }
    if (!res.ok) throw new HttpError(`${file.url} answered HTTP ${res.status}`, res.status >= 500);
    checkNotHtml(res, file.url);
    const buf = new Uint8Array(await res.arrayBuffer().catch((e) => {
      throw new HttpError(`download of ${file.name} was interrupted (${errorMessage(e)})`, true);
    }));
    if (file.size != null && buf.length !== file.size) {
      throw new HttpError(`${file.name}: got ${buf.length} bytes, expected ${file.size}`, true);
    }
    return buf;
  }, onRetry);
  if (file.sha256) {
    const got = sha256Hex(bytes);
    if (got !== file.sha256) throw new Error(`${file.name} does not match its published SHA-256; not used.`);
  }
  if (file.name.endsWith('.json')) {
    try {
      JSON.parse(new TextDecoder().decode(bytes));
    } catch {
      throw new Error(`${file.url} is not valid JSON (an error page?)`);
    }
  }
  if (store) await writeFile(store, file.name, bytes);
  if (file.size == null) {
    file.size = bytes.length;
    progress.total += bytes.length;
  }
  progress.add(bytes.length, true);
  return bytes;
}

export async function clearFileChunks(store, f) {
  await removeEntry(store, f.name);
  if (f.size != null && f.chunkSize) {
    const n = Math.ceil(f.size / f.chunkSize);
    for (let i = 0; i < n; i++) await removeEntry(store, chunkName(f, i));
  }
}
