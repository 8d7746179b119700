// A model inside the worker: loading it (from the browser's storage when a complete copy is
// there, else from the network, stored chunk by chunk as it arrives) and captioning one image
// with it, a token at a time.

import { parseModelParam } from './models.js';
import { planFromNetwork } from './hub.js';
import { STORE_CHOICES, errorMessage } from './protocol.js';
import { MANIFEST, storeRoot, keyDirName, readJson, writeFile, writeJson, fileSize, quotaError, storageEstimate } from './storage.js';
import { DEFAULT_CHUNK, Progress, CacheDamaged, streamFile, fetchSmall, clearFileChunks, chunkName } from './download.js';
import { wasm, wasmBytes, peakBytes, plain, buildInfo, sha256Hex, newSha256, isTrap, maybeTrap } from './wasm.js';
import { downloadConverted } from './store_q8.js';

// ---------------------------------------------------------------------------------------------
// How the weights are kept (Captioner.load's `store`): the one place that decides it.

/**
 * The store choice for a source. 'as-is' keeps the source's bytes; a GGUF source is already in
 * its final form, so every choice keeps it as it is. 'q8_0' and 'q4k' convert f32/f16
 * safetensors while downloading (store_q8.js). Not given: 'as-is' (q8_0 is to become the default
 * for f32/f16 sources once an interrupted conversion resumes).
 */
function resolveStore(src, store) {
  if (store != null && !STORE_CHOICES.includes(store)) {
    throw new Error(`store must be one of ${STORE_CHOICES.map((s) => `'${s}'`).join(', ')}; got ${JSON.stringify(store)}`);
  }
  return src.kind === 'gguf' || store == null ? 'as-is' : store;
}

/**
 * The hook between the network and the store for the weights, the one place a store choice acts.
 * 'as-is': the source's chunks go to the loader and, when persisting, to the store as they arrive
 * (so an interrupted download resumes). 'q8_0'/'q4k': the download goes through store_q8.js's
 * converter; the loader gets the GGUF it writes, the store keeps that GGUF's chunks, and `w`
 * becomes that file in the manifest (later visits load it like any GGUF). Returns nothing; `onChunk`
 * sees every source chunk (the weights' type is read from the first).
 */
async function receiveWeights({ choice, src, w, dir, loader, progress, onRetry, smallFiles, onChunk }) {
  if (choice === 'as-is' || w.complete) {
    loader.beginWeights(w.kind, w.size);
    await streamFile({
      file: w,
      store: dir,
      progress,
      newHasher: newSha256,
      onRetry,
      sink: (chunk) => {
        onChunk(chunk);
        loader.pushWeights(chunk);
        wasmBytes();
      },
    });
    return;
  }
  const gguf = { name: `model.${choice}.gguf`, kind: 'gguf', chunkSize: w.chunkSize, sha256: undefined, url: undefined };
  const summary = await downloadConverted(wasm(), {
    type: choice,
    name: src.hub?.id ?? src.label,
    files: smallFiles,
    loader,
    chunkBytes: w.chunkSize,
    download: (sink) =>
      streamFile({
        file: w,
        store: null,
        progress,
        newHasher: newSha256,
        onRetry,
        sink: async (chunk) => {
          await sink(chunk);
          wasmBytes();
        },
      }),
    saveChunk: (i, bytes) => (dir ? writeFile(dir, chunkName(gguf, i), bytes) : undefined),
  });
  Object.assign(w, gguf, { size: summary.fileBytes });
}

/** The weights' number type, from the first bytes of a safetensors header or a gitcap GGUF. */
class WeightsType {
  constructor(kind) {
    this.kind = kind;
    this.head = new Uint8Array(0);
    this.type = null;
  }
  push(chunk) {
    if (this.type || this.head.length > 64 << 20) return;
    const joined = new Uint8Array(this.head.length + chunk.length);
    joined.set(this.head);
    joined.set(chunk, this.head.length);
    this.head = joined;
    this.type = this.kind === 'gguf' ? ggufQuantType(joined) : safetensorsDtype(joined);
    if (this.type) this.head = new Uint8Array(0);
  }
}

function safetensorsDtype(b) {
  if (b.length < 8) return null;
  const len = Number(new DataView(b.buffer, b.byteOffset).getBigUint64(0, true));
  if (b.length < 8 + len) return null;
  try {
    const header = JSON.parse(new TextDecoder().decode(b.subarray(8, 8 + len)));
    const values = new Map();
    for (const [name, t] of Object.entries(header)) {
      if (name === '__metadata__') continue;
      const n = t.shape.reduce((x, y) => x * y, 1);
      values.set(t.dtype, (values.get(t.dtype) ?? 0) + n);
    }
    return ([...values].sort((x, y) => y[1] - x[1])[0]?.[0] ?? 'F32').toLowerCase();
  } catch {
    return 'unknown';
  }
}

