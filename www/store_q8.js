// Keeping a safetensors download as a q8_0 GGUF file (issue 13, "A smaller default").
//
// git-large's hub checkpoint is 1.6 GB of f32; converted while it downloads, the browser stores
// and loads the 426 MB q8_0 file instead. The conversion is the wasm module's `Quantizer`
// (src/quantize_stream.rs), the same code as `gitcap quantize`: the stored bytes equal the
// file the CLI writes for the same checkpoint (with the same `name`).
//
//   import * as gitcap from './pkg/gitcap.js';
//   import { storeType, quantizingSink } from './store_q8.js';
//   await gitcap.default();
//   const type = storeType(options.store, 'safetensors');        // 'q8_0', or null: keep as-is
//   const sink = quantizingSink(gitcap, { type, name: 'microsoft/git-large-coco', files, onOutput });
//   for await (const chunk of download) {
//     await sink.push(chunk);          // onOutput(bytes, offset) gets the GGUF bytes, in order
//     saveResumePoint(sink.state(), sink.sourceBytes, sink.outputBytes);   // optional
//   }
//   const summary = sink.finish();     // throws if the download was cut short
//
// Resuming after an interruption between two chunks: keep the first `outputBytes` bytes of
// output (drop any written after the saved state), then
//   const sink = quantizingSink(gitcap, { state, onOutput });
// and continue the download at source byte `sink.sourceBytes`. The state is a few hundred bytes
// plus the source header (about 70 KB for git-large): the source itself is never kept.
//
// To load the result while it is written, hand the same bytes to a ModelLoader:
//   loader.beginWeights('gguf', sink.outputTotal) once outputTotal is known (after the first
//   push that returned bytes), then loader.pushWeights(bytes) in onOutput.

/** The checkpoint's small files a GGUF embeds (the names `ModelLoader.addFile` takes). */
export const MODEL_FILES = [
  'config.json',
  'tokenizer.json',
  'tokenizer_config.json',
  'vocab.txt',
  'preprocessor_config.json',
  'generation_config.json',
];

/**
 * How weights of `sourceKind` ('safetensors' | 'gguf' | 'pytorch') are kept for the `store`
 * option: 'q8_0' or 'q4k' to convert while downloading, null to keep the source as it is.
 * Default (`store` undefined): q8_0 for safetensors (f32/f16 checkpoints); a GGUF is already
 * converted.
 */
export function storeType(store, sourceKind) {
  if (store === 'as-is') return null;
  if (store !== undefined && store !== 'q8_0' && store !== 'q4k') {
    throw new Error(`store must be 'q8_0', 'q4k' or 'as-is', got ${JSON.stringify(store)}`);
  }
  if (sourceKind !== 'safetensors') {
    if (store === undefined) return null;
    throw new Error(`store: '${store}' needs a safetensors checkpoint; this one is ${sourceKind}`);
  }
  return store ?? 'q8_0';
}

/**
 * Wraps the wasm `Quantizer` for a download worker.
 * @param {object} gitcap the initialised wasm module (`import * as gitcap from './pkg/gitcap.js'`)
 * @param {object} options
 * @param {'q8_0'|'q4k'} [options.type] storage type (default 'q8_0'; ignored with `state`)
 * @param {string} [options.name] recorded in the GGUF as general.name (`gitcap quantize`
 *   records its --model argument)
 * @param {Map|Object|Array} [options.files] the small files by name (config.json and a
 *   tokenizer at least); not needed with `state`
 * @param {Uint8Array} [options.state] a `state()` to resume from
 * @param {(bytes: Uint8Array, offset: number) => (void|Promise<void>)} options.onOutput
 *   receives the GGUF bytes in order; `offset` is where they go in the file
 */
