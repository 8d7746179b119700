// The demo page: choose a model, then images (picker, folder, drag and drop, paste); watch each
// caption appear word by word, edit it as alt text, copy it or export them all. Everything runs
// through the embeddable module (gitcap.js), like any other site using it: the model lives in its
// worker; this file is only the interface. Images are read into memory and handed to the module;
// nothing is uploaded.
//
// Query parameters: ?model=<folder url | .gguf url | hf:owner/name[@rev]>, ?max_new_tokens=N,
// ?beams=N, ?length_penalty=X, ?prompt=TEXT, ?chunk_kib=N (download chunk size, for tests),
// ?store=q8_0|q4k|as-is (how the weights are kept; the module's default without it), ?nosave=1 (do not store the model), ?nosw=1 (no service worker), ?threads=N (at most N threads;
// 1 forces the single-threaded build), ?split_min=N (threaded: split products from N multiply-adds;
// a tuning knob, 0 in the tests so that the tiny model splits), ?split_rows=N (threaded: split
// products of N or more rows; default 8, so decoding's are not, but 1 for q8_0 ones), ?kernel_min=N (products of N or more
// rows use the model's own blocked SIMD kernel, default 8; a huge N compares the encoder against
// candle's matmul), ?int8_min=N (q8_0 products of N or more rows use the integer kernel, default
// 1: all of them), ?relaxed=0 (never the relaxed SIMD builds: what engines without relaxed SIMD run).
//
// When a download starts: a model already stored loads by itself; a ?model= on this site's own
// origin (or a link from this site) starts at once; anything else waits for a click, so that a
// link from elsewhere cannot start a large download.

import {
  Captioner, MODELS, DEFAULT_MODEL, parseModelParam, formatBytes, support, threadSupport, storedModels, clearStoredModels,
} from './gitcap.js';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);

/** How many threads to ask for, and if only one, why (the module's answer, and ?threads=). */
function threadPlan() {
  const asked = Number.parseInt(params.get('threads') || '', 10);
  if (asked === 1) return { threads: 1, why: 'one thread requested (?threads=1)' };
  const s = threadSupport();
  if (s.threads === 1 && s.why !== 'the browser reports one core') return s;
  // ?threads=N may ask for more threads than cores (up to 16): the tests use an odd count.
  return asked > 0 ? { threads: Math.min(asked, 16), why: null } : s;
}
const plan = threadPlan();

const el = {
  fatal: $('fatal'),
  modelChoices: $('model-choices'),
  modelAsk: $('model-ask'),
  changeModel: $('change-model'),
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
  folder: $('folder'),
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
  batchCard: $('batch-card'),
  batch: $('batch'),
  exportJson: $('export-json'),
  exportCsv: $('export-csv'),
  batchStatus: $('batch-status'),
  announce: $('announce'),
  backend: $('backend'),
  storageText: $('storage-text'),
  clearCache: $('clear-cache'),
};

let captioner = null; // the module's Captioner once loaded
let loadAbort = null; // cancels the load in progress
let loadFailure = null; // why the last load failed
let modelFrames = 1;
let modelReady = false;
let wasmFailed = false;
let nextId = 1;
const items = new Map(); // id -> item
const waiting = []; // items chosen before the model is ready, in order
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
    maxNewTokens: Math.max(1, Math.min(512, parseInt(el.maxTokens.value, 10) || 20)),
    beams: parseInt(el.beams.value, 10) || 1,
    lengthPenalty: Number(el.lengthPenalty.value) || 1.0,
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

/** The source a choice stands for: 'hf:id@revision' for the known models, else the ?model= value. */
const knownValue = (m) => `hf:${m.id}@${m.revision}`;

