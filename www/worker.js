// The model worker: owns the WebAssembly captioner. It fetches the model files (resuming
// interrupted downloads chunk by chunk from OPFS), loads them once, captions the images the page
// queues one at a time, posts every text fragment as soon as it exists, and stops a caption
// when the page cancels it. Nothing here sends an image anywhere: images arrive as bytes in
// messages from the page and never leave this worker.
//
// Messages from the page:
//   {type:'load', model, chunkBytes, persist}      model: the ?model= value (or null)
//   {type:'caption', id, bytes|frames|rgba, mime, options}
//   {type:'cancel', id}
//   {type:'cache-info'} / {type:'clear-cache'}
// Messages to the page: see post(...) calls; each has a `type`.
//
// The page starts this worker as worker.js?threads=N. With N > 1 it loads the threaded build
// (pkg-threads/: shared memory, a pool of N web workers that the model splits its products over);
// if that cannot start it falls back to the single-threaded build (pkg/) and says why.

import { parseModelParam, SMALL_FILES, HUB, formatBytes } from './models.js';
import { storeType, downloadConverted } from './store_q8.js';

const STORE_DIR = 'gitcap-models';
const MANIFEST = 'manifest.json';
const DEFAULT_CHUNK = 16 * 1024 * 1024;
const RETRY_DELAYS_MS = [250, 1000, 3000, 6000];

let gitcap = null; // the wasm-bindgen module
let wasmExports = null; // its exports (memory)
let model = null;
let modelInfo = null;
let modelReady = null; // Promise<model> of the current load
let loadGen = 0; // bumped on each load, so a stale load never installs its model
let busyStore = false; // a download is writing to the store
let peakWasmBytes = 0;

const queue = [];
const cancelled = new Set();
let currentJob = null;
let pumping = false;

const post = (msg, transfer) => self.postMessage(msg, transfer || []);

function wasmBytes() {
  const n = wasmExports?.memory?.buffer?.byteLength ?? 0;
  if (n > peakWasmBytes) peakWasmBytes = n;
  return n;
}