/** gitcap's GGUF files carry `gitcap.quant_type` (a string: q8_0, q4k, f16) among their metadata. */
function ggufQuantType(b) {
  const key = new TextEncoder().encode('gitcap.quant_type');
  outer: for (let i = 0; i + key.length + 16 < b.length && i < 1 << 20; i++) {
    for (let j = 0; j < key.length; j++) if (b[i + j] !== key[j]) continue outer;
    const dv = new DataView(b.buffer, b.byteOffset);
    const at = i + key.length;
    if (dv.getUint32(at, true) !== 8) return 'unknown'; // not a string value
    const n = Number(dv.getBigUint64(at + 4, true));
    if (n > 16 || at + 12 + n > b.length) return 'unknown';
    return new TextDecoder().decode(b.subarray(at + 12, at + 12 + n));
  }
  return b.length > 1 << 20 ? 'unknown' : null;
}

// ---------------------------------------------------------------------------------------------
// Loading

let loadGen = 0;

/**
 * Loads a model. `req`: the load message ({model, store, persist, chunkBytes, pageUrl}).
 * `emit(type, fields)`: 'progress' and 'event' reports. Resolves with {model, info}.
 */
export async function loadModel(req, emit, retried = false) {
  const { model: param, chunkBytes, persist, pageUrl } = req;
  const gen = ++loadGen;
  const t0 = performance.now();
  const gitcap = wasm();
  const src = parseModelParam(param, pageUrl);
  const store = resolveStore(src, req.store);
  // The 'as-is' key is the source's own, as before the store option existed (stored models stay).
  const key = store === 'as-is' ? src.key : `${src.key}|store=${store}`;
  emit('event', { type: 'source', label: src.label, key, base: src.base, hub: src.hub ?? null, store });

  const root = persist ? await storeRoot(true) : null;
  const dirName = keyDirName(key, sha256Hex);
  const dir = root ? await root.getDirectoryHandle(dirName, { create: true }) : null;
  let manifest = dir ? await readJson(dir, MANIFEST) : null;
  const fromCache = !!manifest?.complete;

  let files;
  if (fromCache) {
    files = manifest.files.map((f) => ({ ...f, complete: true }));
  } else {
    files = await planFromNetwork(src);
    const chunkSize = chunkBytes > 0 ? chunkBytes : DEFAULT_CHUNK;
    // A partial download of the same files resumes with its own chunk size.
    const same = (a, b) => a && b && a.size === b.size && (a.sha256 ?? null) === (b.sha256 ?? null) && a.url === b.url;
    const prior = new Map((manifest?.files ?? []).map((f) => [f.name, f]));
    if (dir && manifest) {
      for (const [name, p] of prior) {
        if (!same(p, files.find((f) => f.name === name))) await clearFileChunks(dir, p);
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

  if (!fromCache && dir) {
    // Quota: the part not yet stored must fit.
    let have = 0;
    for (const f of files) {
      if (!f.weights) continue;
      const n = Math.ceil(f.size / f.chunkSize);
      for (let i = 0; i < n; i++) {
        const s = await fileSize(dir, chunkName(f, i));
        if (s > 0) have += s;
      }
    }
    needed = total - have;
    const estimate = await storageEstimate();
    if (estimate && needed > estimate.quota - estimate.usage) {
      await root.removeEntry(dirName, { recursive: true }).catch(() => {});
      throw quotaError(needed, estimate.quota - estimate.usage);
    }
    manifest = { key, source: src.key, store, label: src.label, base: src.base, total, complete: false, files, created: Date.now() };
    await writeJson(dir, MANIFEST, manifest);
    if (have < total) emit('event', { type: 'download-start', total, have });
  }
  emit('event', { type: 'plan', label: src.label, total, fromCache, persist: !!dir, files: files.map((f) => ({ name: f.name, size: f.size })) });

  const progress = new Progress(total, (p) => emit('progress', p));
  progress.phase = fromCache ? 'load' : 'download';
  const onRetry = (event) => emit('event', event);
  const loader = new gitcap.ModelLoader();
  let finished = false;
  try {
    const smallFiles = new Map(); // by name: a converting store embeds them in its GGUF
    for (const f of files.filter((x) => !x.weights)) {
      const bytes = await fetchSmall({ file: f, store: dir, progress, sha256Hex, onRetry });
      smallFiles.set(f.name, bytes);
      if (!fromCache && dir) {
        f.stored = true;
        await writeJson(dir, MANIFEST, { ...manifest, files });
      }
      loader.addFile(f.name, bytes);
    }
    const w = files.find((x) => x.weights);
    const type = new WeightsType(w.kind);
    await receiveWeights({ choice: store, src, w, dir, loader, progress, onRetry, smallFiles, onChunk: (c) => type.push(c) });
    progress.emit(true);
    if (gen !== loadGen) throw new Error('superseded by another load');
    emit('progress', { phase: 'finish', file: w.name, loadedBytes: total, totalBytes: total, networkBytes: progress.net, rate: 0 });
    finished = true; // finish() consumes the loader, whether or not it succeeds
    const m = loader.finish();
    if (dir && !fromCache) {
      w.stored = true;
      manifest = { ...manifest, files: files.map((f) => ({ ...f, complete: undefined })), complete: true };
      await writeJson(dir, MANIFEST, manifest);
    }
    const core = plain(m.info());
    const info = {
      ...core,
      label: src.label,
      key,
      source: src.key,
      store,
      weights: store !== 'as-is' ? store : type.type && type.type !== 'unknown' ? type.type : core.quantized ? 'quantized' : 'f32',
      frames: m.frames,
      loadMs: performance.now() - t0,
      fromCache,
      persisted: !!dir,
      networkBytes: progress.net,
      storedBytes: dir ? total : 0,
      wasmBytes: wasmBytes(),
      peakWasmBytes: peakBytes(),
    };
    return { model: m, info };
  } catch (e) {
    if (e?.code === 'quota') {
      // Storage refused mid-download (the estimate was optimistic): free what was written.
      await root?.removeEntry(dirName, { recursive: true }).catch(() => {});
      throw quotaError(needed, null);
    }
    if (!(e instanceof CacheDamaged && dir) || retried) throw e;
  } finally {
    if (!finished) {
      try {
        loader.free();
      } catch {}
    }
  }
  // The stored copy turned out to be incomplete: forget it and download again.
  await root.removeEntry(dirName, { recursive: true }).catch(() => {});
  return loadModel(req, emit, true);
}

// ---------------------------------------------------------------------------------------------
// Captioning

/** The wasm module's caption options from the API's (camelCase) or the page's (snake_case) names. */
export function captionOptions(o = {}) {
  const lp = Number(o.lengthPenalty ?? o.length_penalty);
  const opts = {
    max_new_tokens: Math.max(1, Math.min(512, Math.floor(Number(o.maxNewTokens ?? o.max_new_tokens) || 20))),
    beams: Math.max(1, Math.min(16, Math.floor(Number(o.beams) || 1))),
    length_penalty: o.lengthPenalty == null && o.length_penalty == null ? 1.0 : Number.isFinite(lp) ? lp : 1.0,
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

function startJob(m, input, opts) {
  if (input.kind === 'frames') return m.startCaptionFrames(input.frames.map((b) => new Uint8Array(b)), opts);
  if (input.kind === 'rgba') return m.startCaptionRgba(input.width, input.height, new Uint8Array(input.rgba), opts);
  return m.startCaption(new Uint8Array(input.bytes), opts);
}

/**
 * Captions one input with model `m`. `hooks`: {yieldNow() (lets a cancel arrive), cancelled(),
 * onEncoded(ms), onToken(text)}. Resolves with {text, tokenIds, decodedBy, timings} or
 * {cancelled, tokens, text}; rejects with an Error (a trap: see isTrap).
 */
export async function caption(m, imageSize, input, options, hooks) {
  const opts = captionOptions(options);
  const t0 = performance.now();
  // null: the caller gave pixels; 'browser': the browser decoded the file; 'gitcap': gitcap did.
  let decodedBy = input.kind === 'rgba' ? input.decodedBy ?? null : 'gitcap';
  let cj;
  try {
    cj = startJob(m, input, opts);
  } catch (e) {
    const msg = errorMessage(e);
    if (isTrap(e) || input.kind !== 'bytes' || !/^image/i.test(msg)) throw e;
    // gitcap's decoder cannot read it; perhaps the browser can.
    let decoded;
    try {
      decoded = await browserDecode(input.bytes, input.mime, (imageSize || 384) * 2);
    } catch {
      throw new Error(`This file is not an image gitcap can read (${msg.replace(/^image:\s*/i, '')}).`);
    }
    cj = m.startCaptionRgba(decoded.width, decoded.height, decoded.rgba, opts);
    decodedBy = 'browser';
  }
  input.bytes = input.frames = input.rgba = null;
  const encodeMs = performance.now() - t0;
  hooks.onEncoded?.(encodeMs);

  const stepMs = [];
  let firstTextMs = null;
  let text = '';
  try {
    for (;;) {
      await hooks.yieldNow();
      if (hooks.cancelled()) return { cancelled: true, tokens: stepMs.length, text };
      const s = performance.now();
      maybeTrap();
      const ev = plain(cj.step());
      stepMs.push(performance.now() - s);
      wasmBytes();
      if (ev.text) {
        text += ev.text;
        if (firstTextMs == null) firstTextMs = performance.now() - t0;
        hooks.onToken(ev.text);
      }
      if (ev.done) {
        const decodeMs = stepMs.reduce((a, b) => a + b, 0);
        const build = buildInfo();
        return {
          text: ev.caption?.text ?? text,
          tokenIds: Array.from(ev.caption?.token_ids ?? []),
          decodedBy,
          timings: {
            encodeMs,
            firstTextMs,
            decodeMs,
            steps: stepMs.length,
            perTokenMs: stepMs.length ? decodeMs / stepMs.length : 0,
            stepMs,
            totalMs: performance.now() - t0,
            wasmBytes: wasmBytes(),
            peakWasmBytes: peakBytes(),
            splits: build.splits,
            int8Products: build.int8Products,
          },
        };
      }
    }
  } finally {
    try {
      cj.free();
    } catch {}
  }
}
