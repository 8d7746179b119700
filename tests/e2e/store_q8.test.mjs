// www/store_q8.js with the page's wasm module (www/pkg), in Node: the tiny f32 fixture converted
// while "downloading" equals `gitcap quantize --type q8_0` byte for byte (so the wasm build
// quantizes as the native CLI does), also when the download is interrupted and resumed at chunk
// boundaries, and the converted model, loaded as it is written, captions with the CLI's token ids.
// Then the page with ?store=q8_0: what the worker stores is that GGUF (not the f32 source), it
// captions with the CLI's ids for it, and a reload loads it from storage without the network.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import {
  ensureWasm, gitcapBin, nativeCaption, startServer, launch, recordRequests, pageUrl, captionResult, chooseFile,
  int8FormOfPage, sha256, IMAGES, TINY, WWW,
} from './helpers.mjs';
import { quantizingSink, storeType, MODEL_FILES } from '../../www/store_q8.js';

const CHELSEA = path.join(IMAGES, 'chelsea.png');
let gitcap;
let tmp;
let cliGguf;
let source;
let files;

before(async () => {
  ensureWasm();
  gitcap = await import(pathToFileURL(path.join(WWW, 'pkg/gitcap.js')).href);
  await gitcap.default({ module_or_path: fs.readFileSync(path.join(WWW, 'pkg/gitcap_bg.wasm')) });
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'gitcap-store-q8-'));
  cliGguf = path.join(tmp, 'tiny-q8_0.gguf');
  const r = spawnSync(gitcapBin(), ['quantize', '--model', TINY, '--out', cliGguf, '--type', 'q8_0', '--quiet'], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  source = fs.readFileSync(path.join(TINY, 'model.safetensors'));
  files = new Map(
    MODEL_FILES.filter((f) => fs.existsSync(path.join(TINY, f))).map((f) => [f, fs.readFileSync(path.join(TINY, f))])
  );
});

after(() => fs.rmSync(tmp, { recursive: true, force: true }));

/** Feeds `source` in chunks of `chunk` bytes; after each chunk in `interruptAfter`, the sink is
 *  dropped and a new one resumed from its state (as after a page reload). Returns the output. */
async function convert(chunk, interruptAfter = () => false) {
  const parts = [];
  let written = 0;
  const onOutput = (bytes, offset) => {
    assert.equal(offset, written, 'output arrives in order');
    parts.push(bytes.slice());
    written += bytes.length;
  };
  let sink = quantizingSink(gitcap, { type: 'q8_0', name: TINY, files, onOutput });
  let i = 0;
  for (let start = 0; start < source.length; start += chunk, i++) {
    await sink.push(source.subarray(start, start + chunk));
    if (interruptAfter(i)) {
      const state = sink.state();
      const [at, out] = [sink.sourceBytes, sink.outputBytes];
      sink.free();
      sink = quantizingSink(gitcap, { state, onOutput });
      assert.equal(sink.sourceBytes, at);
      assert.equal(sink.outputBytes, out);
      assert.equal(at, Math.min(source.length, start + chunk));
    }
  }
  const total = sink.outputTotal;
  const summary = sink.finish();
  const out = Buffer.concat(parts);
  assert.equal(summary.fileBytes, out.length);
  assert.equal(total, out.length);
  return out;
}

test('the stored bytes are gitcap quantize --type q8_0 output, whatever the chunking and resumes', async () => {
  const cli = fs.readFileSync(cliGguf);
  for (const chunk of [7, 4096, 65536, source.length]) {
    assert.ok(Buffer.from(await convert(chunk)).equals(cli), `chunks of ${chunk}`);
  }
  assert.ok((await convert(4096, () => true)).equals(cli), 'resumed after every chunk');
  assert.ok((await convert(7, (i) => i < 2000 && i % 3 === 0)).equals(cli), 'resumed in the header');
});

test('the converted model, loaded as it is written, captions with the CLI ids', async () => {
  const loader = new gitcap.ModelLoader();
  let begun = false;
  const sink = quantizingSink(gitcap, {
    name: TINY,
    files,
    onOutput: (bytes) => {
      if (!begun) {
        loader.beginWeights('gguf', sink.outputTotal);
        begun = true;
      }
      loader.pushWeights(bytes);
    },
  });
  for (let start = 0; start < source.length; start += 1 << 16) await sink.push(source.subarray(start, start + (1 << 16)));
  sink.finish();
  const model = loader.finish();
  assert.equal(model.info().quantized, true);
  const job = model.startCaption(fs.readFileSync(CHELSEA));
  let ev;
  do ev = job.step();
  while (!ev.done);
  job.free();
  model.free();
  const want = nativeCaption(CHELSEA, [], { model: cliGguf, int8: 'portable' });
  assert.deepEqual(ev.caption.token_ids, want.token_ids);
  assert.equal(ev.caption.text, want.text);
});

