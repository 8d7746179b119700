// The module (dist/gitcap/) from a page that is not the demo, against `gitcap serve` and the tiny
// f32 fixture model kept as it is (store: 'as-is'): every input type gives the native CLI's
// token ids, fillMissingAlt leaves decorative and human alt text alone, calls queue in order,
// abort rejects with an AbortError, and a trap in the worker restarts it from the stored model.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { startServer, launch, recordRequests, nativeCaption, gitcapBin, IMAGES, TINY } from './helpers.mjs';
import { makeSite } from './module-helpers.mjs';

const CHELSEA = path.join(IMAGES, 'chelsea.png');
const EXIF = path.join(IMAGES, 'chelsea_exif_orientation6.jpg');
const ROCKET = path.join(IMAGES, 'rocket.jpg');
const LOGO = path.join(IMAGES, 'logo.png');
const native = {};
const cli = (k, f) => (native[k] ??= nativeCaption(f));

let site;
let server;
let browser;
let page;
let requests;

let ggufDir;

before(async () => {
  site = makeSite();
  // The tiny model as q8_0 GGUF too (gitcap quantize), for info.weights and store with a .gguf.
  ggufDir = fs.mkdtempSync(path.join(os.tmpdir(), 'gitcap-module-gguf-'));
  const q = spawnSync(gitcapBin(), ['quantize', '--model', TINY, '--out', path.join(ggufDir, 'tiny-q8_0.gguf'), '--type', 'q8_0'], { encoding: 'utf8' });
  assert.equal(q.status, 0, q.stderr);
  server = await startServer({ dir: site.dir, modelDirs: [TINY, ggufDir] });
  browser = await launch();
  requests = recordRequests(browser.context);
  page = browser.context.pages()[0] ?? (await browser.context.newPage());
  page.on('pageerror', (e) => console.error('# page error:', e.message));
  await page.goto(server.url);
  await page.waitForSelector('body[data-ready]', { state: 'attached' });
  await page.evaluate(async () => {
    window.progress = [];
    window.captioner = await M.Captioner.load({
      model: '/models/tiny-coco/',
      store: 'as-is',
      threads: 1,
      chunkBytes: 256 * 1024,
      onProgress: (p) => window.progress.push(p),
    });
  });
});
after(async () => {
  await browser?.close();
  await server?.stop();
  site?.remove();
  if (ggufDir) fs.rmSync(ggufDir, { recursive: true, force: true });
});

test('load reports progress and info', async () => {
  const { progress, info } = await page.evaluate(() => ({ progress: window.progress, info: window.captioner.info }));
  assert.ok(progress.length >= 2, JSON.stringify(progress));
  const last = progress.at(-1);
  assert.equal(last.phase, 'finish');
  assert.equal(last.loadedBytes, last.totalBytes);
  assert.ok(progress.some((p) => p.phase === 'download' && p.loadedBytes > 0 && p.loadedBytes < p.totalBytes), 'intermediate progress');
  assert.equal(info.model, 'tiny-coco');
  assert.equal(info.weights, 'f32');
  assert.equal(info.store, 'as-is');
  assert.equal(info.threads, 1);
  assert.match(info.backend, /WebAssembly/);
  assert.equal(info.fromCache, false);
});

