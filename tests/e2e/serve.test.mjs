// `gitcap serve`: MIME types, Range requests, isolation headers, model folders, path traversal.
// No browser here (CI runs this file alone); csp.test.mjs checks the policy in Chromium.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import path from 'node:path';
import { startServer, TINY, WWW, sha256 } from './helpers.mjs';

let server;
let plain;

before(async () => {
  server = await startServer({ modelDirs: [TINY] });
  plain = await startServer({ modelDirs: [], isolation: false });
});
after(async () => {
  await server?.stop();
  await plain?.stop();
});

/** A raw request, so that the path reaches the server exactly as written (fetch normalizes `..`). */
function raw(port, requestPath) {
  return new Promise((resolve, reject) => {
    const s = net.connect(port, '127.0.0.1', () => {
      s.write(`GET ${requestPath} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nConnection: close\r\n\r\n`);
    });
    let data = '';
    s.on('data', (d) => (data += d));
    s.on('end', () => resolve(data));
    s.on('error', reject);
  });
}

test('prints its URL and picks a free port with --port 0', () => {
  assert.match(server.output(), /^gitcap serve: .* on http:\/\/127\.0\.0\.1:\d+\//m);
  assert.match(server.output(), /model: http:\/\/127\.0\.0\.1:\d+\/\?model=\/models\/tiny-coco\//);
  assert.notEqual(server.port, 0);
  assert.notEqual(server.port, plain.port);
});

// A page opens several connections at once and keeps them open. tiny_http 0.12.0's thread pool
// left a connection opened in such a burst unanswered until another one closed; gitcap builds it
// with the fix in vendor/tiny_http. The race is timing-dependent: against the unfixed server
// this test failed in 1 to 2 runs of 4 on a two-core machine; 0 of many with the fix.
test('a burst of new keep-alive connections all get answers', async () => {
  const get = (agent) =>
    new Promise((resolve) => {
      const req = http.get({ host: '127.0.0.1', port: server.port, path: '/index.html', agent }, (res) => {
        res.resume();
        res.on('end', () => resolve(res.statusCode));
      });
      req.setTimeout(8000, () => {
        req.destroy();
        resolve('no answer in 8 s');
      });
      req.on('error', (e) => resolve(`error: ${e.message}`));
    });
  const agents = [];
  try {
    for (let round = 0; round < 30; round++) {
      // Twelve new connections (two pages' worth of a browser's six per host), left open like a
      // browser's.
      const agent = new http.Agent({ keepAlive: true, maxSockets: 12 });
      agents.push(agent);
      const answers = await Promise.all(Array.from({ length: 12 }, () => get(agent)));
      assert.deepEqual(answers, Array(12).fill(200), `round ${round}`);
    }
  } finally {
    for (const agent of agents) agent.destroy();
  }
});

test('serves the page with the right MIME types and isolation headers', async () => {
  const cases = [
    ['', 'text/html'],
    ['index.html', 'text/html'],
    ['app.js', 'text/javascript'],
    ['style.css', 'text/css'],
    ['icon.svg', 'image/svg+xml'],
    ['manifest.webmanifest', 'application/manifest+json'],
  ];
  if (fs.existsSync(path.join(WWW, 'pkg/gitcap_bg.wasm'))) cases.push(['pkg/gitcap_bg.wasm', 'application/wasm']);
  for (const [p, type] of cases) {
    const r = await fetch(server.url + p);
    assert.equal(r.status, 200, p);
    assert.ok(r.headers.get('content-type').startsWith(type), `${p}: ${r.headers.get('content-type')}`);
    assert.equal(r.headers.get('cross-origin-opener-policy'), 'same-origin');
    assert.equal(r.headers.get('cross-origin-embedder-policy'), 'require-corp');
    assert.ok(r.headers.get('cross-origin-resource-policy'));
    await r.arrayBuffer();
  }
  const j = await fetch(server.url + 'models/tiny-coco/config.json');
  assert.equal(j.headers.get('content-type'), 'application/json');
  const w = await fetch(server.url + 'models/tiny-coco/model.safetensors', { method: 'HEAD' });
  assert.equal(w.headers.get('content-type'), 'application/octet-stream');
});

test('--no-isolation leaves out COOP and COEP', async () => {
  const r = await fetch(plain.url);
  assert.equal(r.status, 200);
  assert.equal(r.headers.get('cross-origin-opener-policy'), null);
  assert.equal(r.headers.get('cross-origin-embedder-policy'), null);
  await r.text();
  assert.equal((await fetch(plain.url + 'models/tiny-coco/config.json')).status, 404);
});

test('answers Range requests with 206, and 416 past the end', async () => {
  const file = path.join(TINY, 'model.safetensors');
  const bytes = fs.readFileSync(file);
  const url = server.url + 'models/tiny-coco/model.safetensors';
  const head = await fetch(url, { method: 'HEAD' });
  assert.equal(head.status, 200);
  assert.equal(Number(head.headers.get('content-length')), bytes.length);
  assert.equal(head.headers.get('accept-ranges'), 'bytes');
  // Like the Hugging Face hub, the ETag is the file's SHA-256.
  assert.equal(head.headers.get('etag'), `"${await sha256(bytes)}"`);

  const r = await fetch(url, { headers: { Range: 'bytes=100-1123' } });
  assert.equal(r.status, 206);
  assert.equal(r.headers.get('content-range'), `bytes 100-1123/${bytes.length}`);
  const part = Buffer.from(await r.arrayBuffer());
  assert.equal(part.length, 1024);
  assert.ok(part.equals(bytes.subarray(100, 1124)));

  const tail = await fetch(url, { headers: { Range: 'bytes=-10' } });
  assert.equal(tail.status, 206);
  assert.ok(Buffer.from(await tail.arrayBuffer()).equals(bytes.subarray(bytes.length - 10)));

  const open = await fetch(url, { headers: { Range: `bytes=${bytes.length - 5}-` } });
  assert.equal(open.status, 206);
  assert.equal((await open.arrayBuffer()).byteLength, 5);

  const past = await fetch(url, { headers: { Range: `bytes=${bytes.length}-` } });
  assert.equal(past.status, 416);
  assert.equal(past.headers.get('content-range'), `bytes */${bytes.length}`);
  await past.arrayBuffer();

  // If-Range with a stale validator: the whole file.
  const stale = await fetch(url, { headers: { Range: 'bytes=0-9', 'If-Range': '"0000"' } });
  assert.equal(stale.status, 200);
  assert.equal((await stale.arrayBuffer()).byteLength, bytes.length);

  const etag = head.headers.get('etag');
  const same = await fetch(url, { headers: { 'If-None-Match': etag } });
  assert.equal(same.status, 304);
});

test('refuses path traversal and unknown methods', async () => {
  for (const p of ['/../Cargo.toml', '/%2e%2e/Cargo.toml', '/models/tiny-coco/../../Cargo.toml', '/models/tiny-coco/%2e%2e/%2e%2e/Cargo.toml', '/..%2fCargo.toml', '/pkg/..\\..\\Cargo.toml']) {
    const res = await raw(server.port, p);
    const status = Number(res.split(' ')[1]);
    assert.ok(status === 403 || status === 404 || status === 400, `${p}: ${res.split('\r\n')[0]}`);
    assert.ok(!res.includes('[package]'), `${p} leaked Cargo.toml`);
  }
  const post = await fetch(server.url, { method: 'POST', body: 'x' });
  assert.equal(post.status, 405);
  assert.equal((await fetch(server.url + 'no-such-file.js')).status, 404);
  const dir = await fetch(server.url + 'models/tiny-coco', { redirect: 'manual' });
  assert.equal(dir.status, 301);
});
