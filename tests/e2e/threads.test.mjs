// The threaded WebAssembly build: a cross-origin isolated page captions on every core and gives
// the native CLI's token ids (dense and q8_0); served without COOP/COEP, or asked for one thread,
// the page falls back to the single-threaded build, says why, and gives the same ids.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {
  startServer, launch, nativeCaption, pageUrl, captionResult, chooseFile, ensureWasm, gitcapBin, int8FormOfPage,
  IMAGES, ROOT, TINY, WWW, AS_IS,
} from './helpers.mjs';

const CHELSEA = path.join(IMAGES, 'chelsea.png');
const ROCKET = path.join(IMAGES, 'rocket.jpg');

let isolated;
let plain;
let ggufDir;

// test.sh builds the threaded page only with --full (CI's time limit); it says so here rather
// than letting these tests fail on a page it chose not to build. Anywhere else a missing
// www/pkg-threads is a failure.
const skip = process.env.GITCAP_E2E_NO_THREADS === '1' && 'the threaded build was not built (./test.sh without --full)';

before(async () => {
  if (skip) return;
  ensureWasm();
  assert.ok(
    fs.existsSync(path.join(WWW, 'pkg-threads/gitcap.js')),
    'www/pkg-threads is missing: bash build.sh builds it (without --no-threads)'
  );
  // The tiny model as q8_0 GGUF, so the quantized split path runs in the browser too.
  ggufDir = fs.mkdtempSync(path.join(os.tmpdir(), 'gitcap-threads-'));
  const q = spawnSync(gitcapBin(), ['quantize', '--model', TINY, '--out', path.join(ggufDir, 'tiny-q8_0.gguf'), '--type', 'q8_0'], {
    cwd: ROOT,
    encoding: 'utf8',
  });
  assert.equal(q.status, 0, q.stderr);
  isolated = await startServer({ modelDirs: [TINY, ggufDir] });
  plain = await startServer({ isolation: false });
});
after(async () => {
  await isolated?.stop();
  await plain?.stop();
  if (ggufDir) fs.rmSync(ggufDir, { recursive: true, force: true });
});

/** Opens the page, captions `image`, and returns the caption with the backend's dataset and text. */
async function captionIn(server, query, image) {
  const browser = await launch();
  try {
    const page = browser.context.pages()[0] ?? (await browser.context.newPage());
    page.on('pageerror', (e) => console.error('# page error:', e.message));
    // split_min=0: the tiny model's products are far below the size the page splits by default.
    await page.goto(pageUrl(server, { nosave: '1', split_min: '0', ...AS_IS, ...query }));
    await chooseFile(page, image);
    const result = await captionResult(page);
    const backend = await page.$eval('#backend', (e) => ({ text: e.textContent, ...e.dataset }));
    const cores = await page.evaluate(() => navigator.hardwareConcurrency);
    return { result, backend, cores };
  } finally {
    await browser.close();
  }
}

test('cross-origin isolated: the threaded build uses every core and matches the native CLI', { skip }, async () => {
  const native = nativeCaption(CHELSEA);
  const { result, backend, cores } = await captionIn(isolated, {}, CHELSEA);
  assert.equal(result.error, null);
  assert.equal(result.data.tokenIds, native.token_ids.join(','));
  assert.equal(result.text, native.text);
  assert.equal(backend.threaded, 'true', backend.text);
  assert.equal(Number(backend.threads), Math.min(cores, 16), backend.text);
  assert.ok(Number(backend.threads) >= 2, `this test needs at least 2 cores: ${backend.text}`);
  assert.match(backend.text, new RegExp(`· ${backend.threads} threads ·`));
  assert.ok(Number(result.data.splits) > 0, 'the model split its products across the threads');
  assert.doesNotMatch(backend.text, /single-threaded/);
});

test('threaded: 4-beam search and an odd thread count match the native CLI', { skip }, async () => {
  const native = nativeCaption(ROCKET, ['--beams', '4']);
  const { result, backend } = await captionIn(isolated, { beams: '4', threads: '3' }, ROCKET);
  assert.equal(result.error, null);
  assert.equal(backend.threads, '3', backend.text);
  assert.ok(Number(result.data.splits) > 0);
  assert.equal(result.data.tokenIds, native.token_ids.join(','));
});

test('threaded: a q8_0 GGUF model matches the native CLI on the same file', { skip }, async () => {
  const file = path.join(ggufDir, 'tiny-q8_0.gguf');
  const model = `/models/${path.basename(ggufDir)}/tiny-q8_0.gguf`;
  const { result, backend } = await captionIn(isolated, { model }, CHELSEA);
  assert.equal(result.error, null);
  assert.equal(backend.threaded, 'true', backend.text);
  assert.ok(Number(result.data.splits) > 0);
  assert.match(backend.text, /q8_0: wasm/);
  const int8 = int8FormOfPage(backend.text);
  const native = nativeCaption(CHELSEA, [], { model: file, int8 });
  assert.equal(result.data.tokenIds, native.token_ids.join(','), `page (${int8}) vs CLI`);
});

test('without COOP/COEP the page falls back to one thread, says why, and matches the native CLI', { skip }, async () => {
  const native = nativeCaption(CHELSEA);
  const { result, backend } = await captionIn(plain, {}, CHELSEA);
  assert.equal(result.error, null);
  assert.equal(result.data.tokenIds, native.token_ids.join(','));
  assert.equal(backend.threaded, 'false', backend.text);
  assert.equal(backend.threads, '1');
  assert.equal(result.data.splits, '0');
  assert.match(backend.text, /1 thread \(single-threaded: the page is not cross-origin isolated/);
});

test('?threads=1 picks the single-threaded build even when isolated', { skip }, async () => {
  const native = nativeCaption(CHELSEA);
  const { result, backend } = await captionIn(isolated, { threads: '1' }, CHELSEA);
  assert.equal(result.error, null);
  assert.equal(result.data.tokenIds, native.token_ids.join(','));
  assert.equal(backend.threaded, 'false', backend.text);
  assert.match(backend.text, /one thread requested/);
});
