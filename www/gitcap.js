// gitcap: image captions and alt text computed in the browser, on the visitor's device.
//
//   import { Captioner, fillMissingAlt } from './gitcap/gitcap.js';
//   const captioner = await Captioner.load({ model: 'hf:microsoft/git-large-r-coco' });
//   const { text } = await captioner.caption(fileOrImgOrUrl);
//   await fillMissingAlt(document.querySelector('article'), { captioner });
//
// This module is the thin main-thread side: it turns images into bytes or pixels and talks to
// the model worker (worker.js), where the WebAssembly captioner runs. Nothing is uploaded.
// Types: gitcap.d.ts.

import { MSG, STORE_CHOICES, dataToError, abortError, errorMessage } from './protocol.js';
import { cacheInfo, clearCache } from './storage.js';

export { MODELS, DEFAULT_MODEL, parseModelParam, formatBytes } from './models.js';

// More threads than this stop paying: the products become memory-bound and each thread is a
// worker holding its own instance of the module.
const MAX_THREADS = 16;
// A module with one shared memory: validates only where WebAssembly threads are supported.
const SHARED_MEMORY_PROBE = new Uint8Array([0, 97, 115, 109, 1, 0, 0, 0, 5, 4, 1, 3, 1, 1]);
// A tiny module using i8x16.popcnt: validates only where WebAssembly SIMD is supported.
const SIMD_PROBE = new Uint8Array([
  0, 97, 115, 109, 1, 0, 0, 0, 1, 5, 1, 96, 0, 1, 123, 3, 2, 1, 0, 10, 10, 1, 8, 0, 65, 0, 253, 15, 253, 98, 11,
]);

/** Whether this browser can run gitcap, and if not, why (for a message to the visitor). */
export function support() {
  if (typeof WebAssembly !== 'object' || !WebAssembly.validate) {
    return { ok: false, reason: 'no-wasm', message: 'This browser cannot run WebAssembly, which the captioner needs. Try a current Chrome, Edge, Firefox or Safari.' };
  }
  if (!WebAssembly.validate(SIMD_PROBE)) {
    return {
      ok: false,
      reason: 'no-simd',
      message:
        'This browser does not support WebAssembly SIMD, which the captioner needs. ' +
        'Chrome 91+, Edge 91+, Firefox 89+ and Safari 16.4+ do; please update your browser.',
    };
  }
  return { ok: true, reason: null, message: null };
}

/**
 * How many threads the captioner can use here, and if only one, why. The threaded build needs
 * shared memory, which browsers grant only to cross-origin isolated pages (COOP/COEP headers).
 */
export function threadSupport() {
  if (!globalThis.crossOriginIsolated) {
    return { threads: 1, why: 'the page is not cross-origin isolated (its server sends no COOP/COEP headers)' };
  }
  if (typeof SharedArrayBuffer !== 'function' || !WebAssembly.validate(SHARED_MEMORY_PROBE)) {
    return { threads: 1, why: 'this browser does not support WebAssembly threads' };
  }
  const threads = Math.max(1, Math.min(globalThis.navigator?.hardwareConcurrency || 1, MAX_THREADS));
  return { threads, why: threads === 1 ? 'the browser reports one core' : null };
}

/** Threads the captioner can use here: all cores when cross-origin isolated, else 1. */
export const availableThreads = () => threadSupport().threads;

/** The models stored in this origin's storage (complete or partial), and its storage estimate. */
export const storedModels = () => cacheInfo();
/** Deletes every stored model. While a captioner downloads, use its clearStoredModels(). */
export const clearStoredModels = () => clearCache();

let nextId = 1;
const LOAD = Symbol('load');

export class Captioner {
  /** Use `await Captioner.load(options)`. */
  constructor(options, token) {
    if (token !== LOAD) throw new TypeError('use Captioner.load(options) to create a captioner');
    this._options = options;
    this._worker = null;
    this._pending = new Map(); // request id -> {resolve, reject, onToken, onEvent, onProgress}
    this._queue = []; // captions not yet sent to the worker, in call order
    this._ready = null; // Promise of the (re)load
    this._info = null;
    this._disposed = false;
    this._pumping = false;
    this.restarts = 0;
  }

