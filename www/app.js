// The page: choose an image (picker, drag and drop, paste), watch its caption appear word by
// word, copy it as alt text. The model lives in a module worker (worker.js); this module only
// talks to it. Images are read into memory and handed to the worker; nothing is uploaded.
//
// Query parameters: ?model=<folder url | .gguf url | hf:owner/name[@rev]>, ?max_new_tokens=N,
// ?beams=N, ?length_penalty=X, ?prompt=TEXT, ?chunk_kib=N (download chunk size, for tests),
// ?nosave=1 (do not store the model), ?nosw=1 (no service worker), ?threads=N (at most N threads;
// 1 forces the single-threaded build), ?split_min=N (threaded: split products from N multiply-adds;
// a tuning knob, 0 in the tests so that the tiny model splits), ?split_rows=N (threaded: split
// products of N or more rows, default 8, so decoding's are not), ?kernel_min=N (products of N or more
// rows use the model's own blocked SIMD kernel, default 8; a huge N compares the encoder against
// candle's matmul), ?int8_min=N (q8_0 products of N or more rows use the integer kernel, default
// 8), ?relaxed=0 (never the relaxed SIMD builds: what engines without relaxed SIMD run).

import { MODELS, DEFAULT_MODEL, parseModelParam, formatBytes } from './models.js';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);

// A tiny module using i8x16.popcnt: validates only where WebAssembly SIMD is supported.
const SIMD_PROBE = new Uint8Array([
  0, 97, 115, 109, 1, 0, 0, 0, 1, 5, 1, 96, 0, 1, 123, 3, 2, 1, 0, 10, 10, 1, 8, 0, 65, 0, 253, 15, 253, 98, 11,
]);

// A module with one shared memory: validates only where WebAssembly threads are supported.
const SHARED_MEMORY_PROBE = new Uint8Array([0, 97, 115, 109, 1, 0, 0, 0, 5, 4, 1, 3, 1, 1]);
// More threads than this stop paying: the products become memory-bound and each thread is a
// worker holding its own instance of the module.
const MAX_THREADS = 16;

/**
 * How many threads the captioner may use, and if only one, why. The threaded build needs shared
 * memory, which browsers grant only to cross-origin isolated pages (served with COOP/COEP).
 */
function threadPlan() {
  const cores = Math.max(1, navigator.hardwareConcurrency || 1);
  const asked = Number.parseInt(params.get('threads') || '', 10);
  if (asked === 1) return { threads: 1, why: 'one thread requested (?threads=1)' };
  if (!globalThis.crossOriginIsolated) {
    return {
      threads: 1,
      why: 'the page is not cross-origin isolated (its server sends no COOP/COEP headers)',
    };
  }
  if (typeof SharedArrayBuffer !== 'function' || !WebAssembly.validate(SHARED_MEMORY_PROBE)) {
    return { threads: 1, why: 'this browser does not support WebAssembly threads' };
  }
  const threads = Math.min(asked > 0 ? asked : cores, MAX_THREADS);
  return { threads, why: threads === 1 ? 'the browser reports one core' : null };
}
const plan = threadPlan();

const el = {
  fatal: $('fatal'),
  modelSelect: $('model-select'),
  modelStatus: $('model-status'),
  progressWrap: $('progress-wrap'),
  progress: $('progress'),
  progressText: $('progress-text'),
  quotaActions: $('quota-actions'),
  loadNoSave: $('load-nosave'),
  retryActions: $('retry-actions'),
  retryLoad: $('retry-load'),
  drop: $('drop'),
  file: $('file'),
  stage: $('stage'),
  preview: $('preview'),
  imageName: $('image-name'),
  caption: $('caption'),
  captionStatus: $('caption-status'),
  cancel: $('cancel'),
  alt: $('alt'),
  altNote: $('alt-note'),
  copy: $('copy'),
  useCaption: $('use-caption'),
  copyStatus: $('copy-status'),
  queueNote: $('queue-note'),
  beams: $('beams'),
  maxTokens: $('max-tokens'),
  lengthPenalty: $('length-penalty'),
  prompt: $('prompt'),
  historyCard: $('history-card'),
  history: $('history'),
  announce: $('announce'),
  backend: $('backend'),
  storageText: $('storage-text'),
  clearCache: $('clear-cache'),
};

