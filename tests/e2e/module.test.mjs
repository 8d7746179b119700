// The module (dist/gitcap/) from a page that is not the demo, against `gitcap serve` and the tiny
// f32 fixture model kept as it is (store: 'as-is'): every input type gives the native CLI's
// token ids, fillMissingAlt leaves decorative and human alt text alone, calls queue in order,
// abort rejects with an AbortError, and a trap in the worker restarts it from the stored model.
// Then the default store: q8_0 for a safetensors source (gitcap quantize's file, the CLI's ids
// on it), a copy already kept as it is stays in use, and the quota is checked against what will
// be stored.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { startServer, launch, recordRequests, nativeCaption, int8FormOfPage, gitcapBin, sha256, IMAGES, TINY } from './helpers.mjs';
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
let copies; // copies of tiny-coco under other names: sources with nothing stored yet

/** `gitcap quantize` of the copy `name`, run from its parent as `--model name`: the page records
 *  the folder's name as general.name, as the CLI records its --model argument. */
function quantizeCopy(name) {
  const out = path.join(copies, `${name}-q8_0.gguf`);
  if (!fs.existsSync(out)) {
    const q = spawnSync(path.resolve(gitcapBin()), ['quantize', '--model', name, '--out', out, '--type', 'q8_0', '--quiet'], { cwd: copies, encoding: 'utf8' });
    assert.equal(q.status, 0, q.stderr);
  }
  return out;
}
const SMALL = ['config.json', 'tokenizer.json', 'tokenizer_config.json', 'preprocessor_config.json', 'generation_config.json'];
const smallBytes = () => SMALL.filter((f) => fs.existsSync(path.join(TINY, f))).reduce((n, f) => n + fs.statSync(path.join(TINY, f)).size, 0);

before(async () => {
  site = makeSite();
  copies = fs.mkdtempSync(path.join(os.tmpdir(), 'gitcap-module-copies-'));
  for (const name of ['tiny-default', 'tiny-partial', 'tiny-quota']) fs.cpSync(TINY, path.join(copies, name), { recursive: true });
  // Test-only: the model worker with a storage estimate that leaves ?room= bytes (Chromium's
  // estimate does not show a quota set over CDP, so the check before downloading is tested so).
  fs.writeFileSync(
    path.join(site.dir, 'quota-estimate.js'),
    "const room = Number(new URLSearchParams(self.location.search).get('room'));\n" +
      'navigator.storage.estimate = async () => ({ quota: room, usage: 0 });\n'
  );
  fs.writeFileSync(path.join(site.dir, 'quota-worker.js'), "import './quota-estimate.js';\nimport './gitcap/worker.js';\n");
  // The tiny model as q8_0 GGUF too (gitcap quantize), for info.weights and store with a .gguf.
  ggufDir = fs.mkdtempSync(path.join(os.tmpdir(), 'gitcap-module-gguf-'));
  const q = spawnSync(gitcapBin(), ['quantize', '--model', TINY, '--out', path.join(ggufDir, 'tiny-q8_0.gguf'), '--type', 'q8_0'], { encoding: 'utf8' });
  assert.equal(q.status, 0, q.stderr);
  server = await startServer({ dir: site.dir, modelDirs: [TINY, ggufDir, ...['tiny-default', 'tiny-partial', 'tiny-quota'].map((n) => path.join(copies, n))] });
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
  if (copies) fs.rmSync(copies, { recursive: true, force: true });
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
  const form = int8FormOfPage(r.info.backend);
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
  const form = int8FormOfPage(r.info.backend);
  const native = nativeCaption(CHELSEA, [], { model: path.join(ggufDir, 'tiny-q8_0.gguf'), int8: form });
  assert.deepEqual(r.ids, native.token_ids);
});