test('cut-short downloads, damaged states and misuse give readable errors', async () => {
  const sink = quantizingSink(gitcap, { name: TINY, files, onOutput: () => {} });
  await sink.push(source.subarray(0, 100_000));
  const state = sink.state();
  assert.throws(() => sink.finish(), /truncated: got 100000 of \d+ bytes/);
  assert.throws(() => sink.state(), /finished or failed/);

  const bad = state.slice();
  bad[bad.length >> 1] ^= 1;
  assert.throws(() => quantizingSink(gitcap, { state: bad, onOutput: () => {} }), /state is damaged/);

  const noConfig = quantizingSink(gitcap, { files: {}, onOutput: () => {} });
  await assert.rejects(noConfig.push(source.subarray(0, 10)), /config\.json was not added/);
  const notSafetensors = quantizingSink(gitcap, { files, onOutput: () => {} });
  await assert.rejects(notSafetensors.push(fs.readFileSync(cliGguf)), /not a valid safetensors file/);
  assert.throws(() => new gitcap.Quantizer('q2', ''), /unknown type "q2"/);
  const full = quantizingSink(gitcap, { files, onOutput: () => Promise.reject(new Error('storage full')) });
  await assert.rejects(full.push(source.subarray(0, 100_000)), /storage full/);
  assert.throws(() => full.state(), /finished or failed/);

  assert.equal(storeType(undefined, 'safetensors'), 'q8_0');
  assert.equal(storeType('as-is', 'safetensors'), null);
  assert.equal(storeType('q4k', 'safetensors'), 'q4k');
  assert.equal(storeType(undefined, 'gguf'), null);
  assert.throws(() => storeType('q8', 'safetensors'), /store must be/);
});

test('the page with ?store=q8_0 stores the GGUF gitcap quantize writes and reloads it offline', async () => {
  // The page records the folder's name as general.name, as `gitcap quantize --model tiny-coco`.
  const named = path.join(tmp, 'named-q8_0.gguf');
  const q = spawnSync(path.resolve(gitcapBin()), ['quantize', '--model', 'tiny-coco', '--out', named, '--type', 'q8_0', '--quiet'], {
    cwd: path.dirname(TINY),
    encoding: 'utf8',
  });
  assert.equal(q.status, 0, q.stderr);
  const want = fs.readFileSync(named);
  const server = await startServer();
  const b = await launch();
  try {
    const requests = recordRequests(b.context);
    const page = b.context.pages()[0] ?? (await b.context.newPage());
    page.on('pageerror', (e) => console.error('# page error:', e.message));
    // The single-threaded SIMD128 build: the one test.sh --browser builds.
    await page.goto(pageUrl(server, { store: 'q8_0', chunk_kib: 256, threads: '1', relaxed: '0' }));
    await chooseFile(page, CHELSEA);
    let r = await captionResult(page);
    assert.equal(r.error, null);
    const backend = await page.textContent('#backend');
    const native = nativeCaption(CHELSEA, [], { model: named, int8: int8FormOfPage(backend) });
    assert.equal(r.data.tokenIds, native.token_ids.join(','));
    assert.equal(r.text, native.text);

    // What is stored: the GGUF's chunks, byte for byte the CLI's file; no safetensors chunk.
    const stored = await page.evaluate(async () => {
      const root = await (await navigator.storage.getDirectory()).getDirectoryHandle('gitcap-models');
      const files = {};
      const gguf = [];
      for await (const [, dir] of root.entries()) {
        if (dir.kind !== 'directory') continue;
        for await (const [name, h] of dir.entries()) {
          const f = await h.getFile();
          files[name] = f.size;
          if (name.startsWith('model.q8_0.gguf.')) gguf.push([name, new Uint8Array(await f.arrayBuffer())]);
        }
      }
      gguf.sort((a, b) => (a[0] < b[0] ? -1 : 1));
      const all = new Uint8Array(gguf.reduce((n, [, b]) => n + b.length, 0));
      let at = 0;
      for (const [, bytes] of gguf) {
        all.set(bytes, at);
        at += bytes.length;
      }
      const digest = new Uint8Array(await crypto.subtle.digest('SHA-256', all));
      return { files, size: all.length, sha256: [...digest].map((x) => x.toString(16).padStart(2, '0')).join('') };
    });
    assert.deepEqual(Object.keys(stored.files).filter((n) => n.startsWith('model.safetensors')), [], JSON.stringify(stored.files));
    assert.equal(stored.size, want.length);
    assert.ok(stored.size < fs.statSync(path.join(TINY, 'model.safetensors')).size);
    assert.equal(stored.sha256, await sha256(want));

    // A reload loads the stored GGUF without fetching any model file.
    const before = requests.length;
    await page.reload();
    await page.waitForSelector('#model-status[data-state=ready]');
    assert.equal(await page.getAttribute('#model-status', 'data-from-cache'), 'true');
    await chooseFile(page, CHELSEA);
    r = await captionResult(page);
    assert.equal(r.data.tokenIds, native.token_ids.join(','));
    assert.deepEqual(requests.slice(before).filter((x) => x.url.includes('/models/')), []);
  } finally {
    await b.close();
    await server.stop();
  }
});
