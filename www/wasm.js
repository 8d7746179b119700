// The WebAssembly module inside the worker: which build to start (threaded, relaxed SIMD, plain),
// its memory, and what a trap looks like. One instance per worker; after a trap the worker is
// ended and a new one starts (see worker.js and gitcap.js).

import { errorMessage } from './protocol.js';

let gitcap = null; // the wasm-bindgen module
let wasmExports = null; // its exports (memory)
let wasmInit = null;
let peakWasmBytes = 0;

/** The wasm-bindgen module (after initWasm). */
export const wasm = () => gitcap;

export function wasmBytes() {
  const n = wasmExports?.memory?.buffer?.byteLength ?? 0;
  if (n > peakWasmBytes) peakWasmBytes = n;
  return n;
}

export const peakBytes = () => peakWasmBytes;

export function plain(v) {
  if (v instanceof Map) return Object.fromEntries([...v].map(([k, x]) => [k, plain(x)]));
  if (Array.isArray(v)) return v.map(plain);
  return v;
}

export const buildInfo = () => plain(gitcap.buildInfo());

export function sha256Hex(bytes) {
  const h = new gitcap.Sha256();
  h.update(bytes);
  const hex = h.hex();
  h.free?.();
  return hex;
}

export const newSha256 = () => new gitcap.Sha256();

/** The wasm hasher at a saved `state()` (plain data, kept in a converted download's resume point); throws if damaged. */
export const resumeSha256 = (state) => gitcap.Sha256.resume(state);

// A function of one relaxed SIMD instruction (i8x16.relaxed_swizzle): engines without relaxed SIMD
// (Chrome before 114, Firefox before 145, Safari) reject it.
export const RELAXED_SIMD_PROBE = new Uint8Array([
  0, 97, 115, 109, 1, 0, 0, 0, 1, 5, 1, 96, 0, 1, 123, 3, 2, 1, 0, 10, 15, 1, 13, 0, 65, 1, 253, 15,
  65, 2, 253, 15, 253, 128, 2, 11,
]);

/** The builds to try, best first: threaded ones (shared memory, a pool of `threads` web workers)
 *  when more than one thread is asked for, then single-threaded ones; relaxed SIMD before plain
 *  SIMD128 where the engine takes it (its integer kernel is faster). */
function buildCandidates(threads, relaxedSimd) {
  const builds = [];
  if (threads > 1) {
    if (relaxedSimd) builds.push({ dir: 'pkg-threads-relaxed', threads });
    builds.push({ dir: 'pkg-threads', threads });
  }
  if (relaxedSimd) builds.push({ dir: 'pkg-relaxed', threads: 1 });
  builds.push({ dir: 'pkg', threads: 1 });
  return builds;
}

/** Imports one build. pkg/ by a literal path, so bundlers (Vite) bundle it with its wasm file; the
 *  others by URL, so an app bundled without them still builds (and runs on pkg/). */
function importBuild(dir) {
  if (dir === 'pkg') return import('./pkg/gitcap.js');
  // The base in a variable: Vite rewrites `new URL(<template>, import.meta.url)` into a bundled
  // glob of every build, whose wasm files it then does not bundle.
  const here = import.meta.url;
  return import(/* @vite-ignore */ new URL(`./${dir}/gitcap.js`, here).href);
}

/**
 * Starts the module once: `threads` > 1 tries the threaded builds, falling back to the
 * single-threaded ones with a note saying why. `tuning`: {minSplitMacs, minSplitRows,
 * kernelMinRows, int8MinRows, relaxed} (the demo page's ?split_min=, ... knobs).
 */
export function initWasm(threads, tuning = {}) {
  if (!wasmInit) {
    wasmInit = (async () => {
      const relaxedSimd = tuning.relaxed !== false && WebAssembly.validate(RELAXED_SIMD_PROBE);
      let threadNote = null;
      let lastFailure = null;
      for (const { dir, threads: n } of buildCandidates(threads, relaxedSimd)) {
        try {
          const module = await importBuild(dir);
          const exports = await module.default();
          if (n > 1) await module.startThreads(n);
          gitcap = module;
          wasmExports = exports;
          if (n > 1) threadNote = null;
          break;
        } catch (e) {
          lastFailure = `the WebAssembly module (${dir}/gitcap.js) could not be loaded: ${errorMessage(e)}`;
          console.warn(`gitcap: ${lastFailure}; trying the next build`);
          if (n > 1) threadNote = `the threaded build could not start: ${errorMessage(e)}`;
        }
      }
      if (!gitcap) {
        throw new Error(
          `${lastFailure[0].toUpperCase()}${lastFailure.slice(1)}. ` +
            'If you are running from a checkout, build it first with "bash build.sh".'
        );
      }
      const knob = (v, set) => v != null && v !== '' && Number.isFinite(Number(v)) && set(Number(v));
      knob(tuning.minSplitMacs, gitcap.setMinSplitMacs);
      knob(tuning.minSplitRows, gitcap.setMinSplitRows);
      knob(tuning.kernelMinRows, gitcap.setKernelMinRows);
      knob(tuning.int8MinRows, gitcap.setInt8MinRows);
      return { build: buildInfo(), threadNote };
    })();
    wasmInit.catch(() => {});
  }
  return wasmInit;
}

// ---------------------------------------------------------------------------------------------
// Traps. A trap (unreachable: a panic or an allocation failure; out-of-bounds access) leaves the
// instance in an unknown state, so the worker reports it and is replaced.

/** A trap of a WebAssembly module (RuntimeError), or memory that could not grow. */
export const isTrap = (e) =>
  e instanceof WebAssembly.RuntimeError || (e instanceof RangeError && /memory|allocation/i.test(e.message || ''));

// (module (func (export "trap") unreachable)): the test hook's trap, a real WebAssembly trap in this
// worker, raised where gitcap's would be (inside a caption step), with the engine's own message.
const TRAP_MODULE = new Uint8Array([
  0, 97, 115, 109, 1, 0, 0, 0, 1, 4, 1, 96, 0, 0, 3, 2, 1, 0, 7, 8, 1, 4, 116, 114, 97, 112, 0, 0, 10, 5, 1, 3, 0, 0, 11,
]);
let trapArmed = false;

/** Test-only: the next caption step traps. */
export function armTrap() {
  trapArmed = true;
}

/** Called before each caption step: traps once when armed. */
export function maybeTrap() {
  if (!trapArmed) return;
  trapArmed = false;
  new WebAssembly.Instance(new WebAssembly.Module(TRAP_MODULE)).exports.trap();
}
