// examples/blog and examples/upload, served from the repository root with the module as build.sh
// assembles it: the blog post's images without alt get the CLI's captions (the decorative one
// keeps alt=""), and the upload form suggests the CLI's caption, which never replaces text the
// person typed.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { startServer, launch, nativeCaption, IMAGES, ROOT } from './helpers.mjs';
import { ensureModule } from './module-helpers.mjs';

let server;
let browser;
before(async () => {
  ensureModule();
  server = await startServer({ dir: ROOT });
  browser = await launch();
});
after(async () => {
  await browser?.close();
  await server?.stop();
});

test('examples/blog: images without alt get the CLI caption; the decorative one is left alone', async () => {
  const page = await browser.context.newPage();
  page.on('pageerror', (e) => console.error('# page error:', e.message));
  await page.goto(`${server.url}examples/blog/?model=/models/tiny-coco/`);
  await page.waitForSelector('body[data-done]', { state: 'attached' });
  const alts = await page.$$eval('#post img', (imgs) => imgs.map((i) => ({ src: i.getAttribute('src'), alt: i.getAttribute('alt'), gen: i.dataset.altGenerated ?? null })));
  assert.deepEqual(alts, [
    { src: '../../tests/images/chelsea.png', alt: nativeCaption(path.join(IMAGES, 'chelsea.png')).text, gen: 'gitcap' },
    { src: '../../tests/images/rocket.jpg', alt: nativeCaption(path.join(IMAGES, 'rocket.jpg')).text, gen: 'gitcap' },
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
  assert.equal(await page.inputValue('#alt'), nativeCaption(path.join(IMAGES, 'chelsea.png')).text);
  assert.match(await page.textContent('#hint'), /suggested/);
  // The person edits it; another photo does not replace their words.
  await page.fill('#alt', 'My cat on the windowsill');
  await page.setInputFiles('#photo', path.join(IMAGES, 'rocket.jpg'));
  await page.waitForFunction(() => document.getElementById('preview').src.startsWith('blob:'));
  assert.equal(await page.inputValue('#alt'), 'My cat on the windowsill');
  await page.close();
});
