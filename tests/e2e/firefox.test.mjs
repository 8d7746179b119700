// The page in Firefox: Debian's firefox-esr, driven by puppeteer-core over WebDriver BiDi (no tool
// downloads a browser). The single-threaded and (with ./test.sh --full) threaded builds caption
// with the native CLI's ids, a q8_0 GGUF runs the integer kernel, the Content-Security-Policy
// blocks a request to another origin, the model is stored (by default converted to q8_0) and read
// back on a second visit, a download cut off by closing the page resumes where it stopped (kept
// as it is, and converted), the page works offline after one visit, and a cancelled caption
// leaves the worker working. The other browser tests run in Chromium.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import puppeteer from 'puppeteer-core';
import {
  startServer, nativeCaption, pageUrl, ensureWasm, int8FormOfPage, gitcapBin, IMAGES, TINY, WWW, AS_IS,
} from './helpers.mjs';

const FIREFOX = process.env.FIREFOX || '/usr/bin/firefox-esr';
const CHELSEA = path.join(IMAGES, 'chelsea.png');
const ROCKET = path.join(IMAGES, 'rocket.jpg');
const noThreads = process.env.GITCAP_E2E_NO_THREADS === '1' && 'the threaded build was not built (./test.sh without --full)';

let server;
let ggufDir;

before(async () => {
  ensureWasm();
  assert.ok(fs.existsSync(FIREFOX), `${FIREFOX} is missing: apt-get install firefox-esr (test.sh --browser does)`);
  ggufDir = fs.mkdtempSync(path.join(os.tmpdir(), 'gitcap-ff-gguf-'));
  const q = spawnSync(gitcapBin(), ['quantize', '--model', TINY, '--out', path.join(ggufDir, 'tiny-q8_0.gguf'), '--quiet'], { encoding: 'utf8' });
  assert.equal(q.status, 0, q.stderr);
  server = await startServer({ modelDirs: [TINY, ggufDir] });
});

after(async () => {
  await server?.stop();
  if (ggufDir) fs.rmSync(ggufDir, { recursive: true, force: true });
});