/** The GGUF chunks stored for the source whose URL ends in `suffix`: size and SHA-256 joined. */
async function storedGguf(suffix) {
  return page.evaluate(async (suffix) => {
    const root = await (await navigator.storage.getDirectory()).getDirectoryHandle('gitcap-models');
    for await (const [, dir] of root.entries()) {
      const m = JSON.parse(await (await (await dir.getFileHandle('manifest.json')).getFile()).text());
      if (!m.source.endsWith(suffix) || m.store !== 'q8_0') continue;
      const parts = [];
      for await (const [name, h] of dir.entries()) if (/^model\.q8_0\.gguf\.\d+$/.test(name)) parts.push([name, new Uint8Array(await (await h.getFile()).arrayBuffer())]);
      parts.sort((a, b) => (a[0] < b[0] ? -1 : 1));
      const all = new Uint8Array(parts.reduce((n, [, b]) => n + b.length, 0));
      let at = 0;
      for (const [, b] of parts) {
        all.set(b, at);
        at += b.length;
      }
      const digest = new Uint8Array(await crypto.subtle.digest('SHA-256', all));
      return { complete: m.complete, size: all.length, sha256: [...digest].map((x) => x.toString(16).padStart(2, '0')).join('') };
    }
    return null;
  }, suffix);
}

test('no store: a safetensors source is stored as q8_0, the file gitcap quantize writes, and captions with the CLI\'s ids on it', async () => {
  const file = quantizeCopy('tiny-default');
  const want = fs.readFileSync(file);
  const r = await page.evaluate(async () => {
    const c = await M.Captioner.load({ model: '/models/tiny-default/', threads: 1, chunkBytes: 256 * 1024 });
    const out = { info: c.info, ids: (await c.caption('images/chelsea.png')).tokenIds };
    c.dispose();
    // A second load: the stored q8_0 copy, from storage.
    const again = await M.Captioner.load({ model: '/models/tiny-default/', threads: 1 });
    out.again = again.info;
    again.dispose();
    return out;
  });
  assert.equal(r.info.store, 'q8_0');
  assert.equal(r.info.weights, 'q8_0');
  assert.equal(r.info.fromCache, false);
  assert.equal(r.info.storedBytes, want.length + smallBytes(), 'stored: the GGUF and the small files');
  assert.ok(r.info.wasmBytes > 0);
  const stored = await storedGguf('/models/tiny-default/');
  assert.equal(stored.complete, true);
  assert.equal(stored.size, want.length);
  assert.equal(stored.sha256, await sha256(want));
  const form = int8FormOfPage(r.info.backend);
  assert.deepEqual(r.ids, nativeCaption(CHELSEA, [], { model: file, int8: form }).token_ids);
  assert.equal(r.again.fromCache, true);
  assert.equal(r.again.store, 'q8_0');
});