let worker = null;
let modelFrames = 1;
let modelReady = false;
let wasmFailed = false;
let nextId = 1;
const items = new Map(); // id -> item
let stageItem = null;

// ---------------------------------------------------------------------------------------------
// Options (query parameters preset them)

function presetOptions() {
  const int = (k) => (params.has(k) && /^\d+$/.test(params.get(k)) ? params.get(k) : null);
  if (int('beams')) {
    const b = int('beams');
    if (![...el.beams.options].some((o) => o.value === b)) el.beams.add(new Option(`${b} beams`, b));
    el.beams.value = b;
  }
  if (int('max_new_tokens')) el.maxTokens.value = int('max_new_tokens');
  if (params.has('length_penalty') && isFinite(Number(params.get('length_penalty')))) {
    el.lengthPenalty.value = params.get('length_penalty');
  }
  if (params.has('prompt')) el.prompt.value = params.get('prompt');
  $('options-form').addEventListener('submit', (e) => e.preventDefault());
}

function currentOptions() {
  return {
    max_new_tokens: Math.max(1, Math.min(512, parseInt(el.maxTokens.value, 10) || 20)),
    beams: parseInt(el.beams.value, 10) || 1,
    length_penalty: Number(el.lengthPenalty.value) || 1.0,
    prompt: el.prompt.value.trim() || undefined,
  };
}

// ---------------------------------------------------------------------------------------------
// Model status

function setModelState(state, text) {
  el.modelStatus.dataset.state = state;
  el.modelStatus.textContent = text;
}

function showFatal(msg) {
  el.fatal.textContent = msg;
  el.fatal.hidden = false;
}

function fmtDuration(s) {
  if (!isFinite(s) || s <= 0) return '';
  if (s < 60) return `${Math.ceil(s)} s`;
  if (s < 3600) return `${Math.round(s / 60)} min`;
  return `${(s / 3600).toFixed(1)} h`;
}

function populateModelSelect() {
  const current = params.get('model');
  let source;
  try {
    source = parseModelParam(current, location.href);
  } catch {
    source = null;
  }
  for (const m of MODELS) {
    const opt = new Option(`${m.label} — ${m.note}`, `hf:${m.id}@${m.revision}`);
    el.modelSelect.add(opt);
  }
  if (source && (!source.hub || !MODELS.some((m) => m.id === source.hub.id && m.revision === source.hub.revision))) {
    const opt = new Option(`${source.label} (${current})`, current);
    el.modelSelect.add(opt);
  }
  el.modelSelect.value = current
    ? source?.hub && MODELS.some((m) => m.id === source.hub.id && m.revision === source.hub.revision)
      ? `hf:${source.hub.id}@${source.hub.revision}`
      : current
    : `hf:${DEFAULT_MODEL.id}@${DEFAULT_MODEL.revision}`;
  el.modelSelect.addEventListener('change', () => {
    const p = new URLSearchParams(location.search);
    const v = el.modelSelect.value;
    if (v === `hf:${DEFAULT_MODEL.id}@${DEFAULT_MODEL.revision}`) p.delete('model');
    else p.set('model', v);
    location.search = p.toString();
  });
}

function startLoad(persist) {
  el.quotaActions.hidden = true;
  el.retryActions.hidden = true;
  modelReady = false;
  setModelState('loading', 'Preparing the model…');
  const kib = parseInt(params.get('chunk_kib') || '', 10);
  worker.postMessage({
    type: 'load',
    model: params.get('model'),
    chunkBytes: kib > 0 ? kib * 1024 : 0,
    persist,
    pageUrl: location.href,
  });
}