/** What a choice keeps in the browser with this page's ?store= (MODELS' storedBytes: the default, q8_0). */
function storedSize(m) {
  const store = params.get('store');
  if (store === 'as-is') return `${formatBytes(m.downloadBytes)} stored as downloaded`;
  if (store === 'q4k') return 'stored as q4k (smaller than q8_0)';
  return `${formatBytes(m.storedBytes)} stored (q8_0)`;
}

/** The model choices, each with its download and storage size and a button that starts it. */
function renderChoices(stored) {
  el.modelChoices.replaceChildren();
  const storedKeys = new Set(stored.filter((e) => e.complete).map((e) => e.source));
  const custom = params.get('model');
  const choices = MODELS.map((m) => ({
    value: knownValue(m),
    label: m.label,
    note: m.note,
    sizes: `${formatBytes(m.downloadBytes)} download · ${storedSize(m)}`,
  }));
  if (custom && !choices.some((c) => parseModelParam(c.value, location.href).key === safeKey(custom))) {
    const src = safeSource(custom);
    if (src) choices.push({ value: custom, label: src.label, note: custom, sizes: 'size: asked when the download starts' });
  }
  for (const c of choices) {
    const li = document.createElement('li');
    const text = document.createElement('div');
    const name = document.createElement('strong');
    name.textContent = c.label;
    const note = document.createElement('span');
    note.className = 'small muted';
    const isStored = storedKeys.has(safeKey(c.value));
    note.textContent = ` ${c.note} · ${isStored ? 'stored in this browser' : c.sizes}`;
    text.append(name, note);
    const b = document.createElement('button');
    b.type = 'button';
    b.dataset.model = c.value;
    b.textContent = isStored ? 'Load' : 'Download';
    b.setAttribute('aria-label', `${b.textContent} ${c.label}`);
    b.addEventListener('click', () => chooseModel(c.value));
    li.append(text, b);
    el.modelChoices.append(li);
  }
}

const safeSource = (v) => {
  try {
    return parseModelParam(v, location.href);
  } catch {
    return null;
  }
};
const safeKey = (v) => safeSource(v)?.key ?? null;

/** A new choice: the page is reopened with it (the default model is the page without ?model=). */
function chooseModel(value) {
  const current = params.get('model');
  const wanted = value === knownValue(DEFAULT_MODEL) ? null : value;
  if ((current ?? null) === wanted || safeKey(current) === safeKey(value)) {
    startLoad(params.get('nosave') !== '1' && !!navigator.storage?.getDirectory);
    return;
  }
  const p = new URLSearchParams(location.search);
  if (wanted) p.set('model', wanted);
  else p.delete('model');
  p.set('start', '1'); // a choice made on this page: start without asking again
  location.search = p.toString();
}

/** Whether the ?model= value may start downloading without a click. */
function startsByItself(src) {
  if (params.get('start') === '1') return true;
  if (!params.get('model')) return false;
  if (src.kind !== 'gguf' && src.hub) return sameOriginReferrer();
  return new URL(src.base).origin === location.origin || sameOriginReferrer();
}

function sameOriginReferrer() {
  try {
    return !!document.referrer && new URL(document.referrer).origin === location.origin;
  } catch {
    return false;
  }
}

function showChoices(src, fromLink) {
  el.modelChoices.hidden = false;
  el.changeModel.hidden = true;
  if (fromLink) {
    el.modelAsk.hidden = false;
    el.modelAsk.textContent =
      `This link asks to download “${src.label}” from ${new URL(src.base).host}. ` +
      'Nothing is downloaded until you choose it below.';
    setModelState('choose', 'Choose the model to download.');
  } else {
    setModelState('choose', 'Choose a model: it is downloaded once and kept in this browser.');
  }
}

