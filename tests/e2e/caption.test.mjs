// The page in headless Chromium against `gitcap serve` and the tiny fixture model: captions
// stream and match the native CLI, the model is stored after the first visit, cancelling works,
// bad files are reported, alt text a person wrote is kept, and nothing leaves the origin.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {
  startServer, launch, recordRequests, nativeCaption, pageUrl, captionResult, chooseFile,
  ensureWasm, gitcapBin, int8FormOfPage, IMAGES, ROOT, TINY, AS_IS,
} from './helpers.mjs';

const CHELSEA = path.join(IMAGES, 'chelsea.png');
const ROCKET = path.join(IMAGES, 'rocket.jpg');
const reference = JSON.parse(fs.readFileSync(path.join(ROOT, 'tests/fixtures/reference/tiny-coco.json'), 'utf8'));

let server;
let browser;
let page;
let requests;

before(async () => {
  ensureWasm();
  server = await startServer();
  browser = await launch();
  requests = recordRequests(browser.context);
  page = browser.context.pages()[0] ?? (await browser.context.newPage());
  page.on('pageerror', (e) => console.error('# page error:', e.message));
});
after(async () => {
  await browser?.close();
  await server?.stop();
});

const weightRequests = () => requests.filter((r) => r.url.includes('/models/tiny-coco/'));

test('first visit: downloads with progress, streams a caption equal to the native CLI', async () => {
  const native = nativeCaption(CHELSEA);
  await page.goto(pageUrl(server, { ...AS_IS, chunk_kib: 1024 }));
  await chooseFile(page, CHELSEA);
  const r = await captionResult(page);
  assert.equal(r.error, null);
  assert.ok(r.done);
  assert.equal(r.text, native.text);
  assert.equal(r.data.tokenIds, native.token_ids.join(','));
  // It arrived in pieces, not all at once.
  assert.ok(Number(r.data.fragments) > 1, `fragments: ${r.data.fragments}`);
  for (const k of ['encodeMs', 'totalMs', 'tokens', 'perTokenMs', 'wasmBytes']) assert.ok(k in r.data, k);

  // Download progress was reported, ending at the total.
  const log = await page.evaluate(() => window.gitcap.progressLog);
  const downloads = log.filter((p) => p.phase === 'download');
  assert.ok(downloads.length >= 2, `progress reports: ${JSON.stringify(log)}`);
  const total = fs.readdirSync(TINY)
    .filter((f) => ['config.json', 'tokenizer.json', 'tokenizer_config.json', 'preprocessor_config.json', 'generation_config.json', 'model.safetensors'].includes(f))
    .reduce((s, f) => s + fs.statSync(path.join(TINY, f)).size, 0);
  assert.equal(downloads.at(-1).total, total);
  assert.equal(log.at(-1).done, total);
  assert.ok(downloads.some((p) => p.done > 0 && p.done < total), 'intermediate progress');
  const status = await page.$eval('#model-status', (e) => ({ ...e.dataset }));
  assert.equal(status.state, 'ready');
  assert.equal(status.fromCache, 'false');

  // The backend and thread count are shown.
  const backend = await page.textContent('#backend');
  assert.match(backend, /WebAssembly SIMD/);
  assert.match(backend, /\d+ threads?/);
  // The caption was announced and offered as alt text.
  assert.equal(await page.inputValue('#alt'), native.text);
  assert.equal(await page.textContent('#announce'), `Caption: ${native.text}`);
});

test('a second visit loads the stored model without fetching any model file', async () => {
  const before = weightRequests().length;
  assert.ok(before > 0);
  await page.reload();
  await page.waitForSelector('#model-status[data-state=ready]');
  assert.equal(await page.getAttribute('#model-status', 'data-from-cache'), 'true');
  await chooseFile(page, CHELSEA);
  const r = await captionResult(page);
  assert.equal(r.text, nativeCaption(CHELSEA).text);
  assert.deepEqual(weightRequests().slice(before), [], 'no request for model files on the second visit');
  const stored = await page.textContent('#storage-text');
  assert.match(stored, /tiny-coco/);
});