let sourceLabel = '';
let persisting = true;
const downloadText = (total) =>
  `Downloading ${sourceLabel} (${formatBytes(total)})` +
  (persisting ? ' — it is stored in this browser, so this happens once.' : ' — not stored: it is downloaded again next time.');
const progressLog = []; // every progress report, for tests and the benchmark
function onProgress(m) {
  progressLog.push({ phase: m.phase, done: m.done, total: m.total, network: m.network, rate: m.rate, t: performance.now() });
  el.progressWrap.hidden = false;
  const frac = m.total ? m.done / m.total : 0;
  el.progress.value = frac;
  el.progress.dataset.done = m.done;
  el.progress.dataset.total = m.total;
  // The status line (a live region) changes only with the phase; the numbers go beside the bar.
  const pct = `${Math.floor(frac * 100)}%`;
  if (m.phase === 'download') {
    setPhase('downloading', downloadText(m.total));
    const rate = m.rate > 0 ? ` · ${formatBytes(m.rate)}/s` : '';
    const eta = m.rate > 0 ? fmtDuration((m.total - m.done) / m.rate) : '';
    el.progressText.textContent = `${pct} · ${formatBytes(m.done)} of ${formatBytes(m.total)}${rate}${eta ? ` · about ${eta} left` : ''}`;
  } else if (m.phase === 'load') {
    setPhase('loading', `Loading ${sourceLabel} from this device…`);
    el.progressText.textContent = `${pct} · ${formatBytes(m.done)} of ${formatBytes(m.total)}`;
  } else {
    setPhase('loading', `Preparing ${sourceLabel}…`);
    el.progressText.textContent = '';
  }
}

function setPhase(state, text) {
  if (el.modelStatus.dataset.state !== state || el.modelStatus.textContent !== text) setModelState(state, text);
}

// ---------------------------------------------------------------------------------------------
// Worker messages

