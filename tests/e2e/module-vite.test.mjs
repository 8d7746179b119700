// examples/vite-app: a Vite app that imports gitcap as an npm package builds, and its page
// captions an image like the native CLI.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ROOT, IMAGES, startServer, launch, nativeCaption } from './helpers.mjs';
import { ensureModule } from './module-helpers.mjs';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'gitcap-vite-'));
let server;
let browser;
after(async () => {
  await browser?.close();
  await server?.stop();
  fs.rmSync(tmp, { recursive: true, force: true });
});

test('the Vite example builds and captions in Chromium', async () => {
  const dist = ensureModule();
  const app = path.join(tmp, 'app');
  fs.cpSync(path.join(ROOT, 'examples/vite-app'), app, { recursive: true });
  fs.mkdirSync(path.join(app, 'public'));
  fs.copyFileSync(path.join(IMAGES, 'chelsea.png'), path.join(app, 'public/photo.png'));
  // As `npm install` of the package would lay it out; vite is the repository's devDependency
  // (package.json), so the test needs no network.
  fs.cpSync(dist, path.join(app, 'node_modules/gitcap'), { recursive: true });
  const vite = path.join(ROOT, 'node_modules/vite/bin/vite.js');
  const r = spawnSync(process.execPath, [vite, 'build', '--logLevel', 'warn'], { cwd: app, encoding: 'utf8' });
  assert.equal(r.status, 0, r.stdout + r.stderr);
  const out = path.join(app, 'dist');
  const files = fs.readdirSync(path.join(out, 'assets'));
  assert.ok(files.some((f) => f.endsWith('.wasm')), `the wasm module is bundled: ${files}`);
  assert.ok(files.filter((f) => f.endsWith('.js')).length >= 2, `the page and the worker: ${files}`);

  server = await startServer({ dir: out });
  browser = await launch();
  const page = browser.context.pages()[0] ?? (await browser.context.newPage());
  await page.goto(`${server.url}?model=/models/tiny-coco/`);
  await page.waitForSelector('#out[data-done], #out[data-error]', { state: 'attached' });
  const got = await page.$eval('#out', (e) => ({ text: e.textContent, ids: e.dataset.tokenIds ?? null, error: e.dataset.error ?? null }));
  const want = nativeCaption(path.join(IMAGES, 'chelsea.png'));
  assert.equal(got.error, null);
  assert.equal(got.text, want.text);
  assert.equal(got.ids, want.token_ids.join(','));
});
