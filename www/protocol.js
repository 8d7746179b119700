// The messages between the page side (gitcap.js) and the model worker (worker.js). Every request
// carries an `id`; the worker's answers to it carry the same `id`. Plain data only (structured
// clone); image bytes are transferred, not copied.
//
// Page -> worker
//   {type:'load', id, model, store, threads, persist, chunkBytes, pageUrl, tuning}
//   {type:'caption', id, input, options}   input: {kind:'bytes', bytes, mime} | {kind:'rgba', width, height, rgba}
//                                                 | {kind:'frames', frames}
//   {type:'cancel', id}                    stops a caption before its next token
//   {type:'cache-info', id} / {type:'clear-cache', id}
//   {type:'stats', id}
//   {type:'test-trap'}                     test-only: the next caption step executes a wasm trap
//
// Worker -> page
//   {type:'wasm-ready', id, build, threadNote, wasmBytes}
//   {type:'event', id, event}              load and caption events for a detailed UI (source, plan,
//                                          download-start, retry, encoded)
//   {type:'progress', id, phase, loadedBytes, totalBytes, file, networkBytes, rate}
//   {type:'loaded', id, info}
//   {type:'token', id, text}
//   {type:'done', id, text, tokenIds, decodedBy, timings}
//   {type:'result', id, value}             the answer to cache-info, clear-cache, stats
//   {type:'error', id, error}              error: see errorToData
//   {type:'crashed', id, message}          the wasm module trapped: this worker is unusable

export const MSG = Object.freeze({
  LOAD: 'load',
  CAPTION: 'caption',
  CANCEL: 'cancel',
  CACHE_INFO: 'cache-info',
  CLEAR_CACHE: 'clear-cache',
  STATS: 'stats',
  TEST_TRAP: 'test-trap',
  WASM_READY: 'wasm-ready',
  EVENT: 'event',
  PROGRESS: 'progress',
  LOADED: 'loaded',
  TOKEN: 'token',
  DONE: 'done',
  RESULT: 'result',
  ERROR: 'error',
  CRASHED: 'crashed',
});

/** How the browser keeps the weights (Captioner.load's `store`). */
export const STORE_CHOICES = Object.freeze(['q8_0', 'q4k', 'as-is']);

export function errorMessage(e) {
  if (e == null) return 'unknown error';
  if (typeof e === 'string') return e;
  return e.message || String(e);
}

/** An error as plain data: its name (AbortError survives the trip), message and extra fields. */
export function errorToData(e) {
  return {
    name: e?.name === 'AbortError' ? 'AbortError' : 'Error',
    message: errorMessage(e),
    code: e?.code ?? null,
    needed: e?.needed ?? null,
    available: e?.available ?? null,
  };
}

export function dataToError(d) {
  if (d.name === 'AbortError') return abortError(d.message);
  const err = new Error(d.message);
  if (d.code != null) err.code = d.code;
  if (d.needed != null) err.needed = d.needed;
  if (d.available != null) err.available = d.available;
  return err;
}

export function abortError(message = 'The operation was aborted.') {
  return new DOMException(message, 'AbortError');
}