function onWorkerMessage(e) {
  const m = e.data;
  switch (m.type) {
    case 'wasm-ready': {
      const b = m.build || {};
      const threads = Number(b.threads) || 1;
      const why = m.threadNote || (threads === 1 ? plan.why : null);
      el.backend.textContent =
        `Backend: WebAssembly${b.simd ? ' SIMD128' : ''}${b.relaxed ? ' + relaxed SIMD' : ''}` +
        `${b.int8 ? ` (q8_0: ${b.int8})` : ''} (candle, CPU) · ${threads} thread${threads === 1 ? '' : 's'}` +
        (why ? ` (single-threaded: ${why})` : '') +
        (crossOriginIsolated ? ' · cross-origin isolated' : why ? '' : ' · not cross-origin isolated') +
        (b.version ? ` · gitcap ${b.version}` : '');
      el.backend.dataset.threads = threads;
      el.backend.dataset.threaded = b.threaded ? 'true' : 'false';
      el.backend.dataset.simd = b.simd ? 'true' : 'false';
      break;
    }
    case 'wasm-error':
      wasmFailed = true;
      showFatal(m.message);
      setModelState('error', 'The captioner could not start.');
      el.modelStatus.dataset.error = m.message;
      break;
    case 'source':
      sourceLabel = m.label;
      break;
    case 'plan':
      persisting = m.persist;
      if (m.fromCache) setPhase('loading', `Loading ${sourceLabel} from this device…`);
      else setPhase('downloading', downloadText(m.total));
      el.modelStatus.dataset.total = m.total;
      break;
    case 'download-start':
      // Ask the browser to keep the model even under storage pressure.
      navigator.storage?.persist?.().catch(() => {});
      break;
    case 'progress':
      onProgress(m);
      break;
    case 'retry':
      el.progressText.textContent = `Connection interrupted (${m.message}); resuming…`;
      break;
    case 'loaded': {
      modelReady = true;
      modelFrames = m.frames || 1;
      el.progressWrap.hidden = true;
      const info = m.info || {};
      const secs = (m.loadMs / 1000).toFixed(1);
      setModelState(
        'ready',
        `Ready: ${m.label}${info.image_size ? ` · ${info.image_size}×${info.image_size} input` : ''}` +
          `${info.quantized ? ' · quantized' : ''} · loaded in ${secs} s ${m.fromCache ? 'from this device' : 'after downloading'}` +
          (m.persisted ? '' : ' (not stored: it will be downloaded again next time)')
      );
      Object.assign(el.modelStatus.dataset, {
        loadMs: Math.round(m.loadMs),
        fromCache: m.fromCache,
        networkBytes: m.networkBytes,
        wasmBytes: m.wasmBytes,
      });
      if (modelFrames > 1) el.file.accept = 'image/*,video/*';
      refreshCache();
      break;
    }
    case 'load-error':
      el.progressWrap.hidden = true;
      el.modelStatus.dataset.error = m.message;
      if (wasmFailed) {
        setModelState('error', 'The captioner could not start (see above).');
        break;
      }
      setModelState('error', `The model could not be loaded: ${m.message}`);
      if (m.code === 'quota') el.quotaActions.hidden = false;
      else el.retryActions.hidden = false;
      refreshCache();
      break;
    case 'cache-info':
      showCache(m);
      break;
    case 'cache-error':
      el.storageText.textContent = m.message;
      break;
    case 'caption-start':
      onCaptionStart(m.id);
      break;
    case 'encoded': {
      const it = items.get(m.id);
      if (it === stageItem) {
        el.captionStatus.textContent = 'Writing the caption…';
        el.caption.dataset.encodeMs = Math.round(m.encodeMs);
      }
      break;
    }
    case 'token': {
      const it = items.get(m.id);
      if (!it) break;
      it.text += m.text;
      it.fragments++;
      if (it === stageItem) {
        el.caption.append(document.createTextNode(m.text));
        el.caption.dataset.fragments = it.fragments;
      }
      break;
    }
    case 'done':
      onCaptionDone(m);
      break;
    case 'cancelled':
      onCaptionEnd(m.id, 'cancelled', 'Stopped.');
      break;
    case 'caption-error':
      onCaptionEnd(m.id, 'error', m.message);
      break;
  }
}

// ---------------------------------------------------------------------------------------------
// Images and captions

function isActive(it) {
  return it && (it.status === 'queued' || it.status === 'running');
}

function anyActive() {
  for (const it of items.values()) if (isActive(it)) return true;
  return false;
}

function updateQueueNote() {
  const queued = [...items.values()].filter((it) => it.status === 'queued' && it !== stageItem).length;
  el.queueNote.hidden = queued === 0;
  el.queueNote.textContent = queued ? `${queued} more image${queued === 1 ? '' : 's'} waiting.` : '';
}

/** Puts an item on the stage, moving the previous one to the history list. */
function showOnStage(it) {
  if (stageItem && stageItem !== it) archive(stageItem);
  stageItem = it;
  el.stage.hidden = false;
  el.stage.classList.toggle('no-image', !it.url);
  if (it.url) el.preview.src = it.url;
  else el.preview.removeAttribute('src');
  el.preview.alt = it.alt || '';
  el.imageName.textContent = it.name;
  el.caption.removeAttribute('data-done');
  el.caption.removeAttribute('data-error');
  el.caption.removeAttribute('data-cancelled');
  for (const k of Object.keys(el.caption.dataset)) delete el.caption.dataset[k];
  el.caption.textContent = it.text;
  el.caption.classList.toggle('error', it.status === 'error');
  el.caption.setAttribute('aria-busy', isActive(it) ? 'true' : 'false');
  el.alt.value = it.alt || '';
  el.altNote.hidden = true;
  el.useCaption.hidden = true;
  el.copy.disabled = !el.alt.value;
  el.copyStatus.textContent = '';
  el.cancel.hidden = !isActive(it);
  el.captionStatus.textContent =
    it.status === 'queued' ? (modelReady ? 'Waiting…' : 'Waiting for the model to load…') : '';
  updateQueueNote();
}

