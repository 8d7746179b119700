// Model downloads: an interrupted chunk is fetched again without refetching finished chunks
// (in the same visit, and across a closed page), and a damaged or wrong file is never used.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { gitcapBin, startServer, launch, recordRequests, nativeCaption, pageUrl, captionResult, chooseFile, ensureWasm, IMAGES, TINY, AS_IS } from './helpers.mjs';

const CHELSEA = path.join(IMAGES, 'chelsea.png');
const WEIGHTS = '/models/tiny-coco/model.safetensors';
const SIZE = fs.statSync(path.join(TINY, 'model.safetensors')).size;
const CHUNK = 1024 * 1024; // ?chunk_kib=1024
const N_CHUNKS = Math.ceil(SIZE / CHUNK);

let server;
before(async () => {
  ensureWasm();
  server = await startServer();
});
after(async () => server?.stop());

const rangeOf = (r) => {
  const m = /bytes=(\d+)-(\d+)/.exec(r.range || '');
  return m ? [Number(m[1]), Number(m[2])] : null;
};
const weightGets = (requests) => requests.filter((r) => r.url.endsWith(WEIGHTS) && r.method === 'GET');
const chunkIndex = (r) => rangeOf(r)[0] / CHUNK;

test('a chunk request that fails is retried, without refetching finished chunks', async () => {
  assert.ok(N_CHUNKS >= 3, 'the fixture is large enough for three chunks');
  const b = await launch();
  try {
    const requests = recordRequests(b.context);
    let aborted = 0;
    await b.context.route(`**${WEIGHTS}`, (route) => {
      const r = route.request();
      const range = r.headers()['range'];
      if (r.method() === 'GET' && range === `bytes=${2 * CHUNK}-${3 * CHUNK - 1}` && aborted === 0) {
        aborted++;
        return route.abort('connectionreset');
      }
      return route.continue();
    });
    const page = await b.context.newPage();
    await page.goto(pageUrl(server, { ...AS_IS, chunk_kib: 1024 }));
    await chooseFile(page, CHELSEA);
    const r = await captionResult(page);
    assert.ok(r.done, JSON.stringify(r));
    assert.equal(r.text, nativeCaption(CHELSEA).text);
    assert.equal(aborted, 1);
    const gets = weightGets(requests);
    const counts = new Map();
    for (const g of gets) counts.set(chunkIndex(g), (counts.get(chunkIndex(g)) ?? 0) + 1);
    assert.equal(counts.get(0), 1);
    assert.equal(counts.get(1), 1);
    assert.equal(counts.get(2), 2, 'the aborted chunk was requested again');
    for (let i = 3; i < N_CHUNKS; i++) assert.equal(counts.get(i), 1, `chunk ${i}`);
    assert.equal(gets.length, N_CHUNKS + 1);
  } finally {
    await b.close();
  }
});

test('a download cut off by closing the page resumes where it stopped on the next visit', async () => {
  const b = await launch();
  try {
    const requests = recordRequests(b.context);
    // First visit: chunk 2 never answers; once it is asked for, chunks 0 and 1 are stored.
    let held = null;
    const asked = new Promise((resolve) => {
      b.context.route(`**${WEIGHTS}`, (route) => {
        const range = route.request().headers()['range'];
        if (range === `bytes=${2 * CHUNK}-${3 * CHUNK - 1}` && !held) {
          held = route;
          resolve();
          return; // left hanging, like a dropped connection
        }
        return route.continue();
      });
    });
    const page = await b.context.newPage();
    await page.goto(pageUrl(server, { ...AS_IS, chunk_kib: 1024 }));
    await asked;
    await page.close();
    await b.context.unrouteAll({ behavior: 'ignoreErrors' });
    const first = weightGets(requests).map(chunkIndex);
    assert.deepEqual(first, [0, 1, 2]);

    // Second visit: only the missing chunks are fetched.
    const mark = requests.length;
    const page2 = await b.context.newPage();
    await page2.goto(pageUrl(server, { ...AS_IS, chunk_kib: 1024 }));
    await chooseFile(page2, CHELSEA);
    const r = await captionResult(page2);
    assert.ok(r.done, JSON.stringify(r));
    assert.equal(r.text, nativeCaption(CHELSEA).text);
    const second = weightGets(requests.slice(mark)).map(chunkIndex);
    assert.deepEqual(second, Array.from({ length: N_CHUNKS - 2 }, (_, i) => i + 2));
    // Progress counted the stored chunks as done from the start.
    const log = await page2.evaluate(() => window.gitcap.progressLog);
    assert.ok(log.length > 0);
    assert.equal(log.at(-1).network, SIZE - 2 * CHUNK, 'only the missing bytes came over the network');
  } finally {
    await b.close();
  }
});

