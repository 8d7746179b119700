// www/store_q8.js with the page's wasm module (www/pkg), in Node: the tiny f32 fixture converted
// while "downloading" equals `gitcap quantize --type q8_0` byte for byte (so the wasm build
// quantizes as the native CLI does), also when the download is interrupted and resumed at chunk
// boundaries, and the converted model, loaded as it is written, captions with the CLI's token ids.
// Then the page with ?store=q8_0: what the worker stores is that GGUF (not the f32 source), it
// captions with the CLI's ids for it, and a reload loads it from storage without the network.
// Also the pieces a resumed conversion rests on: the wasm Sha256 (the source's hash, its state saved
// with the resume point) and ChunkAppender (the output's chunks, cut back to the resume point); and the
// page with the default store (q8_0 for this folder) interrupted mid-download: the next visit
// continues from the saved point, fetching only what was not converted, stores the CLI's file
// byte for byte and checks the whole source's SHA-256.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import {
  ensureWasm, gitcapBin, nativeCaption, startServer, launch, recordRequests, pageUrl, captionResult, chooseFile,
  int8FormOfPage, sha256, IMAGES, ROOT, TINY, WWW,
} from './helpers.mjs';
import { quantizingSink, storeType, MODEL_FILES } from '../../www/store_q8.js';
import { createHash, randomBytes } from 'node:crypto';

const CHELSEA = path.join(IMAGES, 'chelsea.png');
let gitcap;
let tmp;
let cliGguf;
let source;
let files;

before(async () => {
  ensureWasm();
  gitcap = await import(pathToFileURL(path.join(WWW, 'pkg/gitcap.js')).href);
  await gitcap.default({ module_or_path: fs.readFileSync(path.join(WWW, 'pkg/gitcap_bg.wasm')) });
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'gitcap-store-q8-'));
  cliGguf = path.join(tmp, 'tiny-q8_0.gguf');
  const r = spawnSync(gitcapBin(), ['quantize', '--model', TINY, '--out', cliGguf, '--type', 'q8_0', '--quiet'], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  source = fs.readFileSync(path.join(TINY, 'model.safetensors'));
  files = new Map(
    MODEL_FILES.filter((f) => fs.existsSync(path.join(TINY, f))).map((f) => [f, fs.readFileSync(path.join(TINY, f))])
  );
});

after(() => fs.rmSync(tmp, { recursive: true, force: true }));

/** Feeds `source` in chunks of `chunk` bytes; after each chunk in `interruptAfter`, the sink is
 *  dropped and a new one resumed from its state (as after a page reload). Returns the output. */
async function convert(chunk, interruptAfter = () => false) {
  const parts = [];
  let written = 0;
  const onOutput = (bytes, offset) => {
    assert.equal(offset, written, 'output arrives in order');
    parts.push(bytes.slice());
    written += bytes.length;
  };
  let sink = quantizingSink(gitcap, { type: 'q8_0', name: TINY, files, onOutput });
  let i = 0;
  for (let start = 0; start < source.length; start += chunk, i++) {
    await sink.push(source.subarray(start, start + chunk));
    if (interruptAfter(i)) {
      const state = sink.state();
      const [at, out] = [sink.sourceBytes, sink.outputBytes];
      sink.free();
      sink = quantizingSink(gitcap, { state, onOutput });
      assert.equal(sink.sourceBytes, at);
      assert.equal(sink.outputBytes, out);
      assert.equal(at, Math.min(source.length, start + chunk));
    }
  }
  const total = sink.outputTotal;
  const summary = sink.finish();
  const out = Buffer.concat(parts);
  assert.equal(summary.fileBytes, out.length);
  assert.equal(total, out.length);
  return out;
}

test('the stored bytes are gitcap quantize --type q8_0 output, whatever the chunking and resumes', async () => {
  const cli = fs.readFileSync(cliGguf);
  for (const chunk of [7, 4096, 65536, source.length]) {
    assert.ok(Buffer.from(await convert(chunk)).equals(cli), `chunks of ${chunk}`);
  }
  assert.ok((await convert(4096, () => true)).equals(cli), 'resumed after every chunk');
  assert.ok((await convert(7, (i) => i < 2000 && i % 3 === 0)).equals(cli), 'resumed in the header');
});

