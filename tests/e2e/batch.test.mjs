// The demo page's batch alt text: several images queue, each gets the CLI's caption as editable
// alt text in the list, and the export (JSON, CSV) holds what the person left there. And the
// page's download rule: a ?model= on another origin waits for a click.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { startServer, launch, nativeCaption, pageUrl, ensureWasm, IMAGES, AS_IS } from './helpers.mjs';

const FILES = ['chelsea.png', 'rocket.jpg', 'coffee.png'];

let server;
let browser;
before(async () => {
  ensureWasm();
  server = await startServer();
  browser = await launch();
});
after(async () => {
  await browser?.close();
  await server?.stop();
});

async function downloaded(page, button) {
  const [dl] = await Promise.all([page.waitForEvent('download'), page.click(button)]);
  return { name: dl.suggestedFilename(), text: fs.readFileSync(await dl.path(), 'utf8') };
}

test('several images: each gets the CLI caption as editable alt text; JSON and CSV exports hold the edits', async () => {
  const page = await browser.context.newPage();
  page.on('pageerror', (e) => console.error('# page error:', e.message));
  await page.goto(pageUrl(server, { ...AS_IS, nosw: '1' }));
  await page.setInputFiles('#file', FILES.map((f) => path.join(IMAGES, f)));
  await page.waitForFunction((n) => document.querySelectorAll('#batch li[data-status=done]').length === n, FILES.length);
  const rows = await page.$$eval('#batch li', (lis) => lis.map((li) => li.querySelector('textarea').value));
  const want = FILES.map((f) => nativeCaption(path.join(IMAGES, f)).text);
  assert.deepEqual(rows, want);
  assert.match(await page.textContent('#batch-status'), /3 of 3 captioned/);

  // The person rewrites the second one.
  await page.fill('#batch li:nth-child(2) textarea', 'A rocket on the pad, "ready", at night');
  const json = await downloaded(page, '#export-json');
  assert.equal(json.name, 'alt-text.json');
  assert.deepEqual(JSON.parse(json.text), [
    { file: FILES[0], alt: want[0], caption: want[0] },
    { file: FILES[1], alt: 'A rocket on the pad, "ready", at night', caption: want[1] },
    { file: FILES[2], alt: want[2], caption: want[2] },
  ]);
  const csv = await downloaded(page, '#export-csv');
  assert.equal(csv.name, 'alt-text.csv');
  const lines = csv.text.trimEnd().split('\r\n');
  assert.equal(lines[0], 'file,alt,caption');
  assert.equal(lines[2], `${FILES[1]},"A rocket on the pad, ""ready"", at night",${want[1]}`);
  assert.equal(lines.length, 4);
  await page.close();
});

test('pictures: the list shows a small copy of each image, the stage the last image itself; the others are let go', async () => {
  // What a long batch keeps per image must stay small (bench/RESULTS.md, "Long runs"): the list's
  // copy is made at the size it is shown (64 CSS px), and only the staged item keeps its file.
  const page = await browser.context.newPage();
  page.on('pageerror', (e) => console.error('# page error:', e.message));
  await page.goto(pageUrl(server, { nosw: '1' }));
  await page.setInputFiles('#file', FILES.map((f) => path.join(IMAGES, f)));
  await page.waitForFunction((n) => document.querySelectorAll('#batch li[data-status=done]').length === n, FILES.length);
  await page.waitForFunction(
    (n) => [...document.querySelectorAll('#batch li img')].filter((i) => i.complete && i.naturalWidth > 0).length === n,
    FILES.length
  );
  const px = await page.evaluate(() => Math.round(64 * Math.min(2, Math.max(1, devicePixelRatio))));
  const thumbs = await page.$$eval('#batch li img', (imgs) => imgs.map((i) => [i.naturalWidth, i.naturalHeight, i.src.slice(0, 5)]));
  // Every image here is larger than px on its short side.
  assert.deepEqual(thumbs, FILES.map(() => [px, px, 'blob:']));

  // The stage: coffee.png (600×400), the last one, drawn at its size and not blank.
  await page.waitForSelector('#preview:not([hidden])');
  const stage = await page.$eval('#preview', (c) => {
    const [r, g, b, a] = c.getContext('2d').getImageData(c.width / 2, c.height / 2, 1, 1).data;
    return { width: c.width, height: c.height, painted: a === 255 && r + g + b > 0 };
  });
  assert.deepEqual(stage, { width: 600, height: 400, painted: true });
  const kept = await page.evaluate(() => [...window.gitcap.items.values()].map((it) => it.image != null));
  assert.deepEqual(kept, [false, false, true]);
  await page.close();
});

test('a ?model= on another origin is not downloaded before a click', async () => {
  // The model's origin, played by Playwright (the page's CSP lets it connect there).
  const MODELS_ORIGIN = 'http://models.example';
  const own = await startServer({ extra: ['--connect-src', MODELS_ORIGIN] });
  const b = await launch();
  try {
    const seen = [];
    await b.context.route(`${MODELS_ORIGIN}/**`, (route) => {
      seen.push(route.request().url());
      return route.fulfill({ status: 404, headers: { 'access-control-allow-origin': '*' }, body: 'not here' });
    });
    const page = await b.context.newPage();
    const model = `${MODELS_ORIGIN}/tiny-coco/`;
    await page.goto(`${own.url}?nosw=1&model=${encodeURIComponent(model)}`);
    await page.waitForSelector('#model-status[data-state=choose]');
    assert.match(await page.textContent('#model-ask'), /from models\.example/);
    assert.deepEqual(seen, [], 'nothing fetched from the model\'s origin before the click');
    await page.click(`#model-choices button[data-model="${model}"]`);
    await page.waitForSelector('#model-status[data-state=error]');
    assert.ok(seen.some((u) => u.startsWith(model)), `requests after the click: ${seen}`);
  } finally {
    await b.close();
    await own.stop();
  }
});
