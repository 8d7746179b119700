// The model worker: owns the WebAssembly captioner. It loads the model (model.js: from the
// browser's storage or the network, resuming interrupted downloads), captions the images the page
// queues one at a time, posts every text fragment as soon as it exists, and stops a caption when
// the page cancels it. Images arrive as bytes or pixels in messages and never leave this worker.
// The messages are listed in protocol.js; gitcap.js is the page's side.
//
// If the module traps (a bug, or memory exhausted), the worker reports `crashed` and answers
// nothing more: the page ends it and starts a new one, which loads the model again from storage.

import { MSG, errorMessage, errorToData } from './protocol.js';
import { initWasm, wasmBytes, peakBytes, buildInfo, isTrap, armTrap } from './wasm.js';
import { loadModel, caption } from './model.js';
import { cacheInfo, clearCache } from './storage.js';

const post = (msg, transfer) => self.postMessage(msg, transfer || []);

let model = null;
let modelInfo = null;
let modelReady = null; // Promise of the current load
let loading = false; // a load is writing to the store
let crashed = false;
const queue = [];
const cancelled = new Set();
let currentJob = null;
let pumping = false;

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

function crash(id, e) {
  crashed = true;
  queue.length = 0;
  post({ type: MSG.CRASHED, id, message: `the WebAssembly module trapped (${errorMessage(e)})` });
}

async function load(msg) {
  const { id } = msg;
  loading = true;
  try {
    const threads = Math.max(1, Math.floor(Number(msg.threads)) || 1);
    const { build, threadNote } = await initWasm(threads, msg.tuning || {});
    post({ type: MSG.WASM_READY, id, build, threadNote, wasmBytes: wasmBytes() });
    const emit = (type, fields) =>
      post(type === 'progress' ? { type: MSG.PROGRESS, id, ...fields } : { type: MSG.EVENT, id, event: fields });
    const { model: m, info } = await loadModel(msg, emit);
    model?.free();
    model = m;
    const b = buildInfo();
    modelInfo = { ...info, threads: Number(b.threads) || 1, threaded: !!b.threaded, build: b, threadNote };
    post({ type: MSG.LOADED, id, info: modelInfo });
    return m;
  } catch (e) {
    if (isTrap(e)) crash(id, e);
    else post({ type: MSG.ERROR, id, error: errorToData(e) });
    throw e;
  } finally {
    loading = false;
  }
}

const cancelledError = { name: 'AbortError', message: 'The caption was cancelled.' };

async function runCaption(job) {
  const { id } = job;
  await yieldToEventLoop();
  if (cancelled.has(id)) return post({ type: MSG.ERROR, id, error: cancelledError, tokens: 0, text: '' });
  let m;
  try {
    m = await modelReady;
  } catch (e) {
    return post({ type: MSG.ERROR, id, error: { name: 'Error', message: `The model is not loaded: ${errorMessage(e)}` } });
  }
  if (!m) return post({ type: MSG.ERROR, id, error: { name: 'Error', message: 'No model is loaded.' } });
  try {
    const r = await caption(m, modelInfo?.image_size, job.input, job.options, {
      yieldNow: yieldToEventLoop,
      cancelled: () => cancelled.has(id),
      onEncoded: (encodeMs) => post({ type: MSG.EVENT, id, event: { type: 'encoded', encodeMs, wasmBytes: wasmBytes() } }),
      onToken: (text) => post({ type: MSG.TOKEN, id, text }),
    });
    if (r.cancelled) post({ type: MSG.ERROR, id, error: cancelledError, tokens: r.tokens, text: r.text });
    else post({ type: MSG.DONE, id, ...r });
  } catch (e) {
    if (isTrap(e)) crash(id, e);
    else post({ type: MSG.ERROR, id, error: errorToData(e) });
  }
}

async function pump() {
  if (pumping) return;
  pumping = true;
  try {
    while (queue.length && !crashed) {
      const job = queue.shift();
      currentJob = job.id;
      await runCaption(job);
      cancelled.delete(job.id);
      currentJob = null;
    }
  } finally {
    pumping = false;
  }
}

async function answer(id, fn) {
  try {
    post({ type: MSG.RESULT, id, value: await fn() });
  } catch (e) {
    post({ type: MSG.ERROR, id, error: errorToData(e) });
  }
}

self.onmessage = (e) => {
  const msg = e.data;
  if (crashed) return;
  switch (msg.type) {
    case MSG.LOAD:
      modelReady = load(msg);
      modelReady.catch(() => {});
      break;
    case MSG.CAPTION:
      queue.push(msg);
      pump();
      break;
    case MSG.CANCEL:
      if (msg.id == null) {
        for (const j of queue) cancelled.add(j.id);
        if (currentJob != null) cancelled.add(currentJob);
      } else {
        cancelled.add(msg.id);
      }
      break;
    case MSG.CACHE_INFO:
      answer(msg.id, cacheInfo);
      break;
    case MSG.CLEAR_CACHE:
      answer(msg.id, async () => {
        if (loading) throw new Error('A download is in progress; wait for it to finish before clearing the cache.');
        await clearCache();
        return cacheInfo();
      });
      break;
    case MSG.STATS:
      answer(msg.id, () => ({ wasmBytes: wasmBytes(), peakWasmBytes: peakBytes() }));
      break;
    case MSG.TEST_TRAP:
      armTrap();
      break;
  }
};