test('the converted model, loaded as it is written, captions with the CLI ids', async () => {
  const loader = new gitcap.ModelLoader();
  let begun = false;
  const sink = quantizingSink(gitcap, {
    name: TINY,
    files,
    onOutput: (bytes) => {
      if (!begun) {
        loader.beginWeights('gguf', sink.outputTotal);
        begun = true;
      }
      loader.pushWeights(bytes);
    },
  });
  for (let start = 0; start < source.length; start += 1 << 16) await sink.push(source.subarray(start, start + (1 << 16)));
  sink.finish();
  const model = loader.finish();
  assert.equal(model.info().quantized, true);
  const job = model.startCaption(fs.readFileSync(CHELSEA));
  let ev;
  do ev = job.step();
  while (!ev.done);
  job.free();
  model.free();
  const want = nativeCaption(CHELSEA, [], { model: cliGguf, int8: 'portable' });
  assert.deepEqual(ev.caption.token_ids, want.token_ids);
  assert.equal(ev.caption.text, want.text);
});

test('cut-short downloads, damaged states and misuse give readable errors', async () => {
  const sink = quantizingSink(gitcap, { name: TINY, files, onOutput: () => {} });
  await sink.push(source.subarray(0, 100_000));
  const state = sink.state();
  assert.throws(() => sink.finish(), /truncated: got 100000 of \d+ bytes/);
  assert.throws(() => sink.state(), /finished or failed/);

  const bad = state.slice();
  bad[bad.length >> 1] ^= 1;
  assert.throws(() => quantizingSink(gitcap, { state: bad, onOutput: () => {} }), /state is damaged/);

  const noConfig = quantizingSink(gitcap, { files: {}, onOutput: () => {} });
  await assert.rejects(noConfig.push(source.subarray(0, 10)), /config\.json was not added/);
  const notSafetensors = quantizingSink(gitcap, { files, onOutput: () => {} });
  await assert.rejects(notSafetensors.push(fs.readFileSync(cliGguf)), /not a valid safetensors file/);
  assert.throws(() => new gitcap.Quantizer('q2', ''), /unknown type "q2"/);
  const full = quantizingSink(gitcap, { files, onOutput: () => Promise.reject(new Error('storage full')) });
  await assert.rejects(full.push(source.subarray(0, 100_000)), /storage full/);
  assert.throws(() => full.state(), /finished or failed/);

  assert.equal(storeType(undefined, 'safetensors'), 'q8_0');
  assert.equal(storeType('as-is', 'safetensors'), null);
  assert.equal(storeType('q4k', 'safetensors'), 'q4k');
  assert.equal(storeType(undefined, 'gguf'), null);
  assert.throws(() => storeType('q8', 'safetensors'), /store must be/);
});

test('the wasm Sha256 (a resumed conversion\'s hash) equals node:crypto\'s SHA-256, resumed from plain data at any point', () => {
  for (const n of [0, 1, 55, 56, 63, 64, 65, 119, 120, 128, 1000, 100_003]) {
    const data = randomBytes(n);
    const want = createHash('sha256').update(data).digest('hex');
    for (const split of new Set([0, 1, 55, 63, 64, 65, n >> 1, n]).values()) {
      if (split > n) continue;
      const a = new gitcap.Sha256();
      a.update(data.subarray(0, split));
      // Through JSON, as the resume point is stored.
      const b = gitcap.Sha256.resume(JSON.parse(JSON.stringify(a.state())));
      for (let at = split; at < n; at += 4097) b.update(data.subarray(at, at + 4097));
      assert.equal(b.hex(), want, `${n} bytes resumed at ${split}`);
    }
  }
  const s = new gitcap.Sha256();
  s.update(randomBytes(70));
  const bad = { ...s.state(), bytes: 71 };
  assert.throws(() => gitcap.Sha256.resume(bad), /saved SHA-256 state is damaged/);
});

