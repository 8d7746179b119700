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
 * The GGUF's size for a safetensors file, known before downloading it: a throwaway converter is
 * given the small files and the source's header (`read(start, end)` fetches source bytes, both
 * ends included: 8 bytes, then the JSON header, about 70 KB for git-large), and says how long its
 * output will be. The quota check uses it (the q8_0 file is about 27% of f32).
 */
export async function convertedSize(gitcap, { type = 'q8_0', name = '', files, read, sourceSize }) {
  const head = await read(0, 7);
  const len = Number(new DataView(head.buffer, head.byteOffset, 8).getBigUint64(0, true));
  // The loader refuses headers over 100 MB too; this only keeps an absurd length from being fetched.
  if (!(len > 1 && len <= 100_000_000 && 8 + len <= sourceSize)) {
    throw new Error(`the weights file is not a valid safetensors file: its header length (${len} bytes) does not fit in its ${sourceSize} bytes`);
  }
  const json = await read(8, 7 + len);
  const probe = quantizingSink(gitcap, { type, name, files, onOutput: () => {} });
  try {
    await probe.push(head);
    await probe.push(json);
    const total = probe.outputTotal;
    if (total == null) throw new Error('the converter did not learn the output size from the header');
    return total;
  } finally {
    probe.free();
  }
}

/**
 * The model worker's side of a converted download: the source arrives through `download(push,
 * from)` (the worker's chunked, retrying downloader, started at source byte `from` and calling
 * `push` with each chunk in order; the source itself is not kept) and is converted as it comes.
 * The GGUF goes to `loader` (a ModelLoader, as a "gguf", from its first byte) and to
 * `onOutput(bytes)` (awaited: the store's writer). After each source chunk,
 * `onResumePoint({state, sourceBytes, outputBytes})` (awaited) may save a resume point; to
 * continue from one, pass `resume: {state, kept}`, where `kept()` yields the first `outputBytes`
 * bytes of output as they were stored (the loader reads them first), and the download goes on
 * from `sourceBytes`. Resolves with the `Quantizer.finish()` summary.
 */
export async function downloadConverted(gitcap, { type, name, files, loader, resume = null, onOutput, onResumePoint, download }) {
  let begun = false;
  // The loader is told the file's size with its first bytes: the size is known once the source
  // header is in, and no output comes before that.
  const toLoader = (bytes) => {
    if (!begun) {
      loader.beginWeights('gguf', sink.outputTotal);
      begun = true;
    }
    loader.pushWeights(bytes);
  };
  const output = async (bytes) => {
    toLoader(bytes);
    await onOutput?.(bytes);
  };
  const sink = resume ? quantizingSink(gitcap, { state: resume.state, onOutput: output }) : quantizingSink(gitcap, { type, name, files, onOutput: output });
  try {
    if (resume) {
      let n = 0;
      for await (const bytes of resume.kept()) {
        toLoader(bytes);
        n += bytes.length;
      }
      if (n !== sink.outputBytes) {
        throw new Error(`the stored part of the converted model has ${n} bytes; its resume point counted ${sink.outputBytes}`);
      }
    }
    await download(async (chunk) => {
      await sink.push(chunk);
      await onResumePoint?.({ state: sink.state(), sourceBytes: sink.sourceBytes, outputBytes: sink.outputBytes });
    }, sink.sourceBytes);
  } catch (e) {
    sink.free();
    throw e;
  }
  return sink.finish();
}