async function startLoad(persist) {
  el.quotaActions.hidden = true;
  el.retryActions.hidden = true;
  el.modelChoices.hidden = true;
  el.modelAsk.hidden = true;
  el.changeModel.hidden = false;
  modelReady = false;
  loadFailure = null;
  loadAbort?.abort();
  const abort = (loadAbort = new AbortController());
  setModelState('loading', 'Preparing the model…');
  const kib = parseInt(params.get('chunk_kib') || '', 10);
  const knob = (k) => (params.has(k) ? params.get(k) : undefined);
  const old = captioner;
  captioner = null;
  old?.dispose();
  try {
    const c = await Captioner.load({
      model: params.get('model') || undefined,
      // ?store=q8_0|q4k|as-is; without it the module's default (q8_0 for a safetensors source,
      // converted while it downloads; a copy this browser already holds as it is stays in use).
      store: params.get('store') || undefined,
      threads: plan.threads,
      persist,
      chunkBytes: kib > 0 ? kib * 1024 : 0,
      signal: abort.signal,
      onProgress,
      onEvent: onLoadEvent,
      tuning: {
        minSplitMacs: knob('split_min'),
        minSplitRows: knob('split_rows'),
        kernelMinRows: knob('kernel_min'),
        int8MinRows: knob('int8_min'),
        relaxed: params.get('relaxed') === '0' ? false : undefined,
      },
    });
    if (abort.signal.aborted) return c.dispose();
    captioner = c;
    onLoaded(c.info);
  } catch (e) {
    if (abort.signal.aborted) return;
    onLoadError(e);
  }
}

let sourceLabel = '';
let persisting = true;
let keeping = null; // {store, bytes}: how the download is kept (the plan event)
const downloadText = (total) =>
  `Downloading ${sourceLabel} (${formatBytes(total)})` +
  (!persisting
    ? ' — not stored: it is downloaded again next time.'
    : keeping?.store && keeping.store !== 'as-is' && keeping.bytes
      ? ` — kept in this browser as ${keeping.store} (${formatBytes(keeping.bytes)}), so this happens once.`
      : ' — it is stored in this browser, so this happens once.');