test('the page with ?store=q8_0 stores the GGUF gitcap quantize writes and reloads it offline', async () => {
  // The page records the folder's name as general.name, as `gitcap quantize --model tiny-coco`.
  const named = path.join(tmp, 'named-q8_0.gguf');
  const q = spawnSync(path.resolve(gitcapBin()), ['quantize', '--model', 'tiny-coco', '--out', named, '--type', 'q8_0', '--quiet'], {
    cwd: path.dirname(TINY),
    encoding: 'utf8',
  });
  assert.equal(q.status, 0, q.stderr);
  const want = fs.readFileSync(named);
  const server = await startServer();
  const b = await launch();
  try {
    const requests = recordRequests(b.context);
    const page = b.context.pages()[0] ?? (await b.context.newPage());
    page.on('pageerror', (e) => console.error('# page error:', e.message));
    // The single-threaded SIMD128 build: the one test.sh --browser builds.
    await page.goto(pageUrl(server, { store: 'q8_0', chunk_kib: 256, threads: '1', relaxed: '0' }));
    await chooseFile(page, CHELSEA);
    let r = await captionResult(page);
    assert.equal(r.error, null);
    const backend = await page.textContent('#backend');
    const native = nativeCaption(CHELSEA, [], { model: named, int8: int8FormOfPage(backend) });
    assert.equal(r.data.tokenIds, native.token_ids.join(','));
    assert.equal(r.text, native.text);

    // What is stored: the GGUF's chunks, byte for byte the CLI's file; no safetensors chunk.
    const stored = await page.evaluate(async () => {
      const root = await (await navigator.storage.getDirectory()).getDirectoryHandle('gitcap-models');
      const files = {};
      const gguf = [];
      for await (const [, dir] of root.entries()) {
        if (dir.kind !== 'directory') continue;
        for await (const [name, h] of dir.entries()) {
          const f = await h.getFile();
          files[name] = f.size;
          if (name.startsWith('model.q8_0.gguf.')) gguf.push([name, new Uint8Array(await f.arrayBuffer())]);
        }
      }
      gguf.sort((a, b) => (a[0] < b[0] ? -1 : 1));
      const all = new Uint8Array(gguf.reduce((n, [, b]) => n + b.length, 0));
      let at = 0;
      for (const [, bytes] of gguf) {
        all.set(bytes, at);
        at += bytes.length;
      }
      const digest = new Uint8Array(await crypto.subtle.digest('SHA-256', all));
      return { files, size: all.length, sha256: [...digest].map((x) => x.toString(16).padStart(2, '0')).join('') };
    });
    assert.deepEqual(Object.keys(stored.files).filter((n) => n.startsWith('model.safetensors')), [], JSON.stringify(stored.files));
    assert.equal(stored.size, want.length);
    assert.ok(stored.size < fs.statSync(path.join(TINY, 'model.safetensors')).size);
    assert.equal(stored.sha256, await sha256(want));

    // A reload loads the stored GGUF without fetching any model file.
    const before = requests.length;
    await page.reload();
    await page.waitForSelector('#model-status[data-state=ready]');
    assert.equal(await page.getAttribute('#model-status', 'data-from-cache'), 'true');
    await chooseFile(page, CHELSEA);
    r = await captionResult(page);
    assert.equal(r.data.tokenIds, native.token_ids.join(','));
    assert.deepEqual(requests.slice(before).filter((x) => x.url.includes('/models/')), []);
  } finally {
    await b.close();
    await server.stop();
  }
});

// What a converted download's output goes through (www/storage.js), in a worker (appends through
// sync access handles, as in the model worker) and in a page (no sync access handles there:
// whole-chunk writes). Run in the browser: Node has no OPFS.
async function chunkAppenderCase(mode, origin) {
  const { ChunkAppender } = await import(`${origin}/storage.js`);
  const root = await navigator.storage.getDirectory();
  const dir = await root.getDirectoryHandle(`appender-${mode}`, { create: true });
  const name = (i) => `out.${String(i).padStart(5, '0')}`;
  const data = Uint8Array.from({ length: 2500 }, (_, i) => (i * 7) & 255);
  const read = async () => {
    const files = [];
    for await (const [n, h] of dir.entries()) files.push([n, new Uint8Array(await (await h.getFile()).arrayBuffer())]);
    files.sort((x, y) => (x[0] < y[0] ? -1 : 1));
    return { names: files.map(([n, b]) => `${n}:${b.length}`), bytes: files.flatMap(([, b]) => [...b]) };
  };
  const out = {};
  let a = await ChunkAppender.open(dir, name, 1000, 0);
  out.sync = !!a.handle || !a.memory; // (nothing open yet)
  await a.append(data.subarray(0, 1700));
  await a.flush(); // the resume point: 1700 bytes
  await a.append(new Uint8Array(200).fill(0xee)); // written after it
  await a.close();
  const junk = await (await dir.getFileHandle(name(4), { create: true })).createWritable();
  await junk.write(new Uint8Array(10).fill(0xdd));
  await junk.close();
  out.beforeResume = (await read()).names;
  a = await ChunkAppender.open(dir, name, 1000, 1700);
  out.afterOpen = (await read()).names;
  await a.append(data.subarray(1700, 2100));
  await a.append(data.subarray(2100));
  await a.close();
  const all = await read();
  out.final = all.names;
  out.equal = all.bytes.length === data.length && all.bytes.every((x, i) => x === data[i]);
  a = await ChunkAppender.open(dir, name, 1000, 1200); // back to an earlier point
  await a.close();
  const cut = await read();
  out.cut = cut.names;
  out.cutEqual = cut.bytes.every((x, i) => x === data[i]);
  out.appendsInPlace = mode === 'worker' ? typeof FileSystemFileHandle.prototype.createSyncAccessHandle === 'function' : null;
  return out;
}

