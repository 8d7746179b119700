// examples/blog and examples/upload, served from the repository root with the module as build.sh
// assembles it: the blog post's images without alt get the CLI's captions (the decorative one
// keeps alt=""), and the upload form suggests the CLI's caption, which never replaces text the
// person typed. The examples load the model with the default store, so the tiny f32 fixture is
// kept as q8_0: the captions are the CLI's on gitcap quantize's file of it.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { startServer, launch, nativeCaption, int8FormOfPage, gitcapBin, IMAGES, ROOT, TINY } from './helpers.mjs';
import { ensureModule } from './module-helpers.mjs';

let q8;
let int8Form;
/** The CLI's caption of `image` on the q8_0 file, with the integer kernel's form the page's build
 *  runs (single-threaded here), read from the module's backend line once: every wasm form gives
 *  the portable form's bits, except relaxed SIMD where the engine's dot takes 7-bit x only. */
async function cliQ8(page, image) {
  int8Form ??= int8FormOfPage(
    await page.evaluate(async () => {
      const M = await import('/dist/gitcap/gitcap.js');
      const c = await M.Captioner.load({ model: '/models/tiny-coco/', threads: 1, persist: false });
      const backend = c.info.backend;
      c.dispose();
      return backend;
    })
  );
  return nativeCaption(path.join(IMAGES, image), [], { model: q8, int8: int8Form }).text;
}

let server;
let browser;
let site;
before(async () => {
  // The repository's layout, with the module as build.sh assembles it: examples/, dist/gitcap/,
  // tests/images/.
  site = fs.mkdtempSync(path.join(os.tmpdir(), 'gitcap-examples-'));
  for (const d of ['examples/blog', 'examples/upload', 'tests/images']) {
    fs.cpSync(path.join(ROOT, d), path.join(site, d), { recursive: true });
  }
  fs.cpSync(ensureModule(), path.join(site, 'dist/gitcap'), { recursive: true });
  // What the page stores: gitcap quantize's file, named as the page names it (the folder's name).
  q8 = path.join(site, 'tiny-coco-q8_0.gguf');
  const q = spawnSync(path.resolve(gitcapBin()), ['quantize', '--model', 'tiny-coco', '--out', q8, '--quiet'], { cwd: path.dirname(TINY), encoding: 'utf8' });
  assert.equal(q.status, 0, q.stderr);
  // Without COOP/COEP, so single-threaded: the threaded build has its own tests (threads.test.mjs),
  // and beside another test file on this 2-core machine the blog's threaded page stalled its
  // captions for minutes (2 runs of 2; single-threaded, 1 of 1 passed beside the same file).
  server = await startServer({ dir: site, isolation: false });
  browser = await launch();
});
after(async () => {
  await browser?.close();
  await server?.stop();
  if (site) fs.rmSync(site, { recursive: true, force: true });
});

test('examples/blog: images without alt get the CLI caption; the decorative one is left alone', async () => {
  const page = await browser.context.newPage();
  page.on('pageerror', (e) => console.error('# page error:', e.message));
  await page.goto(`${server.url}examples/blog/?model=/models/tiny-coco/`);
  await page.waitForSelector('body[data-done]', { state: 'attached' });
  const alts = await page.$$eval('#post img', (imgs) => imgs.map((i) => ({ src: i.getAttribute('src'), alt: i.getAttribute('alt'), gen: i.dataset.altGenerated ?? null })));
  assert.deepEqual(alts, [
    { src: '../../tests/images/chelsea.png', alt: await cliQ8(page, 'chelsea.png'), gen: 'gitcap' },
    { src: '../../tests/images/rocket.jpg', alt: await cliQ8(page, 'rocket.jpg'), gen: 'gitcap' },
    { src: '../../tests/images/logo.png', alt: '', gen: null },
  ]);
  await page.close();
});

test('examples/upload: the chosen photo gets the CLI caption as an editable suggestion; typed text stays', async () => {
  const page = await browser.context.newPage();
  page.on('pageerror', (e) => console.error('# page error:', e.message));
  await page.goto(`${server.url}examples/upload/?model=/models/tiny-coco/`);
  await page.setInputFiles('#photo', path.join(IMAGES, 'chelsea.png'));
  await page.waitForSelector('#alt[data-suggested]', { state: 'attached' });
  assert.equal(await page.inputValue('#alt'), await cliQ8(page, 'chelsea.png'));
  assert.match(await page.textContent('#hint'), /suggested/);
  // The person edits it; another photo does not replace their words.
  await page.fill('#alt', 'My cat on the windowsill');
  await page.setInputFiles('#photo', path.join(IMAGES, 'rocket.jpg'));
  await page.waitForFunction(() => document.getElementById('preview').src.startsWith('blob:'));
  assert.equal(await page.inputValue('#alt'), 'My cat on the windowsill');
  await page.close();
});
