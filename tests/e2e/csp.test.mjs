// The Content-Security-Policy that `gitcap serve` sends keeps the page's bytes from leaving it:
// a fetch, an image or a worker's request to another origin is blocked while the page captions.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import path from 'node:path';
import {
  startServer, launch, nativeCaption, pageUrl, captionResult, chooseFile, ensureWasm, IMAGES, AS_IS,
} from './helpers.mjs';

let server;

before(async () => {
  ensureWasm();
  server = await startServer();
});

after(async () => {
  await server?.stop();
});

/** A server on another origin that records every request that reaches it. */
async function startSink() {
  const hits = [];
  const sink = http.createServer((req, res) => {
    hits.push(req.url);
    req.resume();
    res.writeHead(200, { 'access-control-allow-origin': '*', 'cross-origin-resource-policy': 'cross-origin' });
    res.end('ok');
  });
  await new Promise((resolve) => sink.listen(0, '127.0.0.1', resolve));
  const close = () => new Promise((r) => {
    sink.close(r);
    sink.closeAllConnections();
  });
  return { hits, origin: `http://127.0.0.1:${sink.address().port}`, close };
}

/** In a page or worker: POSTs bytes to `url`; 'sent' or 'blocked'. */
const sendOut = (url) =>
  fetch(url, { method: 'POST', mode: 'no-cors', body: 'image bytes' }).then(
    () => 'sent',
    () => 'blocked'
  );

test('the page and its worker cannot send anything to another origin, and still caption', async () => {
  const sink = await startSink();
  const allowed = await startServer({ extra: ['--connect-src', sink.origin] });
  const b = await launch();
  try {
    const page = await b.context.newPage();
    await page.goto(pageUrl(server, AS_IS));
    const chelsea = path.join(IMAGES, 'chelsea.png');
    await chooseFile(page, chelsea);
    const r = await captionResult(page);
    assert.ok(r.done, JSON.stringify(r));
    assert.equal(r.text, nativeCaption(chelsea).text);

    assert.equal(await page.evaluate(sendOut, `${sink.origin}/from-page`), 'blocked');
    const worker = page.workers().find((w) => w.url().includes('/worker.js'));
    assert.ok(worker, `the model worker among ${page.workers().map((w) => w.url())}`);
    assert.equal(await worker.evaluate(sendOut, `${sink.origin}/from-worker`), 'blocked');
    const image = await page.evaluate(
      (url) =>
        new Promise((resolve) => {
          const img = new Image();
          img.onload = () => resolve('sent');
          img.onerror = () => resolve('blocked');
          img.src = url;
        }),
      `${sink.origin}/from-img`
    );
    assert.equal(image, 'blocked');

    // The same request from a page whose server names the sink with --connect-src does arrive:
    // what blocked the others was the policy.
    const open = await b.context.newPage();
    await open.goto(pageUrl(allowed));
    assert.equal(await open.evaluate(sendOut, `${sink.origin}/from-allowed`), 'sent');
    assert.deepEqual(sink.hits, ['/from-allowed']);
  } finally {
    await b.close();
    await allowed.stop();
    await sink.close();
  }
});