test('ChunkAppender: opening at a resume point cuts off what was written after it, in a worker and in a page', async () => {
  const server = await startServer();
  const b = await launch();
  try {
    const page = b.context.pages()[0] ?? (await b.context.newPage());
    await page.goto(`${server.url}?nosw=1`); // this origin (the page downloads nothing before a click)
    const origin = new URL(server.url).origin;
    const inPage = await page.evaluate(`(${chunkAppenderCase})('page', ${JSON.stringify(origin)})`);
    const inWorker = await page.evaluate(
      async ([src, origin]) => {
        const code = `onmessage = () => (${src})('worker', ${JSON.stringify(origin)}).then(postMessage, (e) => postMessage({ error: String(e) }));`;
        const w = new Worker(URL.createObjectURL(new Blob([code], { type: 'text/javascript' })), { type: 'module' });
        return new Promise((resolve, reject) => {
          w.onmessage = (e) => resolve(e.data);
          w.onerror = (e) => reject(new Error(e.message));
          w.postMessage(null);
        });
      },
      [String(chunkAppenderCase), origin]
    );
    assert.equal(inWorker.error, undefined);
    assert.equal(inWorker.appendsInPlace, true, 'workers have sync access handles');
    for (const r of [inPage, inWorker]) {
      assert.deepEqual(r.beforeResume, ['out.00000:1000', 'out.00001:900', 'out.00004:10']);
      assert.deepEqual(r.afterOpen, ['out.00000:1000', 'out.00001:700']);
      assert.deepEqual(r.final, ['out.00000:1000', 'out.00001:1000', 'out.00002:500']);
      assert.equal(r.equal, true);
      assert.deepEqual(r.cut, ['out.00000:1000', 'out.00001:200']);
      assert.equal(r.cutEqual, true);
    }
  } finally {
    await b.close();
    await server.stop();
  }
});

// ---------------------------------------------------------------------------------------------
// An interrupted conversion, in the page with the default store (q8_0 for this safetensors
// folder): 1 MiB chunks of the 4.2 MB source, chunk 2's request never answered on the first
// visit (by then chunks 0 and 1 are converted and their resume point saved).

const WEIGHTS = '/models/tiny-coco/model.safetensors';
const CHUNK = 1024 * 1024;
const QUERY = { chunk_kib: 1024, threads: '1', relaxed: '0' };
const rangeOf = (r) => {
  const m = /bytes=(\d+)-(\d+)/.exec(r.range || '');
  return m ? [Number(m[1]), Number(m[2])] : null;
};
const weightRanges = (requests) => requests.filter((r) => r.url.endsWith(WEIGHTS) && r.method === 'GET').map(rangeOf);

/** The GGUF the page should store for tiny-coco: `gitcap quantize --model tiny-coco` (the page
 *  records the folder's name as general.name, as the CLI records its --model argument). */
function namedCliGguf() {
  const out = path.join(tmp, 'tiny-coco-named-q8_0.gguf');
  if (!fs.existsSync(out)) {
    const q = spawnSync(path.resolve(gitcapBin()), ['quantize', '--model', 'tiny-coco', '--out', out, '--type', 'q8_0', '--quiet'], {
      cwd: path.dirname(TINY),
      encoding: 'utf8',
    });
    assert.equal(q.status, 0, q.stderr);
  }
  return out;
}

/** What the page's storage holds for its one model: file sizes, and the q8_0 GGUF's chunks joined. */
async function storedModel(page) {
  return page.evaluate(async () => {
    const root = await (await navigator.storage.getDirectory()).getDirectoryHandle('gitcap-models');
    const dirs = [];
    for await (const [, dir] of root.entries()) {
      if (dir.kind !== 'directory') continue;
      const files = {};
      const gguf = [];
      for await (const [name, h] of dir.entries()) {
        const f = await h.getFile();
        files[name] = f.size;
        if (/^model\.q8_0\.gguf\.\d+$/.test(name)) gguf.push([name, new Uint8Array(await f.arrayBuffer())]);
      }
      gguf.sort((a, b) => (a[0] < b[0] ? -1 : 1));
      const all = new Uint8Array(gguf.reduce((n, [, b]) => n + b.length, 0));
      let at = 0;
      for (const [, bytes] of gguf) {
        all.set(bytes, at);
        at += bytes.length;
      }
      const digest = new Uint8Array(await crypto.subtle.digest('SHA-256', all));
      const manifest = files['manifest.json'] ? JSON.parse(await (await (await dir.getFileHandle('manifest.json')).getFile()).text()) : null;
      dirs.push({ files, manifest, size: all.length, sha256: [...digest].map((x) => x.toString(16).padStart(2, '0')).join('') });
    }
    return dirs;
  });
}