  /**
   * Downloads (or reads from the browser's storage) and loads a model.
   * options: {model, store, threads, onProgress, onEvent, signal, persist, chunkBytes, workerUrl, tuning}
   */
  static async load(options = {}) {
    const s = support();
    if (!s.ok) throw new Error(s.message);
    const { signal } = options;
    if (signal?.aborted) throw abortReason(signal, 'Loading the model was aborted.');
    if (options.store != null && !STORE_CHOICES.includes(options.store)) {
      throw new Error(`store must be one of ${STORE_CHOICES.map((x) => `'${x}'`).join(', ')}; got ${JSON.stringify(options.store)}`);
    }
    const c = new Captioner({ ...options }, LOAD);
    const onAbort = () => c._fail(abortReason(signal, 'Loading the model was aborted.'));
    signal?.addEventListener('abort', onAbort, { once: true });
    try {
      c._ready = c._start();
      await c._ready;
      return c;
    } catch (e) {
      c.dispose();
      throw e;
    } finally {
      signal?.removeEventListener('abort', onAbort);
    }
  }

  /** {model, weights, threads, backend, store, ...}: what was loaded and how it runs. */
  get info() {
    const i = this._info;
    if (!i) return null;
    const b = i.build || {};
    return {
      model: i.label,
      weights: i.weights,
      store: i.store,
      threads: i.threads,
      backend:
        `WebAssembly${b.simd ? ' SIMD128' : ''}${b.relaxed ? ' + relaxed SIMD' : ''} (candle, CPU), ` +
        `${i.threads} thread${i.threads === 1 ? '' : 's'}`,
      build: b,
      threadNote: i.threadNote ?? null,
      source: i.source,
      fromCache: i.fromCache,
      persisted: i.persisted,
      loadMs: i.loadMs,
      storedBytes: i.storedBytes,
      networkBytes: i.networkBytes,
      wasmBytes: i.wasmBytes,
      imageSize: i.image_size,
      frames: i.frames,
      quantized: i.quantized,
    };
  }

  /**
   * Captions one image. Calls are queued and run one at a time, in call order.
   * options: {maxNewTokens, beams, lengthPenalty, prompt, onToken, onEvent, signal}
   */
  caption(image, options = {}) {
    if (this._disposed) return Promise.reject(new Error('gitcap: this captioner was disposed'));
    const { onToken, onEvent, signal, ...rest } = options;
    if (signal?.aborted) return Promise.reject(abortReason(signal));
    return new Promise((resolve, reject) => {
      const job = { id: nextId++, options: rest, onToken, onEvent, signal, resolve, reject, sent: false };
      // Reading the image starts now (an <img> or a URL is fetched meanwhile); the worker gets it in turn.
      job.input = toInput(image, signal);
      job.input.catch(() => {});
      if (signal) {
        job.onAbort = () => this._abort(job);
        signal.addEventListener('abort', job.onAbort, { once: true });
      }
      this._queue.push(job);
      this._pump();
    });
  }

  /** Memory the module holds now and at most so far, in bytes. */
  stats() {
    return this._request({ type: MSG.STATS });
  }

  /** The stored models, as the worker sees them. */
  storedModels() {
    return this._request({ type: MSG.CACHE_INFO });
  }

  /** Deletes the stored models (refused while a download is writing to storage). */
  clearStoredModels() {
    return this._request({ type: MSG.CLEAR_CACHE });
  }

  /** Ends the worker; pending captions reject. */
  dispose() {
    if (this._disposed) return;
    this._disposed = true;
    this._fail(new Error('gitcap: this captioner was disposed'));
  }

  /** Test-only: the worker's next caption step executes a WebAssembly trap. */
  __testTrap() {
    this._worker?.postMessage({ type: MSG.TEST_TRAP });
  }

  // -------------------------------------------------------------------------------------------

  _start() {
    const o = this._options;
    // Written out as `new Worker(new URL(...))` so bundlers (Vite, webpack) bundle the worker.
    const worker = o.workerUrl
      ? new Worker(o.workerUrl, { type: 'module', name: 'gitcap' })
      : new Worker(new URL('./worker.js', import.meta.url), { type: 'module', name: 'gitcap' });
    this._worker = worker;
    worker.onmessage = (e) => {
      if (this._worker === worker) this._onMessage(e.data);
    };
    worker.onerror = (e) => {
      e.preventDefault?.();
      if (this._worker === worker) this._crashed(e.message || 'the worker failed');
    };
    let threads = o.threads ?? availableThreads();
    threads = Math.max(1, Math.floor(Number(threads)) || 1);
    if (threads > 1 && availableThreads() === 1) threads = 1; // no shared memory here
    return this._request(
      {
        type: MSG.LOAD,
        model: o.model ?? null,
        store: o.store ?? null,
        threads,
        persist: o.persist ?? true,
        chunkBytes: o.chunkBytes ?? 0,
        pageUrl: globalThis.location?.href ?? null,
        tuning: o.tuning ?? {},
      },
      { onEvent: o.onEvent, onProgress: o.onProgress }
    ).then((info) => {
      this._info = info;
      return info;
    });
  }