function archive(it) {
  if (it.archived || !it.url) return;
  it.archived = true;
  const li = document.createElement('li');
  const img = document.createElement('img');
  img.src = it.url;
  img.alt = it.alt || it.caption || '';
  img.width = 96;
  img.height = 96;
  const body = document.createElement('div');
  const p = document.createElement('p');
  p.className = it.status === 'error' ? 'error' : '';
  p.textContent = it.status === 'done' ? it.alt || it.caption : it.status === 'error' ? it.error : it.text ? `${it.text} (stopped)` : 'Stopped';
  const name = document.createElement('p');
  name.className = 'small muted';
  name.textContent = it.name;
  body.append(p, name);
  li.append(img, body);
  if (it.status === 'done') {
    const b = document.createElement('button');
    b.type = 'button';
    b.textContent = 'Copy';
    b.setAttribute('aria-label', `Copy alt text for ${it.name}`);
    b.addEventListener('click', () => copyText(it.alt || it.caption, b));
    li.append(b);
  }
  el.history.prepend(li);
  while (el.history.children.length > 30) el.history.lastElementChild.remove();
  el.historyCard.hidden = false;
}

function newItem(name, url) {
  const it = {
    id: nextId++,
    name,
    url,
    status: 'queued',
    text: '',
    fragments: 0,
    alt: '',
    altEdited: false,
    caption: null,
    error: null,
  };
  items.set(it.id, it);
  return it;
}

/** Creates an item for an image about to be captioned; shown at once when nothing else runs. */
function addItem(name, url) {
  const it = newItem(name, url);
  if (!anyActiveExcept(it)) showOnStage(it);
  updateQueueNote();
  return it;
}

/** Hands an item's bytes (or frames) to the worker. */
function send(it, bytes, mime) {
  const msg = { type: 'caption', id: it.id, mime, options: currentOptions() };
  if (Array.isArray(bytes)) {
    msg.frames = bytes;
    worker.postMessage(msg, bytes);
  } else {
    msg.bytes = bytes;
    worker.postMessage(msg, [bytes]);
  }
}

/** Sends bytes to the worker for captioning; returns the item id. Synchronous (a test hook). */
function captionBytes(bytes, name = 'image', mime = '') {
  const it = addItem(name, URL.createObjectURL(new Blob([bytes], mime ? { type: mime } : {})));
  send(it, bytes, mime);
  return it.id;
}

function anyActiveExcept(x) {
  for (const it of items.values()) if (it !== x && isActive(it)) return true;
  return false;
}

function failItem(name, message) {
  // A file that cannot be captioned at all: shown on the stage when nothing else is running.
  const it = newItem(name, null);
  it.status = 'error';
  it.error = message;
  if (!anyActiveExcept(it)) {
    showOnStage(it);
    setCaptionError(message);
  } else {
    el.queueNote.hidden = false;
    el.queueNote.textContent = message;
  }
}

function setCaptionError(message) {
  el.caption.textContent = message;
  el.caption.classList.add('error');
  el.caption.dataset.error = message;
  el.caption.setAttribute('aria-busy', 'false');
  el.captionStatus.textContent = '';
  el.cancel.hidden = true;
  el.announce.textContent = `Error: ${message}`;
}