/** First visit, cut off: chunk 2 is asked for and never answered; the page is closed. */
async function interruptedVisit(b, server, requests) {
  let held = null;
  const asked = new Promise((resolve) => {
    b.context.route(`**${WEIGHTS}`, (route) => {
      if (route.request().headers()['range'] === `bytes=${2 * CHUNK}-${3 * CHUNK - 1}` && !held) {
        held = route;
        resolve();
        return; // left hanging, like a dropped connection
      }
      return route.continue();
    });
  });
  const page = await b.context.newPage();
  page.on('pageerror', (e) => console.error('# page error:', e.message));
  await page.goto(pageUrl(server, QUERY));
  await asked;
  await page.close();
  await b.context.unrouteAll({ behavior: 'ignoreErrors' });
  // The source header's two requests (the converted size, for the quota check), then chunks 0-2.
  const headerLen = Number(source.readBigUInt64LE(0));
  assert.deepEqual(weightRanges(requests), [[0, 7], [8, 7 + headerLen], [0, CHUNK - 1], [CHUNK, 2 * CHUNK - 1], [2 * CHUNK, 3 * CHUNK - 1]]);
}

test('the default store: an interrupted conversion resumes from its saved point, stores gitcap quantize\'s file, and captions with the CLI\'s ids', async () => {
  const want = fs.readFileSync(namedCliGguf());
  const server = await startServer();
  const b = await launch();
  try {
    const requests = recordRequests(b.context);
    await interruptedVisit(b, server, requests);

    // What the interruption left: the output of chunks 0-1 and their resume point; no source bytes.
    const other = await b.context.newPage();
    await other.goto(`${server.url}icon.svg`); // this origin, without the app
    let [kept] = await storedModel(other);
    assert.equal(kept.manifest.complete, false);
    assert.equal(kept.manifest.store, 'q8_0');
    assert.ok(kept.files['model.q8_0.gguf.resume'] > 0, JSON.stringify(kept.files));
    assert.deepEqual(Object.keys(kept.files).filter((n) => n.startsWith('model.safetensors')), []);
    assert.ok(kept.size > 0 && kept.size < want.length);
    assert.equal(kept.sha256, await sha256(want.subarray(0, kept.size)), 'the kept output is the start of the CLI file');
    // Bytes written after the resume point (as when a visit ends between writing output and
    // saving the next point) must be cut off: junk after the last chunk's end, and a chunk beyond.
    await other.evaluate(async () => {
      const root = await (await navigator.storage.getDirectory()).getDirectoryHandle('gitcap-models');
      for await (const [, dir] of root.entries()) {
        const names = [];
        for await (const [name] of dir.entries()) if (/^model\.q8_0\.gguf\.\d+$/.test(name)) names.push(name);
        names.sort();
        const last = await dir.getFileHandle(names.at(-1));
        const w = await last.createWritable({ keepExistingData: true });
        await w.seek((await last.getFile()).size);
        await w.write(new Uint8Array(1000).fill(0xee));
        await w.close();
        const extra = await (await dir.getFileHandle(`model.q8_0.gguf.${String(names.length).padStart(5, '0')}`, { create: true })).createWritable();
        await extra.write(new Uint8Array(5000).fill(0xdd));
        await extra.close();
      }
    });
    await other.close();

    // Second visit: only chunks 2 and 3 come over the network; nothing converted is fetched again.
    const mark = requests.length;
    const page = await b.context.newPage();
    page.on('pageerror', (e) => console.error('# page error:', e.message));
    await page.goto(pageUrl(server, QUERY));
    await chooseFile(page, CHELSEA);
    const r = await captionResult(page);
    assert.equal(r.error, null);
    const chunks = Math.ceil(source.length / CHUNK);
    assert.deepEqual(
      weightRanges(requests.slice(mark)),
      Array.from({ length: chunks - 2 }, (_, i) => [(i + 2) * CHUNK, Math.min(source.length, (i + 3) * CHUNK) - 1])
    );
    assert.deepEqual(requests.slice(mark).filter((q) => q.method === 'GET' && q.url.includes('/models/') && !q.url.endsWith(WEIGHTS)), [], 'the small files came from storage');
    const log = await page.evaluate(() => window.gitcap.progressLog);
    assert.equal(log.at(-1).network, source.length - 2 * CHUNK, 'only the missing source bytes came over the network');
    const backend = await page.textContent('#backend');
    const native = nativeCaption(CHELSEA, [], { model: namedCliGguf(), int8: int8FormOfPage(backend) });
    assert.equal(r.data.tokenIds, native.token_ids.join(','));
    assert.equal(r.text, native.text);

    // Stored: gitcap quantize's file, byte for byte; the resume point is gone.
    [kept] = await storedModel(page);
    assert.equal(kept.manifest.complete, true);
    assert.equal(kept.size, want.length);
    assert.equal(kept.sha256, await sha256(want));
    assert.equal(kept.files['model.q8_0.gguf.resume'], undefined);
    assert.deepEqual(Object.keys(kept.files).filter((n) => n.startsWith('model.safetensors')), []);
  } finally {
    await b.close();
    await server.stop();
  }
});