  _request(msg, handlers = {}) {
    if (!this._worker) return Promise.reject(new Error('gitcap: this captioner was disposed'));
    const id = nextId++;
    return new Promise((resolve, reject) => {
      this._pending.set(id, { resolve, reject, ...handlers });
      this._worker.postMessage({ ...msg, id });
    });
  }

  _onMessage(msg) {
    const p = this._pending.get(msg.id);
    switch (msg.type) {
      case MSG.PROGRESS: {
        const { phase, loadedBytes, totalBytes, file, networkBytes, rate } = msg;
        p?.onProgress?.({ phase, loadedBytes, totalBytes, file, networkBytes, rate });
        return;
      }
      case MSG.EVENT:
        p?.onEvent?.(msg.event);
        return;
      case MSG.WASM_READY:
        p?.onEvent?.({ type: 'wasm-ready', build: msg.build, threadNote: msg.threadNote });
        return;
      case MSG.TOKEN:
        p?.onToken?.(msg.text);
        return;
      case MSG.LOADED:
        return this._settle(msg.id, (x) => x.resolve(msg.info));
      case MSG.DONE: {
        const { text, tokenIds, decodedBy, timings } = msg;
        return this._settle(msg.id, (x) => x.resolve({ text, tokenIds, decodedBy, timings }));
      }
      case MSG.RESULT:
        return this._settle(msg.id, (x) => x.resolve(msg.value));
      case MSG.ERROR: {
        const err = dataToError(msg.error);
        if (err.name === 'AbortError' && msg.text != null) err.partialText = msg.text;
        return this._settle(msg.id, (x) => x.reject(err));
      }
      case MSG.CRASHED:
        return this._crashed(msg.message);
    }
  }

  _settle(id, fn) {
    const p = this._pending.get(id);
    if (!p) return;
    this._pending.delete(id);
    fn(p);
  }

  /** Rejects everything pending and queued with `err` and ends the worker. */
  _fail(err) {
    for (const [, p] of this._pending) p.reject(err);
    this._pending.clear();
    for (const job of this._queue.splice(0)) this._finishJob(job, () => job.reject(err));
    this._worker?.terminate();
    this._worker = null;
  }

  /**
   * The module trapped or the worker died: what it was working on rejects, a new worker loads
   * the model again (from the browser's storage) and the queue goes on.
   */
  _crashed(message) {
    if (this._disposed) return;
    const err = this._info
      ? new Error(`gitcap: the captioner crashed (${message}); it restarts from the stored model`)
      : new Error(`gitcap: the captioner stopped while loading (${message})`);
    for (const [, p] of this._pending) p.reject(err);
    this._pending.clear();
    this._worker?.terminate();
    this._worker = null;
    if (!this._info) return; // it never loaded: load() rejects with this error
    this.restarts++;
    this._ready = this._start().catch((e) => {
      this._fail(new Error(`gitcap: the captioner could not restart: ${errorMessage(e)}`));
      this._disposed = true;
      throw e;
    });
    this._ready.catch(() => {});
    this._pump();
  }

  _abort(job) {
    const i = this._queue.indexOf(job);
    if (i >= 0) {
      this._queue.splice(i, 1);
      this._finishJob(job, () => job.reject(abortReason(job.signal)));
    } else if (job.sent) {
      // No fragment reaches the caller after the abort; the call rejects once the worker stops.
      const p = this._pending.get(job.id);
      if (p) p.onToken = null;
      this._worker?.postMessage({ type: MSG.CANCEL, id: job.id });
    }
  }

  _finishJob(job, settle) {
    if (job.onAbort) job.signal?.removeEventListener('abort', job.onAbort);
    settle();
  }