async function launchFirefox() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'gitcap-ff-'));
  const browser = await puppeteer.launch({ browser: 'firefox', executablePath: FIREFOX, headless: true, userDataDir: dir });
  return {
    browser,
    async close() {
      await browser.close().catch(() => {});
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** Opens the page with `query`, captions `image`; the caption's state and the backend line. */
async function captionIn(browser, query, image) {
  const page = await newPage(browser);
  await page.goto(pageUrl(server, query));
  await uploadAndCaption(page, image);
  const result = await page.$eval('#caption', (c) => ({ text: c.textContent, data: { ...c.dataset } }));
  const backend = await page.$eval('#backend', (e) => ({ text: e.textContent, ...e.dataset }));
  return { page, result, backend };
}

/** A new page with the suite's timeout. */
async function newPage(browser) {
  const page = await browser.newPage();
  page.setDefaultTimeout(180_000);
  return page;
}

/** Uploads `image` into the open page and returns the finished caption's token ids. */
async function uploadAndCaption(page, image) {
  const input = await page.waitForSelector('input[type=file]');
  await input.uploadFile(image);
  await page.waitForSelector('#caption[data-done], #caption[data-error]');
  return page.$eval('#caption', (c) => c.dataset.tokenIds);
}

test('Firefox: the single-threaded page captions with the native CLI ids', async () => {
  const ff = await launchFirefox();
  try {
    const native = nativeCaption(CHELSEA);
    const { result, backend } = await captionIn(ff.browser, { ...AS_IS, threads: '1' }, CHELSEA);
    assert.equal(result.data.error, undefined, result.data.error);
    assert.equal(result.data.tokenIds, native.token_ids.join(','));
    assert.equal(result.text, native.text);
    assert.match(backend.text, /WebAssembly SIMD/);
    assert.equal(backend.threads, '1', backend.text);
  } finally {
    await ff.close();
  }
});

test('Firefox: the threaded page splits its products and captions with the native CLI ids', { skip: noThreads }, async () => {
  const ff = await launchFirefox();
  try {
    const native = nativeCaption(ROCKET, ['--beams', '4']);
    // split_min=0: the tiny model's products are far below the size the page splits by default.
    const { result, backend } = await captionIn(ff.browser, { ...AS_IS, beams: '4', split_min: '0' }, ROCKET);
    assert.equal(result.data.error, undefined, result.data.error);
    assert.equal(backend.threaded, 'true', backend.text);
    assert.ok(Number(backend.threads) >= 2, backend.text);
    assert.ok(Number(result.data.splits) > 0, 'the model split its products across the threads');
    assert.equal(result.data.tokenIds, native.token_ids.join(','));
  } finally {
    await ff.close();
  }
});

test('Firefox: a q8_0 GGUF model runs the integer kernel and gives the CLI ids', async () => {
  const ff = await launchFirefox();
  try {
    const file = path.join(ggufDir, 'tiny-q8_0.gguf');
    const model = `/models/${path.basename(ggufDir)}/tiny-q8_0.gguf`;
    const { result, backend } = await captionIn(ff.browser, { model, threads: '1' }, CHELSEA);
    assert.equal(result.data.error, undefined, result.data.error);
    assert.match(backend.text, /q8_0: wasm/);
    assert.ok(Number(result.data.int8Products) > 0, 'integer products ran');
    const native = nativeCaption(CHELSEA, [], { model: file, int8: int8FormOfPage(backend.text) });
    assert.equal(result.data.tokenIds, native.token_ids.join(','));
  } finally {
    await ff.close();
  }
});

test('Firefox: the Content-Security-Policy blocks a request to another origin', async () => {
  const hits = [];
  const sink = http.createServer((req, res) => {
    hits.push(req.url);
    req.resume();
    res.writeHead(200, { 'access-control-allow-origin': '*' });
    res.end('ok');
  });
  await new Promise((resolve) => sink.listen(0, '127.0.0.1', resolve));
  const origin = `http://127.0.0.1:${sink.address().port}`;
  const ff = await launchFirefox();
  try {
    const { page, result } = await captionIn(ff.browser, { threads: '1' }, CHELSEA);
    assert.equal(result.data.error, undefined, result.data.error);
    const outcome = await page.evaluate(
      (url) => fetch(url, { method: 'POST', mode: 'no-cors', body: 'image bytes' }).then(() => 'sent', () => 'blocked'),
      `${origin}/from-page`
    );
    assert.equal(outcome, 'blocked');
    assert.deepEqual(hits, []);
  } finally {
    await ff.close();
    await new Promise((r) => {
      sink.close(r);
      sink.closeAllConnections();
    });
  }
});

/** gitcap quantize's q8_0 file for tiny-coco, named as the page names it (the folder's name). */
function namedQ8() {
  const out = path.join(ggufDir, 'tiny-coco-named.gguf');
  if (!fs.existsSync(out)) {
    const q = spawnSync(path.resolve(gitcapBin()), ['quantize', '--model', 'tiny-coco', '--out', out, '--quiet'], { cwd: path.dirname(TINY), encoding: 'utf8' });
    assert.equal(q.status, 0, q.stderr);
  }
  return out;
}

test('Firefox: the model is stored (the default: converted to q8_0), and a second visit loads it from the store', async () => {
  const ff = await launchFirefox();
  try {
    const page = await newPage(ff.browser);
    await page.goto(pageUrl(server, { threads: '1', chunk_kib: '256' }));
    await page.waitForSelector('#model-status[data-state=ready]');
    assert.notEqual(await page.$eval('#model-status', (e) => e.dataset.fromCache), 'true', 'the first visit downloads');
    await page.reload();
    await page.waitForSelector('#model-status[data-state=ready]');
    assert.equal(await page.$eval('#model-status', (e) => e.dataset.fromCache), 'true', 'the second visit reads the store');
    const backend = await page.$eval('#backend', (e) => e.textContent);
    const native = nativeCaption(CHELSEA, [], { model: namedQ8(), int8: int8FormOfPage(backend) });
    assert.equal(await uploadAndCaption(page, CHELSEA), native.token_ids.join(','));
    const stored = await page.evaluate(async () => {
      const root = await (await navigator.storage.getDirectory()).getDirectoryHandle('gitcap-models');
      let bytes = 0;
      for await (const [, dir] of root.entries()) {
        for await (const [name, h] of dir.entries()) if (/^model\.q8_0\.gguf\.\d+$/.test(name)) bytes += (await h.getFile()).size;
      }
      return bytes;
    });
    assert.equal(stored, fs.statSync(namedQ8()).size);
    assert.match(await page.$eval('#storage-text', (e) => e.textContent), /tiny-coco/);
  } finally {
    await ff.close();
  }
});

test('Firefox: cancel stops a caption between tokens, and the next caption works', async () => {
  const ff = await launchFirefox();
  try {
    const native = nativeCaption(CHELSEA);
    const page = await newPage(ff.browser);
    await page.goto(pageUrl(server, { ...AS_IS, threads: '1', nosave: '1', max_new_tokens: '20' }));
    await page.waitForSelector('#model-status[data-state=ready]');
    const b64 = fs.readFileSync(CHELSEA).toString('base64');
    // Start and cancel in the same page task: the worker sees the cancel before the first token.
    await page.evaluate((data) => {
      const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
      window.gitcap.captionBytes(bytes.buffer, 'chelsea.png', 'image/png');
      window.gitcap.cancel();
    }, b64);
    await page.waitForSelector('#caption[data-done], #caption[data-error], #caption[data-cancelled]');
    const cancelled = await page.$eval('#caption', (c) => ({ cancelled: c.hasAttribute('data-cancelled'), text: c.textContent }));
    assert.ok(cancelled.cancelled, JSON.stringify(cancelled));
    assert.ok(cancelled.text.length < native.text.length, `cancelled caption "${cancelled.text}"`);
    assert.equal(await uploadAndCaption(page, CHELSEA), native.token_ids.join(','));
  } finally {
    await ff.close();
  }
});

/**
 * A pass-through HTTP server in front of `upstream` (so that the page's origin is this one), which
 * records every GET of `file` and leaves unanswered, like a dropped connection, the requests
 * `hold(range)` picks: Firefox's own request interception does not see a worker's fetches.
 */
function holdingProxy(upstream, file, hold) {
  const target = new URL(upstream.url);
  const ranges = [];
  const held = [];
  let asked;
  const heldOnce = new Promise((resolve) => (asked = resolve));
  const proxy = http.createServer((req, res) => {
    if (req.method === 'GET' && req.url.split('?')[0] === file) {
      ranges.push(req.headers.range ?? null);
      if (hold(req.headers.range ?? null)) {
        held.push(res);
        asked();
        return;
      }
    }
    const headers = { ...req.headers, host: target.host };
    const up = http.request({ host: target.hostname, port: target.port, path: req.url, method: req.method, headers }, (r) => {
      res.writeHead(r.statusCode, r.headers);
      r.pipe(res);
    });
    up.on('error', () => res.destroy());
    req.pipe(up);
  });
  return new Promise((resolve) => {
    proxy.listen(0, '127.0.0.1', () => {
      resolve({
        url: `http://127.0.0.1:${proxy.address().port}/`,
        ranges,
        heldOnce,
        stop: () =>
          new Promise((r) => {
            held.splice(0).forEach((res) => res.destroy());
            proxy.close(r);
            proxy.closeAllConnections();
          }),
      });
    });
  });
}

/** A visit cut off (chunk 2 of 1 MiB chunks never answered, the page closed), then another:
 *  the second fetches only the missing chunks and captions with the CLI's ids. */
async function cutOffAndResume(store) {
  const weights = '/models/tiny-coco/model.safetensors';
  const size = fs.statSync(path.join(TINY, 'model.safetensors')).size;
  const chunk = 1024 * 1024; // ?chunk_kib=1024
  const chunks = Math.ceil(size / chunk);
  assert.ok(chunks >= 3, 'the fixture is large enough for three chunks');
  const range = (i) => `bytes=${i * chunk}-${Math.min(size, (i + 1) * chunk) - 1}`;
  let first = true;
  // Chunk 2 is never answered on the first visit: by then chunks 0 and 1 are stored (as they
  // are, or converted with their resume point saved).
  const proxy = await holdingProxy(server, weights, (r) => first && r === range(2));
  const query = { threads: '1', chunk_kib: '1024', ...(store ? { store } : {}) };
  const ff = await launchFirefox();
  try {
    const page = await newPage(ff.browser);
    await page.goto(pageUrl(proxy, query));
    await proxy.heldOnce;
    await page.close();
    // The held request stays unanswered (released when the proxy stops): answering it with an
    // error now let the closed page's worker, not yet gone, try chunk 2 again.
    first = false;
    // Converting, the source's header comes first (the converted size, for the quota check).
    const headerLen = Number(fs.readFileSync(path.join(TINY, 'model.safetensors')).readBigUInt64LE(0));
    const header = store === 'as-is' ? [] : ['bytes=0-7', `bytes=8-${7 + headerLen}`];
    assert.deepEqual(proxy.ranges, [...header, range(0), range(1), range(2)]);

    // Second visit, same profile: only the missing chunks come over the network.
    const mark = proxy.ranges.length;
    const page2 = await newPage(ff.browser);
    await page2.goto(pageUrl(proxy, query));
    const ids = await uploadAndCaption(page2, CHELSEA);
    const backend = await page2.$eval('#backend', (e) => e.textContent);
    const native = store === 'as-is' ? nativeCaption(CHELSEA) : nativeCaption(CHELSEA, [], { model: namedQ8(), int8: int8FormOfPage(backend) });
    assert.equal(ids, native.token_ids.join(','));
    assert.deepEqual(proxy.ranges.slice(mark), Array.from({ length: chunks - 2 }, (_, i) => range(i + 2)));
  } finally {
    await ff.close();
    await proxy.stop();
  }
}

test('Firefox: a download cut off by closing the page resumes where it stopped on the next visit', () => cutOffAndResume('as-is'));

test('Firefox: a conversion (the default store) cut off by closing the page resumes from its saved point', () => cutOffAndResume(null));

test('Firefox: the page works offline after the first visit', async () => {
  const own = await startServer();
  const ff = await launchFirefox();
  try {
    const native = nativeCaption(CHELSEA);
    const page = await newPage(ff.browser);
    await page.goto(pageUrl(own, { ...AS_IS, threads: '1' }));
    // The service worker's install: if it stalls it never recovers, so say so well before 180 s.
    await page.waitForSelector('html[data-offline-ready]', { timeout: 60_000 });
    await page.waitForSelector('#model-status[data-state=ready]');
    // No network at all from here on.
    await own.stop();
    await page.reload();
    await page.waitForSelector('#model-status[data-state=ready]');
    assert.equal(await page.$eval('#model-status', (e) => e.dataset.fromCache), 'true');
    assert.equal(await uploadAndCaption(page, CHELSEA), native.token_ids.join(','));
  } finally {
    await ff.close();
    await own.stop();
  }
});