test('caption() on every input type gives the CLI token ids', async () => {
  const want = cli('chelsea', CHELSEA);
  const results = await page.evaluate(async () => {
    const url = 'images/chelsea.png';
    const blob = await (await fetch(url)).blob();
    const bytes = await blob.arrayBuffer();
    const img = document.getElementById('no-alt');
    await img.decode();
    const bitmap = await createImageBitmap(blob, { colorSpaceConversion: 'none' });
    const canvas = document.createElement('canvas');
    canvas.width = bitmap.width;
    canvas.height = bitmap.height;
    canvas.getContext('2d').drawImage(bitmap, 0, 0);
    const offscreen = new OffscreenCanvas(bitmap.width, bitmap.height);
    offscreen.getContext('2d').drawImage(bitmap, 0, 0);
    const imageData = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height);
    const inputs = {
      Blob: blob,
      File: new File([blob], 'chelsea.png', { type: 'image/png' }),
      ArrayBuffer: bytes,
      Uint8Array: new Uint8Array(bytes),
      HTMLImageElement: img,
      'URL string': url,
      URL: new URL(url, location.href),
      ImageBitmap: bitmap,
      HTMLCanvasElement: canvas,
      OffscreenCanvas: offscreen,
      ImageData: imageData,
    };
    const out = {};
    for (const [kind, input] of Object.entries(inputs)) {
      const fragments = [];
      const r = await captioner.caption(input, { onToken: (t) => fragments.push(t) });
      out[kind] = { text: r.text, tokenIds: r.tokenIds, decodedBy: r.decodedBy, fragments, note: r.note ?? null };
    }
    // The input was copied, not taken: the caller's buffer is still usable.
    out.bufferKept = bytes.byteLength > 0;
    return out;
  });
  assert.equal(results.bufferKept, true);
  delete results.bufferKept;
  for (const [kind, r] of Object.entries(results)) {
    assert.deepEqual(r.tokenIds, want.token_ids, kind);
    assert.equal(r.text, want.text, kind);
    assert.equal(r.fragments.join(''), r.text, `${kind}: fragments concatenate to the text`);
    assert.equal(r.note, null, kind);
  }
  for (const k of ['Blob', 'File', 'ArrayBuffer', 'Uint8Array', 'HTMLImageElement', 'URL string', 'URL']) {
    assert.equal(results[k].decodedBy, 'gitcap', k);
  }
  for (const k of ['ImageBitmap', 'HTMLCanvasElement', 'OffscreenCanvas', 'ImageData']) assert.equal(results[k].decodedBy, null, k);
});

test('an <img> of a JPEG with EXIF orientation gives the CLI ids (gitcap decodes the file)', async () => {
  const want = cli('exif', EXIF);
  const r = await page.evaluate(async () => {
    const img = document.getElementById('no-alt-2');
    const r = await captioner.caption(img);
    return { tokenIds: r.tokenIds, decodedBy: r.decodedBy };
  });
  assert.equal(r.decodedBy, 'gitcap');
  assert.deepEqual(r.tokenIds, want.token_ids);
});

test('bad input rejects with a readable Error', async () => {
  const errors = await page.evaluate(async () => {
    const out = [];
    for (const input of [new TextEncoder().encode('not an image'), 'images/missing.png', 42]) {
      try {
        await captioner.caption(input);
        out.push(null);
      } catch (e) {
        out.push({ isError: e instanceof Error, name: e.name, message: e.message });
      }
    }
    return out;
  });
  assert.ok(errors.every((e) => e && e.isError), JSON.stringify(errors));
  assert.match(errors[0].message, /not an image gitcap can read/);
  assert.match(errors[1].message, /missing\.png.*404/);
  assert.match(errors[2].message, /caption\(\) takes a Blob/);
  // The captioner still works.
  const ok = await page.evaluate(async () => (await captioner.caption('images/chelsea.png')).tokenIds);
  assert.deepEqual(ok, cli('chelsea', CHELSEA).token_ids);
});