export function quantizingSink(gitcap, { type = 'q8_0', name = '', files, state, onOutput }) {
  if (typeof onOutput !== 'function') throw new Error('quantizingSink: onOutput must be a function');
  let q;
  if (state) {
    q = gitcap.Quantizer.resume(state);
  } else {
    q = new gitcap.Quantizer(type, name);
    try {
      const entries = files instanceof Map ? [...files] : Array.isArray(files) ? files : Object.entries(files ?? {});
      for (const [file, bytes] of entries) {
        if (MODEL_FILES.includes(file)) q.addFile(file, bytes);
      }
    } catch (e) {
      q.free();
      throw e;
    }
  }
  let busy = false;
  let done = false;
  const alive = (what) => {
    if (done) throw new Error(`quantizingSink.${what}: the conversion has finished or failed`);
    if (busy) throw new Error(`quantizingSink.${what}: the previous push has not finished`);
  };
  return {
    /** Converts the next source bytes and awaits onOutput with what became final. */
    async push(chunk) {
      alive('push');
      busy = true;
      try {
        const offset = q.outputBytes;
        let out;
        try {
          out = q.push(chunk);
        } catch (e) {
          done = true;
          q.free();
          throw e;
        }
        // If the output cannot be kept, the converter is past bytes that were never stored:
        // the sink is dead (resume from the last state saved).
        if (out.length > 0) {
          try {
            await onOutput(out, offset);
          } catch (e) {
            done = true;
            q.free();
            throw e;
          }
        }
      } finally {
        busy = false;
      }
    },
    /** The resume point after the last push (pair it with the first `outputBytes` of output). */
    state() {
      alive('state');
      return q.state();
    },
    /** Source bytes consumed: where a resumed download continues. */
    get sourceBytes() {
      return done ? null : q.sourceBytes;
    },
    /** GGUF bytes produced so far. */
    get outputBytes() {
      return done ? null : q.outputBytes;
    },
    /** The source and GGUF file sizes, once the source header is in (else undefined). */
    get sourceTotal() {
      return done ? null : q.sourceTotal;
    },
    get outputTotal() {
      return done ? null : q.outputTotal;
    },
    /** Checks the whole source arrived: {fileBytes, f32Bytes, tensors, fallbacks, skipped}. */
    finish() {
      alive('finish');
      done = true;
      return q.finish(); // consumes q, whether or not it succeeds
    },
    /** Abandons the conversion. */
    free() {
      if (!done) {
        done = true;
        q.free();
      }
    },
  };
}

/**
 * The download worker's side: downloads a safetensors weights file through `download` (the
 * worker's chunked, retrying downloader, given a sink for the source chunks; the source itself
 * is not kept), converts it as it arrives, saves the GGUF as chunk files of `chunkBytes` through
 * `saveChunk(index, bytes)` (awaited in order) and feeds the same bytes to `loader` (a
 * ModelLoader) as a "gguf". Resolves with the `Quantizer.finish()` summary.
 *
 * Not resumable yet: an interrupted download starts over (the converter itself resumes from
 * `state()`; storing that state next to the chunks is the worker's part, still to do).
 */
export async function downloadConverted(gitcap, { type, name, files, loader, chunkBytes, download, saveChunk }) {
  if (!(chunkBytes > 0)) throw new Error('downloadConverted: chunkBytes must be positive');
  const pending = [];
  let pendingLen = 0;
  let index = 0;
  let begun = false;
  // Saves whole chunks of `chunkBytes` (and, at the end, the rest).
  const flush = async (all) => {
    while (pendingLen >= chunkBytes || (all && pendingLen > 0)) {
      const n = Math.min(chunkBytes, pendingLen);
      const buf = new Uint8Array(n);
      for (let k = 0; k < n; ) {
        const p = pending[0];
        const take = Math.min(p.length, n - k);
        buf.set(p.subarray(0, take), k);
        k += take;
        if (take === p.length) pending.shift();
        else pending[0] = p.subarray(take);
      }
      pendingLen -= n;
      await saveChunk(index++, buf);
    }
  };
  const sink = quantizingSink(gitcap, {
    type,
    name,
    files,
    onOutput: async (bytes) => {
      if (!begun) {
        loader.beginWeights('gguf', sink.outputTotal);
        begun = true;
      }
      loader.pushWeights(bytes);
      pending.push(bytes);
      pendingLen += bytes.length;
      await flush(false);
    },
  });
  try {
    await download((chunk) => sink.push(chunk));
  } catch (e) {
    sink.free();
    throw e;
  }
  const summary = sink.finish();
  await flush(true);
  return summary;
}
