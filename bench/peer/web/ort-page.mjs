// ONNX Runtime Web (wasm backend) in the page's main thread, the way an app calling
// InferenceSession directly runs it. The model and the pixel values come from the local server.
import * as ort from '/ort/ort.wasm.min.mjs';

let session = null;
let feeds = null;

/** Loads the model with `threads` wasm threads (a page may use only one setting: ORT's wasm
 *  module is instantiated once). Returns what the page actually got. */
window.setup = async ({ model, pixels, threads }) => {
  ort.env.wasm.wasmPaths = '/ort/';
  ort.env.wasm.numThreads = threads;
  // In the page's main thread, as an app calling InferenceSession directly runs it. (Seen once on
  // this busy 2-core machine: with 2 threads, session creation never returned; see README.md.)
  ort.env.wasm.proxy = false;
  const t0 = performance.now();
  const bytes = new Uint8Array(await (await fetch(model)).arrayBuffer());
  const fetchMs = performance.now() - t0;
  session = await ort.InferenceSession.create(bytes, {
    executionProviders: ['wasm'],
    graphOptimizationLevel: 'all',
  });
  const loadMs = performance.now() - t0;
  const px = new Float32Array(await (await fetch(pixels)).arrayBuffer());
  feeds = { [session.inputNames[0]]: new ort.Tensor('float32', px, [1, 3, 224, 224]) };
  return {
    ortVersion: ort.env.versions?.web ?? null,
    crossOriginIsolated: self.crossOriginIsolated,
    sharedArrayBuffer: typeof SharedArrayBuffer === 'function',
    hardwareConcurrency: navigator.hardwareConcurrency,
    numThreads: ort.env.wasm.numThreads,
    modelBytes: bytes.byteLength,
    fetchMs,
    loadMs,
    wasmFiles: performance.getEntriesByType('resource').map((e) => e.name).filter((n) => /\.wasm$|ort-wasm.*\.mjs$/.test(n)),
  };
};

/** One image encoding; with `keep`, also returns the output for the worker's check. */
window.encode = async (keep = false) => {
  const t0 = performance.now();
  const out = await session.run(feeds);
  const ms = performance.now() - t0;
  const y = out[session.outputNames[0]];
  const result = { ms, dims: y.dims };
  if (keep) result.data = Array.from(y.data);
  y.dispose?.();
  return result;
};