const progressLog = []; // every progress report, for tests and the benchmark
function onProgress(p) {
  const m = { phase: p.phase, done: p.loadedBytes, total: p.totalBytes, network: p.networkBytes, rate: p.rate };
  progressLog.push({ ...m, t: performance.now() });
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
// The module's load events

function onLoadEvent(ev) {
  switch (ev.type) {
    case 'wasm-ready': {
      const b = ev.build || {};
      const threads = Number(b.threads) || 1;
      const why = ev.threadNote || (threads === 1 ? plan.why : null);
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
    case 'source':
      sourceLabel = ev.label;
      break;
    case 'plan':
      persisting = ev.persist;
      keeping = { store: ev.store, bytes: ev.stored };
      if (ev.fromCache) setPhase('loading', `Loading ${sourceLabel} from this device…`);
      else setPhase('downloading', downloadText(ev.total));
      el.modelStatus.dataset.total = ev.total;
      break;
    case 'download-start':
      // Ask the browser to keep the model even under storage pressure.
      navigator.storage?.persist?.().catch(() => {});
      break;
    case 'retry':
      el.progressText.textContent = `Connection interrupted (${ev.message}); resuming…`;
      break;
  }
}

function onLoaded(info) {
  modelReady = true;
  modelFrames = info.frames || 1;
  el.progressWrap.hidden = true;
  const secs = (info.loadMs / 1000).toFixed(1);
  setModelState(
    'ready',
    `Ready: ${info.model}${info.imageSize ? ` · ${info.imageSize}×${info.imageSize} input` : ''}` +
      `${info.quantized ? ' · quantized' : ''} · loaded in ${secs} s ${info.fromCache ? 'from this device' : 'after downloading'}` +
      (info.persisted ? '' : ' (not stored: it will be downloaded again next time)')
  );
  Object.assign(el.modelStatus.dataset, {
    loadMs: Math.round(info.loadMs),
    fromCache: info.fromCache,
    networkBytes: info.networkBytes,
    wasmBytes: info.wasmBytes,
  });
  if (modelFrames > 1) el.file.accept = 'image/*,video/*';
  refreshCache();
  for (const it of waiting.splice(0)) send(it);
}

function onLoadError(e) {
  const message = e?.message || String(e);
  loadFailure = message;
  el.progressWrap.hidden = true;
  el.modelStatus.dataset.error = message;
  if (/WebAssembly module .*could not be loaded/.test(message)) {
    wasmFailed = true;
    showFatal(message);
    setModelState('error', 'The captioner could not start (see above).');
  } else {
    setModelState('error', `The model could not be loaded: ${message}`);
    if (e?.code === 'quota') el.quotaActions.hidden = false;
    else el.retryActions.hidden = false;
  }
  for (const it of waiting.splice(0)) onCaptionEnd(it.id, 'error', `The model is not loaded: ${message}`);
  refreshCache();
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
  const previous = stageItem;
  stageItem = it;
  el.stage.hidden = false;
  el.stage.classList.toggle('no-image', !it.image);
  if (previous !== it) showPreview(it);
  setPreviewAlt(it.alt || '');
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
  if (previous && previous !== it && !isActive(previous)) releaseImage(previous);
}

// The stage's picture is a canvas the page draws each image into, not an <img> of the file: each
// image an <img> has shown stays in Chromium's decoded-image cache after the <img> moves on (in
// the renderer's shared memory, until the system runs short of it): 0.55 MB per 451×300 photo,
// 200 captions in a row (bench/RESULTS.md, "Long runs"). And when the stage's <img> was the only
// element showing an object URL, about the file's size stayed in the renderer after every
// collection and memory-pressure signal (0.3 MB per caption). One canvas holds one picture, at
// most PREVIEW_MAX_PX on a side.
const PREVIEW_MAX_PX = 1280;
let previewFor = null; // the item whose picture is drawn or being drawn

/** Draws the item's image on the stage (hidden until drawn, and when it has none). */
async function showPreview(it) {
  previewFor = it;
  el.preview.hidden = true;
  if (!it.image) return;
  // One decoding for both pictures when the list's is not made yet (the usual case: an image
  // goes on the stage as it is chosen), rather than two.
  const thumb = !it.thumbTried;
  it.thumbTried = true;
  let bitmap;
  try {
    bitmap = await createImageBitmap(it.image);
    if (thumb) await makeThumbnail(it, bitmap);
    if (previewFor !== it) return;
    const scale = Math.min(1, PREVIEW_MAX_PX / Math.max(bitmap.width, bitmap.height));
    el.preview.width = Math.max(1, Math.round(bitmap.width * scale));
    el.preview.height = Math.max(1, Math.round(bitmap.height * scale));
    const ctx = el.preview.getContext('2d');
    ctx.imageSmoothingQuality = 'high';
    ctx.drawImage(bitmap, 0, 0, el.preview.width, el.preview.height);
    el.preview.hidden = false;
  } catch {
    // Not an image the browser can show (a video, a format it does not decode): no picture, as
    // an <img> of the file would have shown none.
  } finally {
    bitmap?.close();
  }
}

/** The picture's text alternative: the alt text being written, as an <img alt> would have it. */
function setPreviewAlt(text) {
  if (text) {
    el.preview.setAttribute('aria-label', text);
    el.preview.removeAttribute('aria-hidden');
  } else {
    el.preview.removeAttribute('aria-label');
    el.preview.setAttribute('aria-hidden', 'true'); // as alt="": nothing to announce
  }
}

// ---------------------------------------------------------------------------------------------
// The batch: every image of this visit with its editable alt text, exportable as JSON or CSV.

function renderRow(it) {
  if (!it.row) {
    const li = document.createElement('li');
    const img = document.createElement('img');
    img.alt = '';
    img.width = 64;
    img.height = 64;
    if (it.thumb) img.src = it.thumb;
    const body = document.createElement('div');
    const name = document.createElement('p');
    name.className = 'small muted';
    name.textContent = it.name;
    const status = document.createElement('p');
    status.className = 'small row-status';
    const ta = document.createElement('textarea');
    ta.rows = 3;
    ta.className = 'row-alt';
    ta.setAttribute('aria-label', `Alt text for ${it.name}`);
    ta.addEventListener('input', () => {
      it.alt = ta.value;
      it.altEdited = ta.value.trim() !== '' && ta.value !== it.caption;
      if (it === stageItem) {
        el.alt.value = ta.value;
        setPreviewAlt(ta.value);
        el.copy.disabled = !ta.value;
      }
    });
    const copy = document.createElement('button');
    copy.type = 'button';
    copy.textContent = 'Copy';
    copy.setAttribute('aria-label', `Copy alt text for ${it.name}`);
    copy.addEventListener('click', () => copyText(ta.value, copy));
    body.append(name, ta, status);
    li.append(img, body, copy);
    li.dataset.id = it.id;
    it.row = { li, img, ta, status, copy };
    el.batch.append(li);
    el.batchCard.hidden = false;
  }
  const { li, ta, status, copy } = it.row;
  li.dataset.status = it.status;
  if (document.activeElement !== ta) ta.value = it.alt || '';
  ta.disabled = it.status === 'error';
  copy.disabled = !(it.alt || '').trim();
  status.classList.toggle('error', it.status === 'error');
  status.textContent =
    it.status === 'queued' ? 'Waiting…' : it.status === 'running' ? 'Captioning…' : it.status === 'error' ? it.error : it.status === 'cancelled' ? 'Stopped.' : '';
  updateBatchActions();
}

function updateBatchActions() {
  const done = [...items.values()].filter((it) => it.status === 'done');
  el.exportJson.disabled = el.exportCsv.disabled = done.length === 0;
  const queued = [...items.values()].filter(isActive).length;
  el.batchStatus.textContent = `${done.length} of ${items.size} captioned${queued ? ` · ${queued} to go` : ''}.`;
}

function exportRows() {
  return [...items.values()]
    .filter((it) => it.status === 'done')
    .map((it) => ({ file: it.name, alt: it.alt || '', caption: it.caption || '' }));
}

const csvCell = (v) => (/[",\n\r]/.test(v) ? `"${v.replace(/"/g, '""')}"` : v);

function download(name, type, text) {
  const a = document.createElement('a');
  a.href = URL.createObjectURL(new Blob([text], { type }));
  a.download = name;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 10_000);
}

function wireBatch() {
  el.exportJson.addEventListener('click', () =>
    download('alt-text.json', 'application/json', `${JSON.stringify(exportRows(), null, 2)}\n`)
  );
  el.exportCsv.addEventListener('click', () => {
    const rows = exportRows().map((r) => [r.file, r.alt, r.caption].map(csvCell).join(','));
    download('alt-text.csv', 'text/csv', `${['file,alt,caption', ...rows].join('\r\n')}\r\n`);
  });
}

// ---------------------------------------------------------------------------------------------

function newItem(name, image) {
  const it = {
    id: nextId++,
    name,
    image, // the image (a Blob or File), for the stage's picture; let go once it leaves the stage
    thumb: null, // a small copy (an object URL) for the list, kept as long as the list
    thumbTried: false, // its making has begun (from the stage picture's decoding or in turn)
    status: 'queued',
    text: '',
    fragments: 0,
    alt: '',
    altEdited: false,
    caption: null,
    error: null,
    input: null,
    controller: new AbortController(),
    row: null,
  };
  items.set(it.id, it);
  return it;
}

/** Creates an item for an image (`blob`) about to be captioned; shown at once when nothing else runs. */
function addItem(name, blob) {
  const it = newItem(name, blob);
  if (!anyActiveExcept(it)) showOnStage(it);
  renderRow(it);
  updateQueueNote();
  thumbnail(it, blob);
  return it;
}

// The list keeps every image of the visit, so what it keeps of each must be small: an <img> of the
// file itself kept, through its object URL, the file's bytes (in the browser process: +0.3 MB a
// caption over 200 captions of a 451×300 PNG) and, once shown, the whole decoded image (451×300:
// 0.5 MB; a 12-megapixel photo: 48 MB) for as long as the page lives. So the list shows a small
// copy, at the size it is shown (64 CSS px, at up to 2 device pixels per px: 64 KB decoded, a few
// KB of WebP), and the image itself is let go once it leaves the stage.
const THUMB_CSS_PX = 64;
let thumbnails = Promise.resolve(); // one at a time: each decodes a whole image for a moment

/** Makes the item's small copy for the list in turn, unless its stage picture made it already. */
function thumbnail(it, blob) {
  thumbnails = thumbnails.then(async () => {
    if (it.thumbTried) return;
    it.thumbTried = true;
    let bitmap;
    try {
      bitmap = await createImageBitmap(blob);
      await makeThumbnail(it, bitmap);
    } catch {
      // Not an image the browser can show (a video, a format it does not decode): no picture in
      // the list, as an <img> of the file itself would have shown none either.
    } finally {
      bitmap?.close();
    }
  });
}

/** The list's copy of a decoded image, center-cropped as the list shows it (object-fit: cover). */
async function makeThumbnail(it, bitmap) {
  const side = Math.min(bitmap.width, bitmap.height);
  const px = Math.max(1, Math.min(side, Math.round(THUMB_CSS_PX * Math.min(2, Math.max(1, devicePixelRatio || 1)))));
  const canvas = document.createElement('canvas');
  canvas.width = canvas.height = px;
  const ctx = canvas.getContext('2d');
  ctx.imageSmoothingQuality = 'high';
  ctx.drawImage(bitmap, (bitmap.width - side) / 2, (bitmap.height - side) / 2, side, side, 0, 0, px, px);
  try {
    // WebP keeps transparency in a few KB (a PNG of a photo this size is 30 KB or more); an engine
    // that cannot write it gives a PNG.
    const small = await new Promise((resolve, reject) => canvas.toBlob((b) => (b ? resolve(b) : reject(new Error('toBlob failed'))), 'image/webp', 0.85));
    it.thumb = URL.createObjectURL(small);
    if (it.row) it.row.img.src = it.thumb;
  } finally {
    canvas.width = canvas.height = 0; // its pixels now, not when the canvas is collected
  }
}

/** Lets the image itself go once it is off the stage for good (the list has its small copy). */
function releaseImage(it) {
  it.image = null;
}

/** Hands an item's image to the module (after the model has loaded). */
function send(it) {
  if (!captioner) {
    if (loadFailure && !waiting.length && el.modelStatus.dataset.state === 'error') {
      return onCaptionEnd(it.id, 'error', `The model is not loaded: ${loadFailure}`);
    }
    waiting.push(it);
    return;
  }
  const input = it.input;
  it.input = null;
  const c = captioner;
  c.caption(input, {
    ...currentOptions(),
    signal: it.controller.signal,
    onToken: (t) => {
      if (it.status !== 'running') onCaptionStart(it.id);
      onToken(it, t);
    },
    onEvent: (ev) => {
      if (ev.type !== 'encoded') return;
      if (it.status !== 'running') onCaptionStart(it.id);
      if (it === stageItem) {
        el.captionStatus.textContent = 'Writing the caption…';
        el.caption.dataset.encodeMs = Math.round(ev.encodeMs);
      }
    },
  }).then(
    (r) => onCaptionDone(it.id, r),
    (e) => {
      if (e?.name === 'AbortError') onCaptionEnd(it.id, 'cancelled', 'Stopped.');
      else onCaptionEnd(it.id, 'error', e?.message || String(e));
    }
  );
}

/** Captions bytes (a test hook): returns the item id, synchronously. */
function captionBytes(bytes, name = 'image', mime = '') {
  const blob = new Blob([bytes], mime ? { type: mime } : {});
  const it = addItem(name, blob);
  it.input = blob;
  send(it);
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
  if (wasmFailed) return;
  // Items (and the stage) first, in this task; then the images, in order.
  const pending = accepted.map((f) => [f, addItem(f.webkitRelativePath || f.name, f)]);
  for (const [f, it] of pending) {
    try {
      if (modelFrames > 1) {
        const frames = f.type.startsWith('video/') ? await videoFrames(f, modelFrames) : await repeatFrames(f, modelFrames);
        it.input = { frames };
      } else {
        it.input = f;
      }
      send(it);
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
  if (!it || it.status !== 'queued') return;
  it.status = 'running';
  if (it !== stageItem) showOnStage(it);
  el.caption.setAttribute('aria-busy', 'true');
  el.cancel.hidden = false;
  el.captionStatus.textContent = 'Looking at the image…';
  renderRow(it);
  updateQueueNote();
}

function onToken(it, text) {
  it.text += text;
  it.fragments++;
  if (it === stageItem) {
    el.caption.append(document.createTextNode(text));
    el.caption.dataset.fragments = it.fragments;
  }
}

function onCaptionDone(id, r) {
  const it = items.get(id);
  if (!it) return;
  if (it.status === 'queued') onCaptionStart(id);
  it.status = 'done';
  it.caption = r.text;
  if (!it.altEdited) it.alt = r.text;
  renderRow(it);
  if (it !== stageItem) return;
  el.caption.textContent = r.text;
  const t = r.timings || {};
  Object.assign(el.caption.dataset, {
    tokens: t.steps,
    tokenIds: (r.tokenIds || []).join(','),
    encodeMs: Math.round(t.encodeMs),
    firstTokenMs: t.firstTextMs == null ? '' : Math.round(t.firstTextMs),
    decodeMs: Math.round(t.decodeMs),
    perTokenMs: (t.perTokenMs || 0).toFixed(1),
    totalMs: Math.round(t.totalMs),
    wasmBytes: t.wasmBytes,
    peakWasmBytes: t.peakWasmBytes,
    splits: t.splits,
    int8Products: t.int8Products,
    int8PairedProducts: t.int8PairedProducts,
  });
  if (r.note) el.caption.dataset.note = r.note;
  el.caption.setAttribute('aria-busy', 'false');
  el.caption.dataset.done = '';
  el.cancel.hidden = true;
  el.captionStatus.textContent = `Done in ${(t.totalMs / 1000).toFixed(1)} s.`;
  if (it.altEdited) {
    el.altNote.hidden = false;
    el.altNote.textContent = 'Your alt text was kept.';
    el.useCaption.hidden = r.text === el.alt.value;
  } else {
    el.alt.value = r.text;
  }
  setPreviewAlt(it.alt);
  el.copy.disabled = !el.alt.value;
  el.announce.textContent = r.text ? `Caption: ${r.text}` : 'The model wrote an empty caption.';
  updateQueueNote();
}

function onCaptionEnd(id, status, message) {
  const it = items.get(id);
  if (!it) return;
  it.status = status;
  if (status === 'error') it.error = message;
  renderRow(it);
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
  } else {
    releaseImage(it); // stopped or failed before reaching the stage: it never will
  }
  // The next image takes the stage when it starts.
  updateQueueNote();
}

/** Stops a caption: the one on the stage, or the item `id`. */
function cancel(id) {
  const it = id != null ? items.get(id) : isActive(stageItem) ? stageItem : null;
  if (!it || !isActive(it)) return;
  const i = waiting.indexOf(it);
  if (i >= 0) {
    waiting.splice(i, 1);
    onCaptionEnd(it.id, 'cancelled', 'Stopped.');
  }
  it.controller.abort();
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
    setPreviewAlt(el.alt.value);
    el.copy.disabled = !el.alt.value;
    renderRow(stageItem);
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
    renderRow(stageItem);
    el.alt.focus();
  });
}

// ---------------------------------------------------------------------------------------------
// Input: picker, folder, drag and drop, paste, keyboard

function wireInput() {
  el.file.addEventListener('change', () => {
    handleFiles(el.file.files);
    el.file.value = '';
  });
  el.folder.addEventListener('change', () => {
    // A folder holds other files too: only its images are queued.
    handleFiles([...el.folder.files].filter((f) => f.type.startsWith('image/')));
    el.folder.value = '';
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

async function refreshCache() {
  try {
    showCache(captioner ? await captioner.storedModels() : await storedModels());
  } catch (e) {
    el.storageText.textContent = e.message;
  }
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
  el.clearCache.addEventListener('click', async () => {
    if (!confirm('Delete the stored models? They will be downloaded again when needed.')) return;
    try {
      showCache(captioner ? await captioner.clearStoredModels() : (await clearStoredModels(), await storedModels()));
    } catch (e) {
      el.storageText.textContent = e.message;
    }
  });
  el.loadNoSave.addEventListener('click', () => startLoad(false));
  el.retryLoad.addEventListener('click', () => startLoad(params.get('nosave') !== '1'));
  el.changeModel.addEventListener('click', async () => {
    el.changeModel.hidden = true;
    el.modelChoices.hidden = false;
    renderChoices((await storedModels().catch(() => ({ entries: [] }))).entries);
    el.modelChoices.querySelector('button')?.focus();
  });
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

async function main() {
  presetOptions();
  wireAltText();
  wireInput();
  wireStorage();
  wireBatch();
  window.gitcap = { captionBytes, cancel, items, progressLog, get captioner() { return captioner; } };

  const s = support();
  if (!s.ok) {
    showFatal(s.message);
    setModelState('error', s.reason === 'no-simd' ? 'WebAssembly SIMD is not available.' : 'WebAssembly is not available.');
    el.modelStatus.dataset.error = s.reason === 'no-simd' ? 'no WebAssembly SIMD' : 'no WebAssembly';
    wasmFailed = true;
    return;
  }
  let src;
  try {
    src = parseModelParam(params.get('model'), location.href);
  } catch (e) {
    showFatal(e.message);
    setModelState('error', e.message);
    el.modelStatus.dataset.error = e.message;
    wasmFailed = true;
    return;
  }
  registerServiceWorker();
  const persist = params.get('nosave') !== '1' && !!navigator.storage?.getDirectory;
  const stored = (await storedModels().catch(() => ({ entries: [] }))).entries;
  showCache({ entries: stored, available: !!navigator.storage?.getDirectory });
  renderChoices(stored);
  // A complete copy of the source loads by itself: the one ?store= asks for, or without ?store=
  // any (the module's default takes the q8_0 copy, or the one kept as it is).
  // (A .gguf source is kept as it is whatever ?store= says.)
  const isStored = (s) => {
    const want = s.kind === 'gguf' ? 'as-is' : params.get('store');
    return stored.some((e) => e.complete && e.source === s.key && (!want || e.store === want));
  };
  if ((persist && isStored(src)) || startsByItself(src)) return startLoad(persist);
  if (!params.get('model')) {
    // No model named: one already stored here loads by itself.
    const known = MODELS.map((m) => parseModelParam(knownValue(m), location.href)).find((x) => isStored(x));
    if (known && persist) {
      const p = new URLSearchParams(location.search);
      if (known.key !== src.key) {
        p.set('model', `hf:${known.hub.id}@${known.hub.revision}`);
        history.replaceState(null, '', `?${p}`);
        params.set('model', p.get('model'));
      }
      return startLoad(persist);
    }
  }
  showChoices(src, !!params.get('model'));
}

main();