async function handleFiles(fileList) {
  const files = [...fileList];
  if (!files.length) return;
  // Synchronous part first: non-images are refused at once (and tests rely on #caption
  // changing in the same task as the file choice).
  const accepted = [];
  for (const f of files) {
    const video = f.type.startsWith('video/');
    if (f.type && !f.type.startsWith('image/') && !(video && modelFrames > 1)) {
      failItem(f.name, `“${f.name}” is not an image (${f.type}). Choose a JPEG, PNG, GIF, WebP or BMP photo.`);
      continue;
    }
    if (f.size > 256 * 1024 * 1024) {
      failItem(f.name, `“${f.name}” is ${formatBytes(f.size)}; images up to 256 MB can be captioned.`);
      continue;
    }
    accepted.push(f);
  }
  if (!worker) return;
  // Items (and the stage) first, in this task; then the bytes, in order.
  const pending = accepted.map((f) => [f, addItem(f.name, URL.createObjectURL(f))]);
  for (const [f, it] of pending) {
    try {
      let bytes;
      if (modelFrames > 1) {
        bytes = f.type.startsWith('video/') ? await videoFrames(f, modelFrames) : await repeatFrames(f, modelFrames);
      } else {
        bytes = await f.arrayBuffer();
      }
      send(it, bytes, f.type);
    } catch (e) {
      onCaptionEnd(it.id, 'error', `Could not read “${f.name}”: ${e.message || e}`);
    }
  }
}

/** N frames spread evenly over a clip, as PNG bytes (for video checkpoints). */
async function videoFrames(file, n) {
  const url = URL.createObjectURL(file);
  const v = document.createElement('video');
  v.muted = true;
  v.preload = 'auto';
  v.src = url;
  await new Promise((res, rej) => {
    v.onloadeddata = res;
    v.onerror = () => rej(new Error('the browser cannot play this video'));
  });
  const canvas = document.createElement('canvas');
  canvas.width = v.videoWidth;
  canvas.height = v.videoHeight;
  const ctx = canvas.getContext('2d');
  const out = [];
  for (let i = 0; i < n; i++) {
    v.currentTime = ((i + 0.5) * v.duration) / n;
    await new Promise((res) => (v.onseeked = res));
    ctx.drawImage(v, 0, 0);
    const blob = await new Promise((res) => canvas.toBlob(res, 'image/png'));
    out.push(await blob.arrayBuffer());
  }
  URL.revokeObjectURL(url);
  return out;
}

async function repeatFrames(file, n) {
  const bytes = await file.arrayBuffer();
  return Array.from({ length: n }, () => bytes.slice(0));
}

function onCaptionStart(id) {
  const it = items.get(id);
  if (!it) return;
  it.status = 'running';
  if (it !== stageItem) showOnStage(it);
  el.caption.setAttribute('aria-busy', 'true');
  el.cancel.hidden = false;
  el.captionStatus.textContent = modelReady ? 'Looking at the image…' : 'Waiting for the model to load…';
  updateQueueNote();
}

function onCaptionDone(m) {
  const it = items.get(m.id);
  if (!it) return;
  it.status = 'done';
  it.caption = m.caption;
  if (!it.altEdited) it.alt = m.caption;
  if (it !== stageItem) return;
  el.caption.textContent = m.caption;
  const t = m.timings || {};
  Object.assign(el.caption.dataset, {
    tokens: t.steps,
    tokenIds: (m.tokenIds || []).join(','),
    encodeMs: Math.round(t.encodeMs),
    firstTokenMs: t.firstTextMs == null ? '' : Math.round(t.firstTextMs),
    decodeMs: Math.round(t.decodeMs),
    perTokenMs: (t.perTokenMs || 0).toFixed(1),
    totalMs: Math.round(t.totalMs),
    wasmBytes: t.wasmBytes,
    peakWasmBytes: t.peakWasmBytes,
    splits: t.splits,
    int8Products: t.int8Products,
  });
  el.caption.setAttribute('aria-busy', 'false');
  el.caption.dataset.done = '';
  el.cancel.hidden = true;
  el.captionStatus.textContent = `Done in ${(t.totalMs / 1000).toFixed(1)} s.`;
  if (it.altEdited) {
    el.altNote.hidden = false;
    el.altNote.textContent = 'Your alt text was kept.';
    el.useCaption.hidden = m.caption === el.alt.value;
  } else {
    el.alt.value = m.caption;
  }
  el.preview.alt = it.alt;
  el.copy.disabled = !el.alt.value;
  el.announce.textContent = m.caption ? `Caption: ${m.caption}` : 'The model wrote an empty caption.';
  updateQueueNote();
}