test('a resumed conversion still checks the whole source against its SHA-256', async () => {
  const server = await startServer();
  const b = await launch();
  try {
    const requests = recordRequests(b.context);
    await interruptedVisit(b, server, requests);
    // Second visit: the last chunk arrives with one byte flipped (same length).
    const last = Math.ceil(source.length / CHUNK) - 1;
    await b.context.route(`**${WEIGHTS}`, async (route) => {
      if (route.request().headers()['range'] === `bytes=${last * CHUNK}-${source.length - 1}`) {
        const res = await route.fetch();
        const body = Buffer.from(await res.body());
        body[100] ^= 0xff;
        return route.fulfill({ response: res, body });
      }
      return route.continue();
    });
    const page = await b.context.newPage();
    await page.goto(pageUrl(server, QUERY));
    await page.waitForSelector('#model-status[data-state=error]');
    assert.match(await page.getAttribute('#model-status', 'data-error'), /model\.safetensors is damaged: its SHA-256/);
    // Nothing of the conversion is kept to resume from.
    const [kept] = await storedModel(page);
    assert.deepEqual(Object.keys(kept.files).filter((n) => n.startsWith('model.q8_0.gguf')), [], JSON.stringify(kept.files));
  } finally {
    await b.close();
    await server.stop();
  }
});

test('a damaged resume point is not used: the conversion starts over and still stores the CLI\'s file', async () => {
  const want = fs.readFileSync(namedCliGguf());
  const server = await startServer();
  const b = await launch();
  try {
    const requests = recordRequests(b.context);
    await interruptedVisit(b, server, requests);
    // One byte of the saved converter state flipped (its checksum no longer matches).
    const other = await b.context.newPage();
    await other.goto(`${server.url}icon.svg`);
    await other.evaluate(async () => {
      const root = await (await navigator.storage.getDirectory()).getDirectoryHandle('gitcap-models');
      for await (const [, dir] of root.entries()) {
        const fh = await dir.getFileHandle('model.q8_0.gguf.resume');
        const bytes = new Uint8Array(await (await fh.getFile()).arrayBuffer());
        bytes[bytes.length - 100] ^= 0xff;
        const w = await fh.createWritable();
        await w.write(bytes);
        await w.close();
      }
    });
    await other.close();
    const mark = requests.length;
    const page = await b.context.newPage();
    await page.goto(pageUrl(server, QUERY));
    await chooseFile(page, CHELSEA);
    const r = await captionResult(page);
    assert.equal(r.error, null);
    // From the start: the header, then every chunk.
    const headerLen = Number(source.readBigUInt64LE(0));
    const chunks = Math.ceil(source.length / CHUNK);
    assert.deepEqual(weightRanges(requests.slice(mark)), [
      [0, 7],
      [8, 7 + headerLen],
      ...Array.from({ length: chunks }, (_, i) => [i * CHUNK, Math.min(source.length, (i + 1) * CHUNK) - 1]),
    ]);
    const [kept] = await storedModel(page);
    assert.equal(kept.manifest.complete, true);
    assert.equal(kept.sha256, await sha256(want));
  } finally {
    await b.close();
    await server.stop();
  }
});