test('a damaged download is rejected by its SHA-256 and never stored', async () => {
  const b = await launch();
  try {
    let corrupt = true;
    await b.context.route(`**${WEIGHTS}`, async (route) => {
      const range = route.request().headers()['range'];
      if (corrupt && range === `bytes=${CHUNK}-${2 * CHUNK - 1}`) {
        const res = await route.fetch();
        const body = Buffer.from(await res.body());
        body[100] ^= 0xff; // same length, one byte flipped
        return route.fulfill({ response: res, body });
      }
      return route.continue();
    });
    const page = await b.context.newPage();
    await page.goto(pageUrl(server, { ...AS_IS, chunk_kib: 1024 }));
    await page.waitForSelector('#model-status[data-state=error]');
    const msg = await page.getAttribute('#model-status', 'data-error');
    assert.match(msg, /SHA-256/);
    const info = await page.evaluate(async () => {
      const root = await navigator.storage.getDirectory();
      const names = [];
      for await (const [n, h] of root.entries()) {
        if (h.kind !== 'directory') continue;
        for await (const [m, hh] of h.entries()) {
          if (hh.kind !== 'directory') continue;
          for await (const [f] of hh.entries()) names.push(f);
        }
      }
      return names;
    });
    assert.ok(!info.some((n) => n.startsWith('model.safetensors.')), `stored after a failed check: ${info}`);

    // "Try again" with an honest network: the model loads.
    corrupt = false;
    await page.click('#retry-load');
    await chooseFile(page, CHELSEA);
    const r = await captionResult(page);
    assert.ok(r.done, JSON.stringify(r));
  } finally {
    await b.close();
  }
});

test('an HTML error page in place of the weights is refused', async () => {
  const b = await launch();
  try {
    await b.context.route(`**${WEIGHTS}`, (route) =>
      route.fulfill({ status: 200, contentType: 'text/html', body: '<!doctype html><title>Oops</title><h1>Something went wrong</h1>' })
    );
    const page = await b.context.newPage();
    await page.goto(pageUrl(server, AS_IS));
    await page.waitForSelector('#model-status[data-state=error]');
    assert.match(await page.getAttribute('#model-status', 'data-error'), /HTML/);
    await page.setInputFiles('input[type=file]', CHELSEA);
    const r = await captionResult(page);
    assert.match(r.error, /not loaded/);
  } finally {
    await b.close();
  }
});

test('a model that does not fit the storage quota is refused plainly, and can be loaded without saving', async () => {
  const b = await launch();
  try {
    const requests = recordRequests(b.context);
    const page = await b.context.newPage();
    // Chromium enforces this quota on writes (navigator.storage.estimate() does not show it, so
    // this exercises the refusal in the middle of the download).
    const cdp = await b.context.newCDPSession(page);
    await cdp.send('Storage.overrideQuotaForOrigin', { origin: new URL(server.url).origin, quotaSize: 1_500_000 });
    await page.goto(pageUrl(server, { ...AS_IS, chunk_kib: 1024 }));
    await page.waitForSelector('#model-status[data-state=error]');
    const msg = await page.getAttribute('#model-status', 'data-error');
    assert.match(msg, /needs 4\.\d MB of storage/);
    assert.match(msg, /without saving/);
    assert.ok(await page.isVisible('#load-nosave'));
    assert.match(await page.textContent('#storage-text'), /No models stored/, 'the partial download was removed');

    await page.click('#load-nosave');
    await page.waitForSelector('#model-status[data-state=ready]');
    assert.match(await page.textContent('#model-status'), /not stored/);
    await chooseFile(page, CHELSEA);
    const r = await captionResult(page);
    assert.ok(r.done, JSON.stringify(r));
    assert.match(await page.textContent('#storage-text'), /No models stored/);
  } finally {
    await b.close();
  }
});

test('the default store (q8_0): a quota refusal in the middle of the download says what the converted model needs', async () => {
  // What the page would keep: gitcap quantize's file for the folder and the small files.
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'gitcap-quota-q8-'));
  const out = path.join(dir, 'q8.gguf');
  const q = spawnSync(path.resolve(gitcapBin()), ['quantize', '--model', 'tiny-coco', '--out', out, '--type', 'q8_0', '--quiet'], { cwd: path.dirname(TINY), encoding: 'utf8' });
  assert.equal(q.status, 0, q.stderr);
  const small = ['config.json', 'tokenizer.json', 'tokenizer_config.json', 'preprocessor_config.json', 'generation_config.json'];
  const keeps = fs.statSync(out).size + small.reduce((n, f) => n + fs.statSync(path.join(TINY, f)).size, 0);
  fs.rmSync(dir, { recursive: true, force: true });
  const b = await launch();
  try {
    const page = await b.context.newPage();
    const cdp = await b.context.newCDPSession(page);
    await cdp.send('Storage.overrideQuotaForOrigin', { origin: new URL(server.url).origin, quotaSize: 1_500_000 });
    await page.goto(pageUrl(server, { chunk_kib: 256 }));
    await page.waitForSelector('#model-status[data-state=error]');
    const msg = await page.getAttribute('#model-status', 'data-error');
    assert.ok(msg.startsWith(`The model needs ${(keeps / 1e6).toFixed(1)} MB of storage`), msg);
    assert.ok(keeps < SIZE, 'less than the f32 source alone');
    assert.match(await page.textContent('#storage-text'), /No models stored/, 'the partial download was removed');
  } finally {
    await b.close();
  }
});