  async _pump() {
    if (this._pumping) return;
    this._pumping = true;
    try {
      while (this._queue.length && !this._disposed) {
        const job = this._queue[0];
        let input;
        try {
          await this._ready;
          input = await job.input;
        } catch (e) {
          if (this._queue[0] === job) this._queue.shift();
          this._finishJob(job, () => job.reject(e));
          continue;
        }
        if (this._queue[0] !== job) continue; // aborted meanwhile
        this._queue.shift();
        if (!this._worker) {
          this._finishJob(job, () => job.reject(new Error('gitcap: this captioner was disposed')));
          continue;
        }
        job.sent = true;
        const { note, ...wire } = input;
        const transfer = [wire.bytes, wire.rgba, ...(wire.frames || [])].filter(Boolean);
        const done = new Promise((resolve, reject) => {
          this._pending.set(job.id, { resolve, reject, onToken: job.onToken, onEvent: job.onEvent });
        });
        try {
          this._worker.postMessage({ type: MSG.CAPTION, id: job.id, input: wire, options: job.options }, transfer);
        } catch (e) {
          // An engine that cannot send resizable buffers (copyBuffer) gets fixed-length copies.
          if (e?.name !== 'DataCloneError') throw e;
          const fixed = (b) => (b?.resizable ? b.slice(0) : b);
          wire.bytes = fixed(wire.bytes);
          if (wire.frames) wire.frames = wire.frames.map(fixed);
          const again = [wire.bytes, wire.rgba, ...(wire.frames || [])].filter(Boolean);
          this._worker.postMessage({ type: MSG.CAPTION, id: job.id, input: wire, options: job.options }, again);
        }
        try {
          const r = await done;
          // Aborted while the last token was on its way: the caller asked for no result.
          if (job.signal?.aborted) throw abortReason(job.signal);
          if (note) r.note = note;
          this._finishJob(job, () => job.resolve(r));
        } catch (e) {
          const err = e?.name === 'AbortError' && job.signal?.aborted ? withPartial(abortReason(job.signal), e) : e;
          this._finishJob(job, () => job.reject(err));
        }
      }
    } finally {
      this._pumping = false;
    }
  }
}

function abortReason(signal, message = 'The caption was aborted.') {
  const r = signal?.reason;
  if (r instanceof DOMException && r.name === 'AbortError') return r;
  return abortError(message);
}

function withPartial(err, from) {
  if (from?.partialText != null) {
    try {
      err.partialText = from.partialText;
    } catch {}
  }
  return err;
}

// ---------------------------------------------------------------------------------------------
// Images: encoded bytes whenever they can be had (gitcap decodes them itself, so a caption equals
// the native CLI's for the same file, EXIF orientation included), else the browser's pixels.

const isA = (v, name) => typeof globalThis[name] === 'function' && v instanceof globalThis[name];

async function fetchBytes(url, credentials = 'same-origin', signal) {
  const res = await fetch(url, { mode: 'cors', credentials, signal });
  if (!res.ok) throw new Error(`${url} answered HTTP ${res.status}`);
  return { kind: 'bytes', bytes: copyBuffer(new Uint8Array(await res.arrayBuffer())), mime: res.headers.get('content-type') || '' };
}

function pixelsOf(source, width, height) {
  const canvas = new OffscreenCanvas(width, height);
  const ctx = canvas.getContext('2d');
  ctx.drawImage(source, 0, 0);
  const data = ctx.getImageData(0, 0, width, height).data;
  return { kind: 'rgba', width, height, rgba: data.buffer };
}

/**
 * A copy of the bytes in a resizable ArrayBuffer (where the engine has them), for the worker: once
 * gitcap has copied an image into its own memory, the worker shrinks the buffer to nothing, which
 * hands its pages back at once. A dropped buffer waits for the worker's next full garbage
 * collection instead, and the worker runs so little JavaScript that this can be hundreds of
 * captions away: 43 MB of dropped images at caption 200 in the page's long run (git-large).
 */
const copyBuffer = (view) => {
  const n = view.byteLength;
  let buffer;
  try {
    buffer = new ArrayBuffer(n, { maxByteLength: Math.max(n, 1) });
  } catch {
    buffer = new ArrayBuffer(n);
  }
  new Uint8Array(buffer).set(new Uint8Array(view.buffer, view.byteOffset, n));
  return buffer;
};

