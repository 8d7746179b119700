// Types of gitcap's public API (gitcap.js).

/** Where a model comes from: a `.gguf` URL, a checkpoint folder URL, or 'hf:owner/name[@revision]'. */
export type ModelSource = string;

/** How the weights are kept in the browser. */
export type StoreChoice = 'q8_0' | 'q4k' | 'as-is';

export interface LoadProgress {
  /** 'download' (from the network), 'load' (from the browser's storage), 'finish' (building the model). */
  phase: 'download' | 'load' | 'finish';
  loadedBytes: number;
  totalBytes: number;
  /** The file being read. */
  file: string;
  /** Bytes fetched over the network so far in this load. */
  networkBytes?: number;
  /** Bytes per second over the last seconds (0 when reading from storage). */
  rate?: number;
}

/** Load events for a detailed progress UI (see the demo page). */
export type LoadEvent =
  | { type: 'wasm-ready'; build: { simd: boolean; threaded: boolean; threads: number; version: string }; threadNote: string | null }
  | { type: 'source'; label: string; key: string; base: string; hub: { id: string; revision: string } | null; store: StoreChoice }
  | {
      type: 'plan';
      label: string;
      /** Bytes to read: downloaded, or loaded from the browser's storage. */
      total: number;
      /** Bytes that will be kept in storage (a converting store: the GGUF's size and the small files); null when not persisting. */
      stored: number | null;
      store: StoreChoice;
      fromCache: boolean;
      persist: boolean;
      files: { name: string; size: number | null }[];
    }
  | { type: 'download-start'; total: number; have: number }
  | { type: 'retry'; what: string; attempt: number; message: string };

/** Caption events (caption()'s onEvent). */
export type CaptionEvent = { type: 'encoded'; encodeMs: number; wasmBytes: number };

export interface LoadOptions {
  /** Default: the default hub checkpoint (MODELS[0]). */
  model?: ModelSource;
  /** How the weights are kept. 'q8_0' and 'q4k' convert f32/f16/bf16 safetensors to a GGUF while
   *  downloading (the file `gitcap quantize` writes) and keep and load that: git-large's 1.6 GB
   *  of f32 becomes 426 MB (q8_0), loaded in under 900 MB of wasm memory; an interrupted
   *  conversion resumes. 'as-is' keeps the source's bytes. A .gguf source is kept as it is
   *  whatever the choice.
   *  Default: 'q8_0' for safetensors, except that a copy of the same source this browser already
   *  keeps as it is (complete, or partly downloaded), as earlier versions did by default, is used
   *  or its download continued, unless a complete q8_0 copy exists. */
  store?: StoreChoice;
  /** Default: all cores when the page is cross-origin isolated, else 1. */
  threads?: number;
  onProgress?: (p: LoadProgress) => void;
  onEvent?: (e: LoadEvent) => void;
  /** Cancels the download/load; `load` then rejects with an AbortError. */
  signal?: AbortSignal;
  /** Keep the model in the browser's storage (default true). */
  persist?: boolean;
  /** Download chunk size in bytes (default 16 MiB). */
  chunkBytes?: number;
  /** Where worker.js is, when a bundler moved it. */
  workerUrl?: string | URL;
  /** Tuning knobs for benchmarks. */
  tuning?: { minSplitMacs?: number; minSplitRows?: number; kernelMinRows?: number; int8MinRows?: number; relaxed?: boolean };
}

export interface CaptionOptions {
  /** Tokens to generate at most (default 20). */
  maxNewTokens?: number;
  /** 1 (default): greedy; more: beam search with this many beams. */
  beams?: number;
  /** Beam search's length penalty (default 1.0). */
  lengthPenalty?: number;
  /** Text the caption continues. */
  prompt?: string;
  /** Each text fragment as soon as it is final; the fragments concatenate to `text`. */
  onToken?: (fragment: string) => void;
  /** Cancels this caption; it then rejects with an AbortError. */
  signal?: AbortSignal;
  /** Events while captioning (the image encoded). */
  onEvent?: (e: CaptionEvent) => void;
}

export interface CaptionTimings {
  encodeMs: number;
  firstTextMs: number | null;
  decodeMs: number;
  steps: number;
  perTokenMs: number;
  stepMs: number[];
  totalMs: number;
  wasmBytes: number;
  peakWasmBytes: number;
}

