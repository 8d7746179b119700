// After one visit, the page opens and captions with the server gone: the service worker keeps
// the app shell and the model worker keeps the model in OPFS.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { startServer, launch, nativeCaption, captionResult, chooseFile, ensureWasm, IMAGES } from './helpers.mjs';

const CHELSEA = path.join(IMAGES, 'chelsea.png');

test('the page works offline after the first visit', async () => {
  ensureWasm();
  const server = await startServer();
  const b = await launch({ serviceWorkers: 'allow' });
  try {
    const page = await b.context.newPage();
    // Kept as it is: the caption is compared with the CLI's on the f32 fixture.
    const url = `${server.url}?model=/models/tiny-coco/&store=as-is`;
    await page.goto(url);
    await page.waitForSelector('html[data-offline-ready]', { state: 'attached' });
    await page.waitForSelector('#model-status[data-state=ready]');
    assert.ok(await page.evaluate(() => crossOriginIsolated), 'the page is cross-origin isolated');

    // No network at all from here on.
    await server.stop();
    await page.reload();
    await page.waitForSelector('#model-status[data-state=ready]');
    assert.equal(await page.getAttribute('#model-status', 'data-from-cache'), 'true');
    await chooseFile(page, CHELSEA);
    const r = await captionResult(page);
    assert.ok(r.done, JSON.stringify(r));
    assert.equal(r.text, nativeCaption(CHELSEA).text);
  } finally {
    await b.close();
    await server.stop();
  }
});
