// A model inside the worker: loading it (from the browser's storage when a complete copy is
// there, else from the network, stored chunk by chunk as it arrives) and captioning one image
// with it, a token at a time.

import { parseModelParam } from './models.js';
import { planFromNetwork } from './hub.js';
import { STORE_CHOICES, errorMessage } from './protocol.js';
import {
  MANIFEST, storeRoot, keyDirName, readJson, readBytes, writeFile, writeJson, fileSize, removeEntry, removeByPrefix, quotaError,
  storageEstimate, ChunkAppender,
} from './storage.js';
import { DEFAULT_CHUNK, Progress, CacheDamaged, streamFile, fetchSmall, fetchBytes, clearFileChunks, chunkName } from './download.js';
import { wasm, wasmBytes, peakBytes, plain, buildInfo, sha256Hex, newSha256, resumeSha256, isTrap, maybeTrap } from './wasm.js';
import { downloadConverted, convertedSize, storeType } from './store_q8.js';

// ---------------------------------------------------------------------------------------------
// How the weights are kept (Captioner.load's `store`): the one place that decides it.

/** The storage key: the 'as-is' key is the source's own, as before the store option existed. */
const storeKey = (src, store) => (store === 'as-is' ? src.key : `${src.key}|store=${store}`);

/** The manifest of the stored copy under `key`, if there is one (nothing is created). */
async function storedManifest(root, key) {
  try {
    const dir = await root.getDirectoryHandle(keyDirName(key, sha256Hex), { create: false });
    const manifest = await readJson(dir, MANIFEST);
    return manifest && { dir, manifest };
  } catch {
    return null;
  }
}

/**
 * The store choice for a source. A GGUF source is already in its final form: every choice keeps
 * it as it is. For a safetensors source, 'as-is' keeps its bytes and 'q8_0'/'q4k' convert it
 * while downloading (store_q8.js). Not given: q8_0 (storeType's default), except where this
 * browser already holds the source as it is, complete or partly downloaded (stored by an earlier
 * version of gitcap, whose default that was, or with store 'as-is') and no complete q8_0 copy:
 * then that copy is loaded or its download continued, so a default that changed never makes a
 * visitor download again what the browser already has, nor leaves it unused beside a new one.
 * Deleting the stored models (or passing store: 'q8_0') moves such a visitor to q8_0.
 */
async function resolveStore(src, store, root) {
  if (store != null && !STORE_CHOICES.includes(store)) {
    throw new Error(`store must be one of ${STORE_CHOICES.map((s) => `'${s}'`).join(', ')}; got ${JSON.stringify(store)}`);
  }
  if (src.weights.kind !== 'safetensors') return 'as-is';
  const choice = storeType(store ?? undefined, 'safetensors') ?? 'as-is';
  if (store != null || !root) return choice;
  if ((await storedManifest(root, storeKey(src, choice)))?.manifest.complete) return choice;
  const asIs = await storedManifest(root, storeKey(src, 'as-is'));
  if (asIs) {
    const w = asIs.manifest.files?.find((f) => f.weights);
    if (asIs.manifest.complete || (w?.chunkSize && (await fileSize(asIs.dir, chunkName(w, 0))) > 0)) return 'as-is';
  }
  return choice;
}

// A converting store keeps, beside its manifest, the GGUF's chunks and the resume point of the
// conversion: one file, replaced whole after each source chunk once the output it counts is
// flushed (so it never counts bytes that were not kept). Its layout: 4 bytes (little-endian) of
// JSON length, the JSON ({version, type, source: {size, sha256, chunkSize}, sourceBytes,
// outputBytes, hash}), then the converter's state.
const RESUME_VERSION = 1;
const resumeName = (gguf) => `${gguf.name}.resume`;

async function writeResumePoint(dir, gguf, fields, state) {
  const json = new TextEncoder().encode(JSON.stringify({ version: RESUME_VERSION, ...fields }));
  const bytes = new Uint8Array(4 + json.length + state.length);
  new DataView(bytes.buffer).setUint32(0, json.length, true);
  bytes.set(json, 4);
  bytes.set(state, 4 + json.length);
  await writeFile(dir, resumeName(gguf), bytes);
}