export interface CaptionResult {
  text: string;
  /** The whole token sequence, as the CLI's `token_ids`. */
  tokenIds: number[];
  /** 'gitcap': its own decoder read the file (equal to the CLI's); 'browser': the browser's pixels; null: pixels were given. */
  decodedBy: 'gitcap' | 'browser' | null;
  /** Set when the file could not be read and the browser's pixels were captioned instead. */
  note?: string;
  timings: CaptionTimings;
}

export type ImageInput =
  | Blob
  | ArrayBuffer
  | Uint8Array
  | HTMLImageElement
  | ImageBitmap
  | HTMLCanvasElement
  | OffscreenCanvas
  | ImageData
  | string
  | URL
  /** A video checkpoint's frames, each an encoded image. */
  | { frames: (ArrayBuffer | Uint8Array)[] };

export interface CaptionerInfo {
  /** The model's label (hub id or file name). */
  model: string;
  weights: 'f32' | 'f16' | 'bf16' | 'q8_0' | 'q4k' | string;
  threads: number;
  backend: string;
  store: StoreChoice;
  /** The WebAssembly build's facts (simd, relaxed, threaded, threads, version, ...). */
  build: Record<string, unknown>;
  /** The model's source key ('hf:owner/name@revision' or 'url:...'). */
  source: string;
  /** Whether the model is kept in the browser's storage. */
  persisted: boolean;
  quantized: boolean;
  threadNote: string | null;
  fromCache: boolean;
  loadMs: number;
  storedBytes: number;
  networkBytes: number;
  wasmBytes: number;
  imageSize: number;
  frames: number;
}

export declare class Captioner {
  private constructor();
  static load(options?: LoadOptions): Promise<Captioner>;
  readonly info: CaptionerInfo;
  /** How many times the worker was restarted after a crash. */
  readonly restarts: number;
  caption(image: ImageInput, options?: CaptionOptions): Promise<CaptionResult>;
  stats(): Promise<{ wasmBytes: number; peakWasmBytes: number }>;
  /** The stored models, as this captioner's worker sees them. */
  storedModels(): Promise<StoredModels>;
  /** Deletes the stored models; refused while this captioner is downloading. */
  clearStoredModels(): Promise<StoredModels>;
  dispose(): void;
}

export interface FillMissingAltOptions extends Omit<CaptionOptions, 'onToken'> {
  captioner: Captioner;
  /** Also caption images with alt="" (decorative by convention; default false). */
  includeEmpty?: boolean;
  /** Called as each image is done. */
  onImage?: (entry: FillMissingAltEntry) => void;
}

export type FillMissingAltEntry = { img: HTMLImageElement; text: string } | { img: HTMLImageElement; error: Error };

export declare function fillMissingAlt(root: ParentNode, options: FillMissingAltOptions): Promise<FillMissingAltEntry[]>;

export interface StoredModel {
  dir: string;
  key: string;
  source: string | null;
  store: StoreChoice | null;
  label: string;
  complete: boolean;
  bytes: number;
  total: number | null;
}

export interface StoredModels {
  entries: StoredModel[];
  usage: number | null;
  quota: number | null;
  available: boolean;
}

export declare function storedModels(): Promise<StoredModels>;
export declare function clearStoredModels(): Promise<void>;
export declare function availableThreads(): number;
export declare function threadSupport(): { threads: number; why: string | null };
/** Whether this browser can run gitcap (WebAssembly with SIMD), and a message for the visitor if not. */
export declare function support(): { ok: boolean; reason: 'no-wasm' | 'no-simd' | null; message: string | null };

export interface KnownModel {
  id: string;
  revision: string;
  label: string;
  note: string;
  /** Approximate download size in bytes. */
  downloadBytes: number;
  /** Approximate bytes kept in the browser's storage with the default store (q8_0; 'as-is' keeps downloadBytes). */
  storedBytes: number;
}
export declare const MODELS: KnownModel[];
export declare const DEFAULT_MODEL: KnownModel;
export declare function formatBytes(n: number | null | undefined): string;
export declare function parseModelParam(param: string | null, pageUrl?: string): { kind: string; key: string; label: string; base: string };