test('fillMissingAlt captions images without alt and leaves decorative and human alt alone', async () => {
  const r = await page.evaluate(async () => {
    const root = document.getElementById('post');
    const entries = await M.fillMissingAlt(root, { captioner, maxNewTokens: 20 });
    const state = (id) => {
      const img = document.getElementById(id);
      return { alt: img.getAttribute('alt'), generated: img.dataset.altGenerated ?? null };
    };
    const first = {
      handled: entries.map((e) => ({ id: e.img.id, text: e.text ?? null, error: e.error?.message ?? null })),
      noAlt: state('no-alt'),
      noAlt2: state('no-alt-2'),
      decorative: state('decorative'),
      human: state('human'),
    };
    // Run again: nothing is left without alt, so nothing is handled.
    const again = await M.fillMissingAlt(root, { captioner });
    // includeEmpty: the decorative image too.
    const withEmpty = await M.fillMissingAlt(root, { captioner, includeEmpty: true });
    return { first, again: again.length, withEmpty: withEmpty.map((e) => e.img.id), decorativeAfter: state('decorative'), humanAfter: state('human') };
  });
  const chelsea = cli('chelsea', CHELSEA).text;
  const exif = cli('exif', EXIF).text;
  assert.deepEqual(r.first.handled, [
    { id: 'no-alt', text: chelsea, error: null },
    { id: 'no-alt-2', text: exif, error: null },
  ]);
  assert.deepEqual(r.first.noAlt, { alt: chelsea, generated: 'gitcap' });
  assert.deepEqual(r.first.noAlt2, { alt: exif, generated: 'gitcap' });
  assert.deepEqual(r.first.decorative, { alt: '', generated: null });
  assert.deepEqual(r.first.human, { alt: 'A rocket on the launch pad, written by a person', generated: null });
  assert.equal(r.again, 0);
  assert.deepEqual(r.withEmpty, ['decorative']);
  assert.deepEqual(r.decorativeAfter, { alt: cli('logo', LOGO).text, generated: 'gitcap' });
  assert.deepEqual(r.humanAfter, r.first.human);
});

test('captions queue in call order; tokens of one never interleave with another', async () => {
  const r = await page.evaluate(async () => {
    const log = [];
    const calls = ['images/chelsea.png', 'images/rocket.jpg', 'images/logo.png'].map((url, i) =>
      captioner.caption(url, { onToken: () => log.push(`token ${i}`) }).then((res) => {
        log.push(`done ${i}`);
        return res.tokenIds;
      })
    );
    return { ids: await Promise.all(calls), log };
  });
  assert.deepEqual(r.ids, [cli('chelsea', CHELSEA).token_ids, cli('rocket', ROCKET).token_ids, cli('logo', LOGO).token_ids]);
  // Order of events: all of 0, then all of 1, then all of 2.
  const order = r.log.map((e) => Number(e.split(' ')[1]));
  assert.deepEqual(order, [...order].sort((a, b) => a - b), r.log.join(', '));
  assert.deepEqual(r.log.filter((e) => e.startsWith('done')), ['done 0', 'done 1', 'done 2']);
});

test('abort: a running caption, a queued one and an already aborted signal reject with AbortError', async () => {
  const r = await page.evaluate(async () => {
    const outcome = (p) => p.then((v) => ({ ok: v.text }), (e) => ({ name: e.name, isError: e instanceof Error || e instanceof DOMException, message: e.message }));
    const running = new AbortController();
    const queued = new AbortController();
    let tokens = 0;
    const a = captioner.caption('images/chelsea.png', {
      maxNewTokens: 50,
      signal: running.signal,
      onToken: () => {
        tokens++;
        running.abort();
      },
    });
    const b = captioner.caption('images/rocket.jpg', { signal: queued.signal });
    queued.abort();
    const c = captioner.caption('images/logo.png');
    const pre = captioner.caption('images/logo.png', { signal: AbortSignal.abort() });
    return { a: await outcome(a), b: await outcome(b), c: await outcome(c), pre: await outcome(pre), tokens };
  });
  assert.equal(r.a.name, 'AbortError');
  assert.equal(r.tokens, 1, 'the running caption stopped at the next token');
  assert.equal(r.b.name, 'AbortError');
  assert.equal(r.pre.name, 'AbortError');
  assert.equal(r.c.ok, cli('logo', LOGO).text, 'the call after the aborted ones runs');
});