/**
 * The saved resume point of the conversion of `w` into `gguf`, checked against the source
 * planned now and the chunks stored, or null (none, or unusable: the conversion then starts over).
 */
async function readResumePoint(dir, gguf, w, type) {
  if ((await fileSize(dir, resumeName(gguf))) < 4) return null;
  try {
    const bytes = await readBytes(dir, resumeName(gguf));
    const len = new DataView(bytes.buffer, bytes.byteOffset).getUint32(0, true);
    const p = JSON.parse(new TextDecoder().decode(bytes.subarray(4, 4 + len)));
    const state = bytes.slice(4 + len);
    const sameSource = p.source?.size === w.size && (p.source?.sha256 ?? null) === (w.sha256 ?? null) && p.source?.chunkSize === w.chunkSize;
    const atChunk = p.sourceBytes === w.size || (p.sourceBytes > 0 && p.sourceBytes % w.chunkSize === 0);
    if (p.version !== RESUME_VERSION || p.type !== type || !sameSource || !atChunk || !(p.outputBytes >= 0)) return null;
    // The output it counts must all be there (chunks before the last are whole).
    const last = Math.floor(p.outputBytes / w.chunkSize);
    for (let i = 0; i < last; i++) if ((await fileSize(dir, chunkName(gguf, i))) !== w.chunkSize) return null;
    if (p.outputBytes % w.chunkSize && (await fileSize(dir, chunkName(gguf, last))) < p.outputBytes % w.chunkSize) return null;
    const hash = w.sha256 ? resumeSha256(p.hash) : null; // throws if damaged
    // The converter's state is checked (Quantizer.resume throws if it is damaged) and must be
    // at the counts saved beside it.
    const q = wasm().Quantizer.resume(state);
    const at = { sourceBytes: q.sourceBytes, outputBytes: q.outputBytes, outputTotal: q.outputTotal };
    q.free();
    if (at.sourceBytes !== p.sourceBytes || at.outputBytes !== p.outputBytes) return null;
    return { state, sourceBytes: p.sourceBytes, outputBytes: p.outputBytes, outputTotal: at.outputTotal, hash };
  } catch (e) {
    console.warn(`gitcap: the saved resume point of ${gguf.name} is unusable (${errorMessage(e)}); converting from the start`);
    return null;
  }
}

/** The first `n` bytes of the GGUF as stored, chunk by chunk. */
async function* keptOutput(dir, gguf, n) {
  for (let i = 0, at = 0; at < n; i++) {
    const bytes = await readBytes(dir, chunkName(gguf, i));
    const take = Math.min(bytes.length, n - at);
    if (take <= 0) throw new CacheDamaged(`${chunkName(gguf, i)} is empty`);
    yield take === bytes.length ? bytes : bytes.subarray(0, take);
    at += take;
  }
}

/** Forgets a conversion in progress: its chunks and its resume point. */
const clearConversion = (dir, gguf) => removeByPrefix(dir, `${gguf.name}.`);

/**
 * The hook between the network and the store for the weights, the one place a store choice acts.
 * 'as-is': the source's chunks go to the loader and, when persisting, to the store as they arrive
 * (so an interrupted download resumes). 'q8_0'/'q4k': the download goes through store_q8.js's
 * converter; the loader gets the GGUF it writes, the store keeps that GGUF's chunks (and, after
 * each source chunk, a resume point: an interrupted conversion continues from the last one), and
 * `w` becomes that file in the manifest (later visits load it like any GGUF). Returns nothing;
 * `onChunk` sees every source chunk (the weights' type is read from the first).
 */