test('options from the query: beam search and a prompt match the reference', async () => {
  const beam = reference.cases[0].beam3_lp1;
  await page.goto(pageUrl(server, { ...AS_IS, beams: 3, length_penalty: 1, max_new_tokens: beam.options.max_new_tokens }));
  await chooseFile(page, CHELSEA);
  let r = await captionResult(page);
  assert.equal(r.text, beam.text);
  assert.equal(r.data.tokenIds, beam.token_ids.join(','));

  const pr = reference.cases[0].prompt_greedy;
  await page.goto(pageUrl(server, { ...AS_IS, prompt: pr.prompt, max_new_tokens: pr.options.max_new_tokens }));
  await chooseFile(page, CHELSEA);
  r = await captionResult(page);
  assert.equal(r.text, pr.text);
});

test('a q8_0 GGUF model: the integer kernel runs in the page and gives the CLI\'s ids', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'gitcap-caption-q8_0-'));
  const file = path.join(dir, 'tiny-q8_0.gguf');
  const q8Server = await (async () => {
    const q = spawnSync(gitcapBin(), ['quantize', '--model', TINY, '--out', file, '--type', 'q8_0'], { cwd: ROOT, encoding: 'utf8' });
    assert.equal(q.status, 0, q.stderr);
    return startServer({ modelDirs: [dir] });
  })();
  // A browser of its own: this server is another origin, which the shared session's
  // no-request-leaves-the-origin test must never see.
  const own = await launch();
  try {
    const page = own.context.pages()[0] ?? (await own.context.newPage());
    page.on('pageerror', (e) => console.error('# page error:', e.message));
    // tiny-coco's vision products have 17 rows: the integer kernel's (8 or more), in q8_0.
    await page.goto(pageUrl(q8Server, { model: `/models/${path.basename(dir)}/tiny-q8_0.gguf`, nosave: '1', threads: '1' }));
    await chooseFile(page, CHELSEA);
    const r = await captionResult(page);
    assert.equal(r.error, null);
    const backend = await page.textContent('#backend');
    assert.match(backend, /q8_0: wasm (SIMD128 i16 dot|relaxed SIMD int8 dot)/);
    assert.ok(Number(r.data.int8Products) > 0, `the integer kernel did not run: ${r.data.int8Products}`);
    // fc2 (64 inputs) is paired by the quantizer: it steps per pair of blocks.
    assert.ok(Number(r.data.int8PairedProducts) > 0, `no product stepped per pair: ${r.data.int8PairedProducts}`);
    const int8 = int8FormOfPage(backend);
    const native = nativeCaption(CHELSEA, [], { model: file, int8 });
    assert.equal(r.data.tokenIds, native.token_ids.join(','), `page (${int8}) vs CLI`);
    assert.equal(r.text, native.text);
  } finally {
    await own.close();
    await q8Server.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('cancel stops a caption between tokens', async () => {
  await page.goto(pageUrl(server, { ...AS_IS, max_new_tokens: 20 }));
  const full = nativeCaption(CHELSEA);
  const bytes = fs.readFileSync(CHELSEA).toString('base64');
  // Start and cancel in the same page task: the worker yields to its event loop before every
  // token, so it sees the cancel before producing the first one.
  await page.evaluate((b64) => {
    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    window.gitcap.captionBytes(bytes.buffer, 'chelsea.png', 'image/png');
    window.gitcap.cancel();
  }, bytes);
  const r = await captionResult(page);
  assert.ok(r.cancelled, JSON.stringify(r));
  assert.ok(!r.done);
  assert.ok(r.text.length < full.text.length, `cancelled caption "${r.text}"`);
  // The worker is free again: the next caption completes.
  await chooseFile(page, CHELSEA);
  const next = await captionResult(page);
  assert.ok(next.done);
  assert.equal(next.text, full.text);
});

test('a file that is not an image shows an error, and the next image still works', async () => {
  await page.goto(pageUrl(server, AS_IS));
  await page.setInputFiles('input[type=file]', { name: 'notes.txt', mimeType: 'text/plain', buffer: Buffer.from('hello') });
  let r = await captionResult(page);
  assert.match(r.error, /not an image/);
  assert.ok(await page.isVisible('#caption'));

  // Claims to be a PNG but is not: the decoder's error reaches the page.
  await page.setInputFiles('input[type=file]', { name: 'broken.png', mimeType: 'image/png', buffer: Buffer.from('definitely not a png') });
  r = await captionResult(page);
  assert.ok(r.error, JSON.stringify(r));
  assert.match(r.error, /image/i);

  await chooseFile(page, ROCKET);
  r = await captionResult(page);
  assert.ok(r.done);
  assert.equal(r.text, nativeCaption(ROCKET).text);
});

test('alt text a person wrote is never overwritten', async () => {
  await page.goto(pageUrl(server, AS_IS));
  await page.waitForSelector('#model-status[data-state=ready]');
  const bytes = fs.readFileSync(CHELSEA).toString('base64');
  await page.evaluate((b64) => {
    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    window.gitcap.captionBytes(bytes.buffer, 'chelsea.png', 'image/png');
    const alt = document.getElementById('alt');
    alt.value = 'My cat Chelsea on the sofa';
    alt.dispatchEvent(new Event('input', { bubbles: true }));
  }, bytes);
  const r = await captionResult(page);
  assert.ok(r.done);
  assert.equal(await page.inputValue('#alt'), 'My cat Chelsea on the sofa');
  assert.equal(await page.getAttribute('#preview', 'aria-label'), 'My cat Chelsea on the sofa');
  assert.ok(await page.isVisible('#use-caption'));
  await page.click('#use-caption');
  assert.equal(await page.inputValue('#alt'), r.text);
});

test('keyboard: the file picker is reachable with Tab', async () => {
  await page.goto(pageUrl(server, AS_IS));
  let found = false;
  for (let i = 0; i < 12 && !found; i++) {
    await page.keyboard.press('Tab');
    found = await page.evaluate(() => document.activeElement?.id === 'file');
  }
  assert.ok(found, 'Tab reaches the file input');
});

test('while captioning, no request leaves the page origin', async () => {
  await page.goto(pageUrl(server, AS_IS));
  await page.waitForSelector('#model-status[data-state=ready]');
  const start = requests.length;
  await chooseFile(page, ROCKET);
  const r = await captionResult(page);
  assert.ok(r.done);
  const during = requests.slice(start);
  const origin = new URL(server.url).origin;
  for (const q of during) {
    const u = new URL(q.url);
    assert.ok(u.protocol === 'blob:' || u.protocol === 'data:' || u.origin === origin, `request to ${q.url}`);
  }
  // Nothing was sent with a body (no upload of any kind).
  assert.ok(during.every((q) => q.method === 'GET' || q.method === 'HEAD'), JSON.stringify(during));
  // And over the whole session, every request stayed on this origin.
  for (const q of requests) {
    const u = new URL(q.url);
    assert.ok(u.protocol !== 'http:' && u.protocol !== 'https:' || u.origin === origin, `request to ${q.url}`);
  }
});

test('a browser without WebAssembly SIMD gets a clear message', async () => {
  const p = await browser.context.newPage();
  await p.addInitScript(() => {
    const validate = WebAssembly.validate;
    WebAssembly.validate = (bytes) => (bytes.length < 64 ? false : validate(bytes));
  });
  await p.goto(pageUrl(server));
  await p.waitForSelector('#fatal:not([hidden])');
  assert.match(await p.textContent('#fatal'), /SIMD/);
  assert.equal(await p.getAttribute('#model-status', 'data-state'), 'error');
  await p.close();
});