/** A macrotask boundary: messages from the page (a cancel) are handled before this resolves. */
function yieldToEventLoop() {
  return new Promise((resolve) => {
    const ch = new MessageChannel();
    ch.port1.onmessage = () => {
      ch.port1.close();
      resolve();
    };
    ch.port2.postMessage(null);
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function errorMessage(e) {
  if (e == null) return 'unknown error';
  if (typeof e === 'string') return e;
  return e.message || String(e);
}

// ---------------------------------------------------------------------------------------------
// Start-up

const workerParams = new URL(self.location.href).searchParams;
const requestedThreads = Math.max(1, Number.parseInt(workerParams.get('threads'), 10) || 1);
// Products smaller than this many multiply-adds stay on one thread (the page's ?split_min=N).
const minSplitMacs = workerParams.get('split_min');
// Products of fewer rows than this stay on one thread (the page's ?split_rows=N).
const minSplitRows = workerParams.get('split_rows');
// Products of this many rows or more use the model's own SIMD kernel (the page's ?kernel_min=N).
const kernelMinRows = workerParams.get('kernel_min');

// Products of q8_0 weights with this many rows or more use the integer kernel (?int8_min=N).
const int8MinRows = workerParams.get('int8_min');

// A function of one relaxed SIMD instruction (i8x16.relaxed_swizzle): engines without relaxed SIMD
// (Chrome before 114, Firefox before 145, Safari) reject it. ?relaxed=0 turns the build off.
const RELAXED_SIMD_PROBE = new Uint8Array([
  0, 97, 115, 109, 1, 0, 0, 0, 1, 5, 1, 96, 0, 1, 123, 3, 2, 1, 0, 10, 15, 1, 13, 0, 65, 1, 253, 15,
  65, 2, 253, 15, 253, 128, 2, 11,
]);
const relaxedSimd = workerParams.get('relaxed') !== '0' && WebAssembly.validate(RELAXED_SIMD_PROBE);

/** The builds to try, best first: threaded ones (shared memory, a pool of `threads` web workers)
 *  when more than one thread is asked for, then single-threaded ones; relaxed SIMD before plain
 *  SIMD128 where the engine takes it (its integer kernel is faster). */
function buildCandidates(threads) {
  const builds = [];
  if (threads > 1) {
    if (relaxedSimd) builds.push({ dir: 'pkg-threads-relaxed', threads });
    builds.push({ dir: 'pkg-threads', threads });
  }
  if (relaxedSimd) builds.push({ dir: 'pkg-relaxed', threads: 1 });
  builds.push({ dir: 'pkg', threads: 1 });
  return builds;
}

let wasmInit = null;
function initWasm() {
  if (!wasmInit) {
    wasmInit = (async () => {
      let threadNote = null;
      let lastFailure = null;
      for (const { dir, threads } of buildCandidates(requestedThreads)) {
        if (gitcap) break;
        try {
          const module = await import(`./${dir}/gitcap.js`);
          const exports = await module.default();
          if (threads > 1) await module.startThreads(threads);
          gitcap = module;
          wasmExports = exports;
          if (threads > 1) threadNote = null;
        } catch (e) {
          lastFailure = `the WebAssembly module (${dir}/gitcap.js) could not be loaded: ${errorMessage(e)}`;
          console.warn(`gitcap: ${lastFailure}; trying the next build`);
          if (threads > 1) threadNote = `the threaded build could not start: ${errorMessage(e)}`;
        }
      }
      if (!gitcap) {
        throw new Error(
          `${lastFailure[0].toUpperCase()}${lastFailure.slice(1)}. ` +
            'If you are running from a checkout, build it first with "bash build.sh".'
        );
      }
      if (minSplitMacs != null && Number.isFinite(Number(minSplitMacs))) gitcap.setMinSplitMacs(Number(minSplitMacs));
      if (minSplitRows != null && Number.isFinite(Number(minSplitRows))) gitcap.setMinSplitRows(Number(minSplitRows));
      if (kernelMinRows != null && Number.isFinite(Number(kernelMinRows))) gitcap.setKernelMinRows(Number(kernelMinRows));
      if (int8MinRows != null && Number.isFinite(Number(int8MinRows))) gitcap.setInt8MinRows(Number(int8MinRows));
      const build = gitcap.buildInfo();
      post({ type: 'wasm-ready', build: plain(build), threadNote, wasmBytes: wasmBytes() });
      return gitcap;
    })();
  }
  return wasmInit;
}

function plain(v) {
  if (v instanceof Map) return Object.fromEntries([...v].map(([k, x]) => [k, plain(x)]));
  if (Array.isArray(v)) return v.map(plain);
  return v;
}

// ---------------------------------------------------------------------------------------------
// Storage (OPFS): one folder per model (keyed by model id and revision, or URL), holding
// manifest.json and the files as chunk files `<name>.<index>`. A chunk file is only used when
// its size is exactly right; createWritable() commits on close, so a chunk either exists whole
// or not at all.

async function storeRoot(create = true) {
  if (!navigator.storage?.getDirectory) return null;
  try {
    const root = await navigator.storage.getDirectory();
    return await root.getDirectoryHandle(STORE_DIR, { create });
  } catch {
    return null;
  }
}

async function keyDirName(key) {
  const h = new gitcap.Sha256();
  h.update(new TextEncoder().encode(key));
  const hex = h.hex();
  h.free?.();
  const slug = key.replace(/^[a-z]+:(https?:\/\/)?/, '').replace(/[^A-Za-z0-9._-]+/g, '_').slice(0, 60);
  return `${slug}-${hex.slice(0, 16)}`;
}

async function readJson(dir, name) {
  try {
    const f = await (await dir.getFileHandle(name)).getFile();
    return JSON.parse(await f.text());
  } catch {
    return null;
  }
}

async function writeFile(dir, name, bytes) {
  try {
    await writeFileUnchecked(dir, name, bytes);
  } catch (e) {
    if (e?.name === 'QuotaExceededError') throw quotaError(null, null);
    throw new Error(`Could not save ${name} in the browser's storage: ${errorMessage(e)}`);
  }
}

async function writeFileUnchecked(dir, name, bytes) {
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

async function fileSize(dir, name) {
  try {
    return (await (await dir.getFileHandle(name)).getFile()).size;
  } catch {
    return -1;
  }
}

async function readBytes(dir, name) {
  const f = await (await dir.getFileHandle(name)).getFile();
  return new Uint8Array(await f.arrayBuffer());
}

async function removeEntry(dir, name) {
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

async function cacheInfo() {
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

async function clearCache() {
  if (busyStore) throw new Error('A download is in progress; wait for it to finish before clearing the cache.');
  const root = await storeRoot(false);
  if (!root) return;
  const names = [];
  for await (const [name] of root.entries()) names.push(name);
  for (const n of names) await removeEntry(root, n);
}

// ---------------------------------------------------------------------------------------------
// Planning: which files, their sizes and SHA-256s.

function sha256FromEtag(v) {
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

async function planFromNetwork(src) {
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

// ---------------------------------------------------------------------------------------------
// Downloading

class Progress {
  constructor(total) {
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
    post({
      type: 'progress',
      phase: this.phase,
      file: this.file,
      done: this.done,
      total: this.total,
      network: this.net,
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

async function withRetries(what, fn) {
  for (let attempt = 0; ; attempt++) {
    try {
      return await fn();
    } catch (e) {
      if (!(e instanceof HttpError) || !e.retry || attempt >= RETRY_DELAYS_MS.length) throw e;
      post({ type: 'retry', what, attempt: attempt + 1, message: errorMessage(e) });
      await sleep(RETRY_DELAYS_MS[attempt]);
    }
  }
}

const chunkName = (file, i) => `${file.name}.${String(i).padStart(5, '0')}`;

/**
 * Delivers a file's bytes to `sink` chunk by chunk, in order: chunks already in the store are
 * read from it; the others are fetched with HTTP Range requests and stored before the next
 * one is requested. The SHA-256 (when known) is computed as the chunks go by, so nothing is
 * buffered whole; a mismatch discards the stored chunks and fails.
 */
async function streamFile(file, store, progress, sink) {
  const chunk = file.chunkSize;
  const size = file.size;
  const n = Math.max(1, Math.ceil(size / chunk));
  const hasher = file.sha256 ? new gitcap.Sha256() : null;
  progress.file = file.name;
  try {
    for (let i = 0; i < n; i++) {
      const start = i * chunk;
      const end = Math.min(size, start + chunk) - 1;
      const len = end - start + 1;
      let bytes = null;
      if (store && (await fileSize(store, chunkName(file, i))) === len) {
        bytes = await readBytes(store, chunkName(file, i));
        progress.add(len, false);
      } else {
        if (file.complete) throw new CacheDamaged(`${file.name} chunk ${i} is missing from the cache`);
        bytes = await withRetries(file.name, () => fetchRange(file, start, end));
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
        throw new Error(
          `${file.name} is damaged: its SHA-256 is ${got.slice(0, 12)}…, the server published ${file.sha256.slice(0, 12)}…. ` +
            'The download was discarded; try again.'
        );
      }
    }
  } finally {
    hasher?.free?.();
  }
}

class CacheDamaged extends Error {}

function quotaError(needed, available) {
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

/** A small file, whole. Without a known size it is fetched without Range and checked as JSON. */
async function fetchSmall(file, store, progress) {
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
  });
  if (file.sha256) {
    const h = new gitcap.Sha256();
    h.update(bytes);
    const got = h.hex();
    h.free?.();
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

// ---------------------------------------------------------------------------------------------
// Loading

async function loadModel({ model: param, chunkBytes, persist, pageUrl }, retried = false) {
  const gen = ++loadGen;
  await initWasm();
  const t0 = performance.now();
  const src = parseModelParam(param, pageUrl);
  post({ type: 'source', label: src.label, key: src.key, base: src.base, hub: src.hub ?? null });

  const root = persist ? await storeRoot(true) : null;
  const dirName = await keyDirName(src.key);
  let store = root ? await root.getDirectoryHandle(dirName, { create: true }) : null;
  let manifest = store ? await readJson(store, MANIFEST) : null;
  let fromCache = !!manifest?.complete;

  let files;
  if (fromCache) {
    files = manifest.files.map((f) => ({ ...f, complete: true }));
  } else {
    files = await planFromNetwork(src);
    const chunkSize = chunkBytes > 0 ? chunkBytes : DEFAULT_CHUNK;
    // A partial download of the same files resumes with its own chunk size.
    const same = (a, b) => a && b && a.size === b.size && (a.sha256 ?? null) === (b.sha256 ?? null) && a.url === b.url;
    const prior = new Map((manifest?.files ?? []).map((f) => [f.name, f]));
    if (store && manifest) {
      for (const [name, p] of prior) {
        const now = files.find((f) => f.name === name);
        if (!same(p, now)) await clearFileChunks(store, p);
      }
    }
    files = files.map((f) => {
      const p = prior.get(f.name);
      return { ...f, chunkSize: same(p, f) && p.chunkSize ? p.chunkSize : chunkSize, stored: same(p, f) ? !!p.stored : false };
    });
    if (files.find((f) => f.weights)?.size == null) {
      throw new Error(`The server did not say how large ${src.weights.name} is (no Content-Length); cannot download it safely.`);
    }
  }
  const total = files.reduce((s, f) => s + (f.size ?? 0), 0);
  let needed = total;

  if (!fromCache && store) {
    // Quota: the part not yet stored must fit.
    let have = 0;
    for (const f of files) {
      if (f.weights) {
        const n = Math.ceil(f.size / f.chunkSize);
        for (let i = 0; i < n; i++) {
          const s = await fileSize(store, chunkName(f, i));
          if (s > 0) have += s;
        }
      }
    }
    needed = total - have;
    let estimate = null;
    try {
      estimate = await navigator.storage.estimate();
    } catch {}
    if (estimate && needed > estimate.quota - estimate.usage) {
      await root.removeEntry(dirName, { recursive: true }).catch(() => {});
      throw quotaError(needed, estimate.quota - estimate.usage);
    }
    manifest = { key: src.key, label: src.label, base: src.base, total, complete: false, files, created: Date.now() };
    await writeFile(store, MANIFEST, new TextEncoder().encode(JSON.stringify(manifest)));
    if (have < total) post({ type: 'download-start', total, have });
  }
  post({ type: 'plan', label: src.label, total, fromCache, persist: !!store, files: files.map((f) => ({ name: f.name, size: f.size })) });

  const progress = new Progress(total);
  progress.phase = fromCache ? 'load' : 'download';
  busyStore = !fromCache && !!store;
  const loader = new gitcap.ModelLoader();
  let finished = false;
  const smallFiles = new Map();
  try {
    for (const f of files.filter((x) => !x.weights)) {
      const bytes = await fetchSmall(f, store, progress);
      smallFiles.set(f.name, bytes);
      if (!fromCache && store) {
        f.stored = true;
        await writeFile(store, MANIFEST, new TextEncoder().encode(JSON.stringify({ ...manifest, files })));
      }
      loader.addFile(f.name, bytes);
    }
    const w = files.find((x) => x.weights);
    // ?store=q8_0|q4k: a safetensors download is kept as a GGUF converted while it downloads
    // (www/store_q8.js); the manifest then lists the GGUF, which later visits load.
    const storeAs = store && !fromCache ? storeType(new URL(pageUrl).searchParams.get('store') ?? 'as-is', w.kind) : null;
    if (storeAs) {
      const gguf = { name: `model.${storeAs}.gguf`, kind: 'gguf', chunkSize: w.chunkSize, sha256: undefined, url: undefined };
      const summary = await downloadConverted(gitcap, {
        type: storeAs,
        name: src.hub?.id ?? src.label,
        files: smallFiles,
        loader,
        chunkBytes: w.chunkSize,
        download: (sink) => streamFile(w, null, progress, async (chunk) => (await sink(chunk), wasmBytes())),
        saveChunk: (i, bytes) => writeFile(store, chunkName(gguf, i), bytes),
      });
      Object.assign(w, gguf, { size: summary.fileBytes });
    } else {
      loader.beginWeights(w.kind, w.size);
      await streamFile(w, store, progress, (chunk) => {
        loader.pushWeights(chunk);
        wasmBytes();
      });
    }
    progress.emit(true);
    if (gen !== loadGen) throw new Error('superseded by another load');
    post({ type: 'progress', phase: 'finish', file: w.name, done: total, total, network: progress.net, rate: 0 });
    await yieldToEventLoop();
    finished = true; // finish() consumes the loader, whether or not it succeeds
    const m = loader.finish();
    if (store && !fromCache) {
      w.stored = true;
      manifest = { ...manifest, files: files.map((f) => ({ ...f, complete: undefined })), complete: true };
      await writeFile(store, MANIFEST, new TextEncoder().encode(JSON.stringify(manifest)));
    }
    if (model) model.free();
    model = m;
    modelInfo = plain(m.info());
    const loadMs = performance.now() - t0;
    post({
      type: 'loaded',
      label: src.label,
      info: modelInfo,
      frames: m.frames,
      loadMs,
      fromCache,
      persisted: !!store,
      networkBytes: progress.net,
      wasmBytes: wasmBytes(),
      peakWasmBytes,
    });
    return m;
  } catch (e) {
    if (e?.code === 'quota') {
      // Storage refused mid-download (the estimate was optimistic): free what was written.
      await root?.removeEntry(dirName, { recursive: true }).catch(() => {});
      throw quotaError(needed, null);
    }
    if (!(e instanceof CacheDamaged && store) || retried) throw e;
  } finally {
    busyStore = false;
    if (!finished) {
      try {
        loader.free();
      } catch {}
    }
  }
  // The stored copy turned out to be incomplete: forget it and download again.
  await root.removeEntry(dirName, { recursive: true }).catch(() => {});
  return loadModel({ model: param, chunkBytes, persist, pageUrl }, true);
}

async function clearFileChunks(store, f) {
  await removeEntry(store, f.name);
  if (f.size != null && f.chunkSize) {
    const n = Math.ceil(f.size / f.chunkSize);
    for (let i = 0; i < n; i++) await removeEntry(store, chunkName(f, i));
  }
}

// ---------------------------------------------------------------------------------------------
// Captioning

function captionOptions(o = {}) {
  const opts = {
    max_new_tokens: Math.max(1, Math.min(512, Math.floor(Number(o.max_new_tokens) || 20))),
    beams: Math.max(1, Math.min(16, Math.floor(Number(o.beams) || 1))),
    length_penalty: Number.isFinite(Number(o.length_penalty)) ? Number(o.length_penalty) : 1.0,
  };
  if (o.prompt && String(o.prompt).trim()) opts.prompt = String(o.prompt);
  return opts;
}

/** Decodes with the browser (formats the wasm decoder lacks: AVIF, HEIC on Safari, ...). */
async function browserDecode(bytes, mime, maxEdge) {
  const blob = new Blob([bytes], mime ? { type: mime } : {});
  let bmp = await createImageBitmap(blob, { imageOrientation: 'from-image' });
  const scale = Math.min(1, maxEdge / Math.min(bmp.width, bmp.height));
  if (scale < 1) {
    const w = Math.max(1, Math.round(bmp.width * scale));
    const h = Math.max(1, Math.round(bmp.height * scale));
    bmp.close();
    bmp = await createImageBitmap(blob, { imageOrientation: 'from-image', resizeWidth: w, resizeHeight: h, resizeQuality: 'high' });
  }
  const canvas = new OffscreenCanvas(bmp.width, bmp.height);
  const ctx = canvas.getContext('2d');
  ctx.drawImage(bmp, 0, 0);
  const data = ctx.getImageData(0, 0, bmp.width, bmp.height).data;
  const out = { width: bmp.width, height: bmp.height, rgba: new Uint8Array(data.buffer, data.byteOffset, data.byteLength) };
  bmp.close();
  return out;
}

function startJob(m, job, opts) {
  if (job.frames) return m.startCaptionFrames(job.frames.map((b) => new Uint8Array(b)), opts);
  if (job.rgba) return m.startCaptionRgba(job.width, job.height, new Uint8Array(job.rgba), opts);
  return m.startCaption(new Uint8Array(job.bytes), opts);
}

async function runCaption(job) {
  const { id } = job;
  post({ type: 'caption-start', id });
  await yieldToEventLoop();
  if (cancelled.has(id)) return post({ type: 'cancelled', id, tokens: 0 });
  let m;
  try {
    m = await modelReady;
  } catch (e) {
    return post({ type: 'caption-error', id, message: `The model is not loaded: ${errorMessage(e)}` });
  }
  if (!m) return post({ type: 'caption-error', id, message: 'No model is loaded.' });
  await yieldToEventLoop();
  if (cancelled.has(id)) return post({ type: 'cancelled', id, tokens: 0 });

  const opts = captionOptions(job.options);
  const t0 = performance.now();
  let cj;
  try {
    cj = startJob(m, job, opts);
  } catch (e) {
    const msg = errorMessage(e);
    if (!job.bytes || !/^image/i.test(msg)) return post({ type: 'caption-error', id, message: msg });
    // The wasm decoder could not read it; perhaps the browser can.
    let decoded;
    try {
      decoded = await browserDecode(job.bytes, job.mime, (modelInfo?.image_size || 384) * 2);
    } catch {
      return post({ type: 'caption-error', id, message: `This file is not an image gitcap can read (${msg.replace(/^image:\s*/i, '')}).` });
    }
    try {
      cj = m.startCaptionRgba(decoded.width, decoded.height, decoded.rgba, opts);
    } catch (e2) {
      return post({ type: 'caption-error', id, message: errorMessage(e2) });
    }
  }
  job.bytes = job.frames = job.rgba = null;
  const encodeMs = performance.now() - t0;
  post({ type: 'encoded', id, encodeMs, wasmBytes: wasmBytes() });

  const stepMs = [];
  let firstTextMs = null;
  let text = '';
  try {
    for (;;) {
      await yieldToEventLoop();
      if (cancelled.has(id)) {
        cancelled.delete(id);
        return post({ type: 'cancelled', id, tokens: stepMs.length, text });
      }
      const s = performance.now();
      const ev = plain(cj.step());
      stepMs.push(performance.now() - s);
      wasmBytes();
      if (ev.text) {
        text += ev.text;
        if (firstTextMs == null) firstTextMs = performance.now() - t0;
        post({ type: 'token', id, text: ev.text });
      }
      if (ev.done) {
        const totalMs = performance.now() - t0;
        const decodeMs = stepMs.reduce((a, b) => a + b, 0);
        return post({
          type: 'done',
          id,
          caption: ev.caption?.text ?? text,
          tokenIds: Array.from(ev.caption?.token_ids ?? []),
          timings: {
            encodeMs,
            firstTextMs,
            decodeMs,
            steps: stepMs.length,
            perTokenMs: stepMs.length ? decodeMs / stepMs.length : 0,
            stepMs,
            totalMs,
            wasmBytes: wasmBytes(),
            peakWasmBytes,
            splits: plain(gitcap.buildInfo()).splits,
            int8Products: plain(gitcap.buildInfo()).int8Products,
          },
        });
      }
    }
  } catch (e) {
    return post({ type: 'caption-error', id, message: errorMessage(e) });
  } finally {
    try {
      cj.free();
    } catch {}
  }
}

async function pump() {
  if (pumping) return;
  pumping = true;
  try {
    while (queue.length) {
      const job = queue.shift();
      currentJob = job.id;
      try {
        await runCaption(job);
      } catch (e) {
        post({ type: 'caption-error', id: job.id, message: errorMessage(e) });
      }
      cancelled.delete(job.id);
      currentJob = null;
    }
  } finally {
    pumping = false;
  }
}

// ---------------------------------------------------------------------------------------------

self.onmessage = async (e) => {
  const msg = e.data;
  switch (msg.type) {
    case 'load': {
      modelReady = loadModel(msg);
      modelReady.catch((err) =>
        post({ type: 'load-error', message: errorMessage(err), code: err?.code ?? null, needed: err?.needed, available: err?.available })
      );
      break;
    }
    case 'caption':
      queue.push(msg);
      pump();
      break;
    case 'cancel':
      if (msg.id == null) {
        for (const j of queue) cancelled.add(j.id);
        if (currentJob != null) cancelled.add(currentJob);
      } else {
        cancelled.add(msg.id);
      }
      break;
    case 'cache-info':
      post({ type: 'cache-info', ...(await cacheInfo()) });
      break;
    case 'clear-cache':
      try {
        await clearCache();
        post({ type: 'cache-cleared' });
      } catch (err) {
        post({ type: 'cache-error', message: errorMessage(err) });
      }
      post({ type: 'cache-info', ...(await cacheInfo()) });
      break;
    case 'stats':
      post({ type: 'stats', wasmBytes: wasmBytes(), peakWasmBytes });
      break;
  }
};

initWasm().catch((e) => post({ type: 'wasm-error', message: errorMessage(e) }));