async function receiveWeights({ choice, conversion, src, w, dir, loader, progress, onRetry, smallFiles, onChunk }) {
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
  const { gguf, resume } = conversion;
  // The hash of a resumed download goes on from its saved state (the bytes before are not kept);
  // without a store nothing resumes, and the wasm hasher is faster.
  const hasher = !w.sha256 ? null : (dir && resume?.hash) || newSha256();
  // Opening cuts off what was written after the resume point.
  const out = dir ? await ChunkAppender.open(dir, (i) => chunkName(gguf, i), gguf.chunkSize, resume?.outputBytes ?? 0) : null;
  let summary;
  try {
    summary = await downloadConverted(wasm(), {
      type: choice,
      name: src.hub?.id ?? src.label,
      files: smallFiles,
      loader,
      resume: resume && { state: resume.state, kept: () => keptOutput(dir, gguf, resume.outputBytes) },
      onOutput: out && ((bytes) => out.append(bytes)),
      onResumePoint:
        out &&
        (async (p) => {
          await out.flush();
          const source = { size: w.size, sha256: w.sha256 ?? null, chunkSize: w.chunkSize };
          const fields = { type: choice, source, sourceBytes: p.sourceBytes, outputBytes: p.outputBytes, hash: hasher?.state?.() ?? null };
          await writeResumePoint(dir, gguf, fields, p.state);
        }),
      download: (push, from) =>
        streamFile({
          file: w,
          store: null,
          progress,
          hasher,
          from: Math.ceil(from / w.chunkSize), // a resume point is at a chunk's end, or the file's
          onRetry,
          sink: async (chunk) => {
            onChunk(chunk);
            await push(chunk);
            wasmBytes();
          },
        }),
    });
    await out?.close();
  } catch (e) {
    await out?.close().catch(() => {});
    // A source that turned out damaged leaves nothing to resume from.
    if (e?.code === 'damaged' && dir) await clearConversion(dir, gguf);
    throw e;
  }
  if (out && out.length !== summary.fileBytes) throw new Error(`the converted model's stored chunks hold ${out.length} bytes; the converter wrote ${summary.fileBytes}`);
  Object.assign(w, { name: gguf.name, kind: 'gguf', chunkSize: gguf.chunkSize, sha256: undefined, url: undefined, size: summary.fileBytes });
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
  const root = persist ? await storeRoot(true) : null;
  const store = await resolveStore(src, req.store, root);
  const key = storeKey(src, store);
  emit('event', { type: 'source', label: src.label, key, base: src.base, hub: src.hub ?? null, store });

  const dirName = keyDirName(key, sha256Hex);
  const dir = root ? await root.getDirectoryHandle(dirName, { create: true }) : null;
  let manifest = dir ? await readJson(dir, MANIFEST) : null;
  const fromCache = !!manifest?.complete;
  const converting = store !== 'as-is' && !fromCache;
  const gguf = { name: `model.${store}.gguf` };

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
        if (same(p, files.find((f) => f.name === name))) continue;
        await clearFileChunks(dir, p);
        if (p.weights && converting) await clearConversion(dir, gguf); // converted from another file
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
  const w = files.find((x) => x.weights);
  gguf.chunkSize = w.chunkSize;
  // What is read (downloaded, or loaded from storage): the progress bar's total.
  const total = files.reduce((s, f) => s + (f.size ?? 0), 0);
  const progress = new Progress(total, (p) => emit('progress', p));
  progress.phase = fromCache ? 'load' : 'download';
  const onRetry = (event) => emit('event', event);
  const loader = new gitcap.ModelLoader();
  let finished = false;
  let needed = null;
  try {
    // The small files first (a converting store needs them to know how large its file will be),
    // into memory: nothing new is stored before the quota check.
    const small = files.filter((x) => !x.weights);
    const smallFiles = new Map(); // by name: a converting store embeds them in its GGUF
    for (const f of small) {
      const bytes = await fetchSmall({ file: f, store: fromCache || f.stored ? dir : null, progress, sha256Hex, onRetry });
      smallFiles.set(f.name, bytes);
      loader.addFile(f.name, bytes);
    }
    const smallBytes = [...smallFiles.values()].reduce((s, b) => s + b.length, 0);

    // A conversion continues from its resume point, if one was saved.
    const resume = converting && dir ? await readResumePoint(dir, gguf, w, store) : null;
    if (converting && dir && !resume) await clearConversion(dir, gguf);
    // What will be kept: the weights as stored (a converting store: the GGUF's size, from the
    // source's header before anything else is fetched) and the small files.
    let stored = total;
    let have = 0; // bytes already stored
    let haveWeights = 0; // of which the weights' (the source's chunks, or the converted output)
    if (!fromCache && dir) {
      if (converting) {
        let outputTotal = resume?.outputTotal; // unknown if it was saved before the source header was in
        if (resume) haveWeights = resume.outputBytes;
        outputTotal ??= await convertedSize(gitcap, {
          type: store,
          name: src.hub?.id ?? src.label,
          files: smallFiles,
          sourceSize: w.size,
          read: (start, end) => fetchBytes(w, start, end, onRetry),
        });
        stored = smallBytes + outputTotal;
      } else {
        for (let i = 0, n = Math.ceil(w.size / w.chunkSize); i < n; i++) {
          const s = await fileSize(dir, chunkName(w, i));
          if (s > 0) haveWeights += s;
        }
        stored = smallBytes + w.size;
      }
      // Quota: the part not yet stored must fit.
      have = haveWeights;
      for (const f of small) if (f.stored) have += smallFiles.get(f.name).length;
      needed = stored - have;
      const estimate = await storageEstimate();
      if (estimate && needed > estimate.quota - estimate.usage) {
        await root.removeEntry(dirName, { recursive: true }).catch(() => {});
        throw quotaError(needed, estimate.quota - estimate.usage);
      }
      for (const f of small) {
        if (f.stored) continue;
        await writeFile(dir, f.name, smallFiles.get(f.name));
        f.stored = true;
      }
      manifest = { key, source: src.key, store, label: src.label, base: src.base, total: stored, complete: false, files, created: Date.now() };
      await writeJson(dir, MANIFEST, manifest);
      // The source's bytes already there (stored, or converted before), for the progress.
      const already = resume ? resume.sourceBytes : haveWeights;
      if (already < w.size) emit('event', { type: 'download-start', total, have: smallBytes + already });
    }
    emit('event', { type: 'plan', label: src.label, total, stored: dir ? stored : null, store, fromCache, persist: !!dir, files: files.map((f) => ({ name: f.name, size: f.size })) });

    if (resume) progress.add(resume.sourceBytes, false); // converted before: not fetched again
    const type = new WeightsType(w.kind);
    await receiveWeights({ choice: store, conversion: { gguf, resume }, src, w, dir, loader, progress, onRetry, smallFiles, onChunk: (c) => type.push(c) });
    progress.emit(true);
    if (gen !== loadGen) throw new Error('superseded by another load');
    emit('progress', { phase: 'finish', file: w.name, loadedBytes: total, totalBytes: total, networkBytes: progress.net, rate: 0 });
    finished = true; // finish() consumes the loader, whether or not it succeeds
    const m = loader.finish();
    const storedBytes = dir ? files.reduce((s, f) => s + (f.size ?? 0), 0) : 0;
    if (dir && !fromCache) {
      w.stored = true;
      manifest = { ...manifest, total: storedBytes, files: files.map((f) => ({ ...f, complete: undefined })), complete: true };
      await writeJson(dir, MANIFEST, manifest);
      if (converting) await removeEntry(dir, resumeName(gguf)); // only now: until then it may be needed
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
      storedBytes,
      wasmBytes: wasmBytes(),
      peakWasmBytes: peakBytes(),
    };
    return { model: m, info };
  } catch (e) {
    if (e?.code === 'quota' && e.available === null) {
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
  // A Blob takes no resizable buffer (gitcap.js sends resizable ones): slice gives a fixed one.
  const blob = new Blob([bytes.resizable ? bytes.slice(0) : bytes], mime ? { type: mime } : {});
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
  // gitcap has its own copy now: a resizable buffer (gitcap.js's copyBuffer) gives its pages back
  // at once instead of at the worker's next full collection.
  for (const b of [input.bytes, ...(input.frames || [])]) if (b?.resizable) b.resize(0);
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
            int8PairedProducts: build.int8PairedProducts,
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