async function toInput(image, signal) {
  if (image == null) throw new TypeError('gitcap: caption() needs an image');
  if (typeof image === 'string' || image instanceof URL) {
    const url = new URL(String(image), globalThis.location?.href);
    try {
      return await fetchBytes(url.href, 'same-origin', signal);
    } catch (e) {
      if (e?.name === 'AbortError') throw e;
      throw new Error(`gitcap: could not read ${url.href} (${errorMessage(e)}); images from another origin need CORS`);
    }
  }
  if (isA(image, 'Blob')) return { kind: 'bytes', bytes: copyBuffer(new Uint8Array(await image.arrayBuffer())), mime: image.type };
  if (image instanceof ArrayBuffer) return { kind: 'bytes', bytes: copyBuffer(new Uint8Array(image)), mime: '' };
  if (ArrayBuffer.isView(image)) return { kind: 'bytes', bytes: copyBuffer(image), mime: '' };
  if (isA(image, 'ImageData')) {
    return { kind: 'rgba', width: image.width, height: image.height, rgba: image.data.slice().buffer, decodedBy: null };
  }
  if (isA(image, 'HTMLImageElement')) return imgInput(image, signal);
  if (isA(image, 'ImageBitmap')) return { ...pixelsOf(image, image.width, image.height), decodedBy: null };
  if (isA(image, 'HTMLCanvasElement') || isA(image, 'OffscreenCanvas')) {
    return { ...pixelsOf(image, image.width, image.height), decodedBy: null };
  }
  // Video checkpoints: several frames, each an encoded image.
  if (Array.isArray(image.frames)) {
    return { kind: 'frames', frames: image.frames.map((f) => copyBuffer(f instanceof ArrayBuffer ? new Uint8Array(f) : f)) };
  }
  throw new TypeError(
    'gitcap: caption() takes a Blob or File, an ArrayBuffer or Uint8Array of an image file, an <img>, ' +
      'an ImageBitmap, a canvas, an ImageData or a URL'
  );
}

/** An <img>: its file's bytes (same origin or CORS), else the pixels the browser decoded. */
async function imgInput(img, signal) {
  const src = img.currentSrc || img.src;
  if (!src) throw new Error('gitcap: this <img> has no src');
  const credentials = img.crossOrigin === 'use-credentials' ? 'include' : 'same-origin';
  let why;
  try {
    return await fetchBytes(src, credentials, signal);
  } catch (e) {
    if (e?.name === 'AbortError') throw e;
    why = errorMessage(e);
  }
  try {
    await img.decode();
  } catch {
    throw new Error(`gitcap: could not read ${src} (${why}) and the browser cannot show it either`);
  }
  try {
    const px = pixelsOf(img, img.naturalWidth, img.naturalHeight);
    return { ...px, decodedBy: 'browser', note: `the file could not be read (${why}); captioned the browser's pixels instead` };
  } catch (e) {
    throw new Error(
      `gitcap: could not read ${src} (${why}), and its pixels are off limits to this page (${errorMessage(e)}); ` +
        'serve the image from this origin or with CORS (Access-Control-Allow-Origin) and crossorigin="anonymous"'
    );
  }
}

// ---------------------------------------------------------------------------------------------

/**
 * Captions every <img> under `root` (or `root` itself) without an alt attribute, and sets its
 * `alt` and `data-alt-generated="gitcap"`. `alt=""` marks a decorative image and is left alone
 * unless `includeEmpty` is true; a non-empty alt is never changed. Resolves with one entry per
 * image handled: {img, text} or {img, error}.
 */
export async function fillMissingAlt(root, options = {}) {
  const { captioner, includeEmpty = false, onImage, ...captionOptions } = options;
  if (!(captioner instanceof Captioner)) throw new TypeError('fillMissingAlt: options.captioner must be a Captioner');
  if (!root || typeof root.querySelectorAll !== 'function') throw new TypeError('fillMissingAlt: root must be an element or a document');
  const wanted = (img) => !img.hasAttribute('alt') || (includeEmpty && img.getAttribute('alt').trim() === '');
  const imgs = [...(root.matches?.('img') ? [root] : []), ...root.querySelectorAll('img')].filter(wanted);
  return Promise.all(
    imgs.map((img) =>
      captioner.caption(img, captionOptions).then(
        ({ text }) => {
          // A person may have written alt text meanwhile; theirs stays.
          if (wanted(img)) {
            img.alt = text;
            img.dataset.altGenerated = 'gitcap';
          }
          const entry = { img, text };
          onImage?.(entry);
          return entry;
        },
        (error) => {
          const entry = { img, error };
          onImage?.(entry);
          return entry;
        }
      )
    )
  );
}