function onCaptionEnd(id, status, message) {
  const it = items.get(id);
  if (!it) return;
  it.status = status;
  if (status === 'error') it.error = message;
  if (it === stageItem) {
    if (status === 'error') {
      setCaptionError(message);
    } else {
      el.caption.dataset.cancelled = '';
      el.caption.dataset.tokens = it.fragments;
      el.caption.setAttribute('aria-busy', 'false');
      el.cancel.hidden = true;
      el.captionStatus.textContent = message;
      el.announce.textContent = 'Caption stopped.';
    }
  }
  updateQueueNote();
}

function cancel(id) {
  if (!worker) return;
  const target = id ?? (isActive(stageItem) ? stageItem.id : null);
  if (target == null) return;
  worker.postMessage({ type: 'cancel', id: target });
}

// ---------------------------------------------------------------------------------------------
// Alt text and copying

async function copyText(text, button) {
  let ok = false;
  try {
    await navigator.clipboard.writeText(text);
    ok = true;
  } catch {
    const ta = document.createElement('textarea');
    ta.value = text;
    ta.setAttribute('readonly', '');
    ta.style.position = 'fixed';
    ta.style.opacity = '0';
    document.body.append(ta);
    ta.select();
    try {
      ok = document.execCommand('copy');
    } catch {}
    ta.remove();
    button?.focus();
  }
  el.copyStatus.textContent = ok ? 'Copied.' : 'Could not copy; select the text and copy it yourself.';
}

function wireAltText() {
  el.alt.addEventListener('input', () => {
    if (!stageItem) return;
    stageItem.alt = el.alt.value;
    // Text a person typed is theirs: a caption finishing later never replaces it.
    stageItem.altEdited = el.alt.value.trim() !== '' && el.alt.value !== stageItem.caption;
    el.preview.alt = el.alt.value;
    el.copy.disabled = !el.alt.value;
  });
  el.copy.addEventListener('click', () => copyText(el.alt.value, el.copy));
  el.useCaption.addEventListener('click', () => {
    if (!stageItem?.caption) return;
    el.alt.value = stageItem.caption;
    stageItem.alt = stageItem.caption;
    stageItem.altEdited = false;
    el.useCaption.hidden = true;
    el.altNote.hidden = true;
    el.copy.disabled = false;
    el.alt.focus();
  });
}

// ---------------------------------------------------------------------------------------------
// Input: picker, drag and drop, paste, keyboard

function wireInput() {
  el.file.addEventListener('change', () => {
    handleFiles(el.file.files);
    el.file.value = '';
  });
  let depth = 0;
  document.addEventListener('dragenter', (e) => {
    if (![...(e.dataTransfer?.types || [])].includes('Files')) return;
    depth++;
    document.body.classList.add('dragging');
  });
  document.addEventListener('dragleave', () => {
    depth = Math.max(0, depth - 1);
    if (!depth) document.body.classList.remove('dragging');
  });
  document.addEventListener('dragover', (e) => {
    if ([...(e.dataTransfer?.types || [])].includes('Files')) e.preventDefault();
  });
  document.addEventListener('drop', (e) => {
    depth = 0;
    document.body.classList.remove('dragging');
    if (!e.dataTransfer?.files?.length) return;
    e.preventDefault();
    handleFiles(e.dataTransfer.files);
  });
  document.addEventListener('paste', (e) => {
    const files = [...(e.clipboardData?.files || [])];
    if (!files.length) return; // plain text pastes into fields as usual
    e.preventDefault();
    handleFiles(files);
  });
  document.addEventListener('keydown', (e) => {
    if (e.key === 'Escape' && isActive(stageItem)) {
      e.preventDefault();
      cancel();
    }
  });
  el.cancel.addEventListener('click', () => cancel());
}

// ---------------------------------------------------------------------------------------------
// Storage