test('a trap in the worker rejects the pending call, restarts from the stored model, and the next call works', async () => {
  const modelGets = () => requests.filter((q) => q.url.includes('/models/tiny-coco/') && q.method === 'GET').length;
  const gets = modelGets();
  const r = await page.evaluate(async () => {
    captioner.__testTrap();
    const crashed = captioner.caption('images/chelsea.png').then(() => null, (e) => ({ isError: e instanceof Error, message: e.message }));
    const queued = captioner.caption('images/rocket.jpg').then((v) => v.tokenIds, (e) => e.message);
    const first = await crashed;
    const second = await queued;
    const third = (await captioner.caption('images/chelsea.png')).tokenIds;
    return { first, second, third, restarts: captioner.restarts, fromCache: captioner.info.fromCache };
  });
  assert.equal(r.first.isError, true);
  assert.match(r.first.message, /crashed \(the WebAssembly module trapped \(.*unreachable.*\)\); it restarts from the stored model/);
  assert.deepEqual(r.second, cli('rocket', ROCKET).token_ids, 'the queued call ran on the restarted worker');
  assert.deepEqual(r.third, cli('chelsea', CHELSEA).token_ids);
  assert.equal(r.restarts, 1);
  assert.equal(r.fromCache, true);
  assert.equal(modelGets(), gets, 'the restart read the stored model, not the network');
});

test('load: an aborted download rejects with AbortError; dispose ends the captioner', async () => {
  const r = await page.evaluate(async () => {
    const ac = new AbortController();
    let load;
    try {
      await M.Captioner.load({
        model: '/models/tiny-coco/',
        store: 'as-is',
        threads: 1,
        persist: false,
        chunkBytes: 64 * 1024,
        signal: ac.signal,
        onProgress: (p) => p.phase === 'download' && ac.abort(),
      });
      load = 'loaded';
    } catch (e) {
      load = e.name;
    }
    const c2 = await M.Captioner.load({ model: '/models/tiny-coco/', store: 'as-is', threads: 1 });
    const fromCache = c2.info.fromCache;
    c2.dispose();
    const after = await c2.caption('images/chelsea.png').then(() => 'captioned', (e) => e.message);
    return { load, fromCache, after };
  });
  assert.equal(r.load, 'AbortError');
  assert.equal(r.fromCache, true);
  assert.match(r.after, /disposed/);
});

test('store: a wrong value is refused; q8_0 of a safetensors source is converted while downloading (the CLI\'s quantized ids)', async () => {
  const r = await page.evaluate(async () => {
    const bad = await M.Captioner.load({ model: '/models/tiny-coco/', store: 'q9', threads: 1, persist: false }).then(
      (c) => (c.dispose(), 'loaded'),
      (e) => e.message
    );
    const c = await M.Captioner.load({ model: '/models/tiny-coco/', store: 'q8_0', threads: 1, persist: false });
    const out = { bad, info: c.info, ids: (await c.caption('images/chelsea.png')).tokenIds };
    c.dispose();
    return out;
  });
  assert.match(r.bad, /store must be one of 'q8_0', 'q4k', 'as-is'; got "q9"/);
  assert.equal(r.info.weights, 'q8_0', JSON.stringify(r.info));
  // `gitcap quantize` of the same folder, captioned by the CLI with the page's integer-kernel form.
  const form = /relaxed/.test(r.info.backend) ? 'relaxed' : 'portable';
  const native = nativeCaption(CHELSEA, [], { model: path.join(ggufDir, 'tiny-q8_0.gguf'), int8: form });
  assert.deepEqual(r.ids, native.token_ids);
});

test('a q8_0 .gguf source: store q8_0 keeps it as it is, info says q8_0, and ids equal the CLI on the same file', async () => {
  const model = `/models/${path.basename(ggufDir)}/tiny-q8_0.gguf`;
  const r = await page.evaluate(async (model) => {
    const c = await M.Captioner.load({ model, store: 'q8_0', threads: 1, persist: false });
    const out = { info: c.info, ids: (await c.caption('images/chelsea.png')).tokenIds };
    c.dispose();
    return out;
  }, model);
  assert.equal(r.info.weights, 'q8_0');
  assert.equal(r.info.store, 'as-is');
  const form = /relaxed/.test(r.info.backend) ? 'relaxed' : 'portable';
  const native = nativeCaption(CHELSEA, [], { model: path.join(ggufDir, 'tiny-q8_0.gguf'), int8: form });
  assert.deepEqual(r.ids, native.token_ids);
});