test('no store: a copy kept as it is (what earlier versions stored by default) loads from storage; a partial one is continued as it is', async () => {
  // tiny-coco was stored with store 'as-is' (before()), under the source's own key, the one
  // earlier versions used; their manifests had no `store` field.
  await page.evaluate(async () => {
    const root = await (await navigator.storage.getDirectory()).getDirectoryHandle('gitcap-models');
    for await (const [, dir] of root.entries()) {
      const fh = await dir.getFileHandle('manifest.json');
      const m = JSON.parse(await (await fh.getFile()).text());
      if (!m.source.endsWith('/models/tiny-coco/')) continue;
      delete m.store;
      const w = await fh.createWritable();
      await w.write(JSON.stringify(m));
      await w.close();
    }
  });
  const modelGets = (name) => requests.filter((q) => q.url.includes(`/models/${name}/`) && q.method === 'GET');
  let mark = modelGets('tiny-coco').length;
  const complete = await page.evaluate(async () => {
    const c = await M.Captioner.load({ model: '/models/tiny-coco/', threads: 1 });
    const out = { info: c.info, ids: (await c.caption('images/chelsea.png')).tokenIds };
    c.dispose();
    return out;
  });
  assert.equal(complete.info.store, 'as-is');
  assert.equal(complete.info.fromCache, true);
  assert.equal(complete.info.weights, 'f32');
  assert.deepEqual(modelGets('tiny-coco').slice(mark), [], 'nothing downloaded again');
  assert.deepEqual(complete.ids, cli('chelsea', CHELSEA).token_ids);

  // A partial as-is download: chunk 2 (of 1 MiB chunks) never answered, then the load aborted.
  const CHUNK = 1 << 20;
  let held = null;
  const asked = new Promise((resolve) => {
    browser.context.route('**/models/tiny-partial/model.safetensors', (route) => {
      if (route.request().headers()['range'] === `bytes=${2 * CHUNK}-${3 * CHUNK - 1}` && !held) {
        held = route;
        resolve();
        return;
      }
      return route.continue();
    });
  });
  await page.evaluate((chunkBytes) => {
    window.partialAbort = new AbortController();
    window.partial = M.Captioner.load({ model: '/models/tiny-partial/', store: 'as-is', threads: 1, chunkBytes, signal: partialAbort.signal }).then(
      () => 'loaded',
      (e) => e.name
    );
  }, CHUNK);
  await asked;
  assert.equal(await page.evaluate(() => (partialAbort.abort(), window.partial)), 'AbortError');
  await browser.context.unrouteAll({ behavior: 'ignoreErrors' });
  mark = modelGets('tiny-partial').length;
  const partial = await page.evaluate(async () => {
    const c = await M.Captioner.load({ model: '/models/tiny-partial/', threads: 1 });
    const out = { info: c.info, ids: (await c.caption('images/chelsea.png')).tokenIds, stored: await c.storedModels() };
    c.dispose();
    return out;
  });
  assert.equal(partial.info.store, 'as-is');
  assert.equal(partial.info.fromCache, false);
  const size = fs.statSync(path.join(TINY, 'model.safetensors')).size;
  const ranges = modelGets('tiny-partial').slice(mark).filter((q) => q.url.endsWith('/model.safetensors')).map((q) => q.range);
  assert.deepEqual(ranges, [`bytes=${2 * CHUNK}-${3 * CHUNK - 1}`, `bytes=${3 * CHUNK}-${size - 1}`], 'only the missing chunks');
  assert.deepEqual(partial.ids, cli('chelsea', CHELSEA).token_ids);
  assert.deepEqual(
    partial.stored.entries.filter((e) => e.source.endsWith('/models/tiny-partial/')).map((e) => [e.store, e.complete]),
    [['as-is', true]],
    'no q8_0 copy beside it'
  );
});

test('quota: checked before downloading, against the size that will be stored (q8_0: the converted file)', async () => {
  const q8 = fs.statSync(quantizeCopy('tiny-quota')).size + smallBytes();
  const f32 = fs.statSync(path.join(TINY, 'model.safetensors')).size + smallBytes();
  const mark = requests.length;
  const load = (room, store) =>
    page.evaluate(
      async ([room, store]) => {
        try {
          const c = await M.Captioner.load({ model: '/models/tiny-quota/', store, threads: 1, workerUrl: `quota-worker.js?room=${room}` });
          const info = c.info;
          c.dispose();
          return { loaded: true, store: info.store, storedBytes: info.storedBytes };
        } catch (e) {
          return { message: e.message, code: e.code, needed: e.needed, available: e.available };
        }
      },
      [room, store]
    );
  // One byte short of the q8_0 file and the small files: refused before the weights are fetched.
  const refused = await load(q8 - 1);
  assert.equal(refused.code, 'quota', JSON.stringify(refused));
  assert.equal(refused.needed, q8);
  assert.equal(refused.available, q8 - 1);
  assert.match(refused.message, /^The model needs 3\.\d MB of storage, but this browser lets this page store only 3\.\d MB more\./);
  const weights = requests.slice(mark).filter((q) => q.url.endsWith('/models/tiny-quota/model.safetensors') && q.method === 'GET');
  const headerLen = Number(fs.readFileSync(path.join(TINY, 'model.safetensors')).readBigUInt64LE(0));
  assert.deepEqual(weights.map((q) => q.range), ['bytes=0-7', `bytes=8-${7 + headerLen}`], 'only the header, to learn the size');
  // The same room refuses the f32 source kept as it is, and fits the q8_0 file exactly.
  const asIs = await load(q8, 'as-is');
  assert.equal(asIs.code, 'quota');
  assert.equal(asIs.needed, f32);
  const fits = await load(q8);
  assert.deepEqual(fits, { loaded: true, store: 'q8_0', storedBytes: q8 });
});