function refreshCache() {
  worker?.postMessage({ type: 'cache-info' });
}

function showCache(m) {
  if (!m.available) {
    el.storageText.textContent = 'This browser cannot store models for this page; they are downloaded on each visit.';
    el.clearCache.hidden = true;
    return;
  }
  const bytes = m.entries.reduce((s, x) => s + x.bytes, 0);
  const names = m.entries.map((x) => `${x.label}${x.complete ? '' : ' (partial)'}`).join(', ');
  el.storageText.textContent = m.entries.length
    ? `Stored models: ${names} — ${formatBytes(bytes)}` + (m.quota ? ` (this site may use up to ${formatBytes(m.quota)}).` : '.')
    : 'No models stored in this browser.';
  el.storageText.dataset.bytes = bytes;
  el.clearCache.hidden = m.entries.length === 0;
}

function wireStorage() {
  el.clearCache.addEventListener('click', () => {
    if (!confirm('Delete the stored models? They will be downloaded again when needed.')) return;
    worker.postMessage({ type: 'clear-cache' });
  });
  el.loadNoSave.addEventListener('click', () => startLoad(false));
  el.retryLoad.addEventListener('click', () => startLoad(params.get('nosave') !== '1'));
}

// ---------------------------------------------------------------------------------------------
// Offline: a service worker keeps the page itself for visits without network.

async function registerServiceWorker() {
  if (!('serviceWorker' in navigator) || params.get('nosw') === '1') return;
  try {
    await navigator.serviceWorker.register('sw.js');
    await navigator.serviceWorker.ready;
    const mark = () => {
      if (navigator.serviceWorker.controller) document.documentElement.dataset.offlineReady = '';
    };
    mark();
    navigator.serviceWorker.addEventListener('controllerchange', mark);
  } catch {
    // The page works without it; it just needs the network next time.
  }
}

// ---------------------------------------------------------------------------------------------

function main() {
  presetOptions();
  wireAltText();
  wireInput();
  wireStorage();
  populateModelSelect();
  window.gitcap = { captionBytes, cancel, items, progressLog, get worker() { return worker; } };

  if (typeof WebAssembly !== 'object' || !WebAssembly.validate) {
    showFatal('This browser cannot run WebAssembly, which the captioner needs. Try a current Chrome, Edge, Firefox or Safari.');
    setModelState('error', 'WebAssembly is not available.');
    el.modelStatus.dataset.error = 'no WebAssembly';
    return;
  }
  if (!WebAssembly.validate(SIMD_PROBE)) {
    showFatal(
      'This browser does not support WebAssembly SIMD, which the captioner needs. ' +
        'Chrome 91+, Edge 91+, Firefox 89+ and Safari 16.4+ do; please update your browser.'
    );
    setModelState('error', 'WebAssembly SIMD is not available.');
    el.modelStatus.dataset.error = 'no WebAssembly SIMD';
    return;
  }
  try {
    parseModelParam(params.get('model'), location.href);
  } catch (e) {
    showFatal(e.message);
    setModelState('error', e.message);
    el.modelStatus.dataset.error = e.message;
    return;
  }
  const workerUrl = new URL('./worker.js', import.meta.url);
  workerUrl.searchParams.set('threads', String(plan.threads));
  for (const knob of ['split_min', 'split_rows', 'kernel_min', 'int8_min', 'relaxed']) {
    if (params.has(knob)) workerUrl.searchParams.set(knob, params.get(knob));
  }
  worker = new Worker(workerUrl, { type: 'module', name: 'gitcap-model' });
  worker.onmessage = onWorkerMessage;
  worker.onerror = (e) => {
    showFatal(`The captioner stopped: ${e.message || 'worker error'}`);
    setModelState('error', 'The captioner stopped.');
  };
  startLoad(params.get('nosave') !== '1' && !!navigator.storage?.getDirectory);
  refreshCache();
  registerServiceWorker();
}

main();
