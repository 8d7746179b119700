#!/usr/bin/env node
// gitcap timed the way bench/peer/run.mjs wants it (same line protocol as py_worker.py):
//   node bench/peer/gitcap_worker.mjs cli  MODEL IMAGE THREADS [--bin target/release/gitcap]
//   node bench/peer/gitcap_worker.mjs page MODEL IMAGE THREADS [--bin target/release/gitcap]
// cli:  each "run" starts `gitcap caption --timings --json --max-new-tokens 1` on IMAGE twice
//       (RAYON_NUM_THREADS=THREADS) and reports the second image's "image encoder" stage (the
//       first warms the fresh process up): image_encoder + visual_projection from pixels, as
//       transformers and ONNX Runtime are timed.
// page: the gitcap page (www/, served by `gitcap serve`) in headless Chromium with ?threads=N,
//       loaded once; each "run" captions IMAGE (1 new token) and reports the worker's encode time
//       (data-encode-ms: image decoding + preprocessing + vision tower + projection + the image
//       half of the decoder, a wider stage than the others', see README.md).
import { logger, say, serve } from './worker_protocol.mjs';
import { refuseDevBuilds } from '../release_pages.mjs';
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const args = process.argv.slice(2);
const binAt = args.indexOf('--bin');
// Extra query parameters for the page (--query 'relaxed=0&int8_min=9999'), after --bin's removal.
const queryAt = () => args.indexOf('--query');
// The CLI to time and serve the page with: --bin, else GITCAP_BIN, else the release build.
const bin = path.resolve(binAt >= 0 ? args.splice(binAt, 2)[1] : process.env.GITCAP_BIN || path.join(ROOT, 'target/release/gitcap'));
const extraQuery = queryAt() >= 0 ? args.splice(queryAt(), 2)[1] : '';
// The page's files: --www DIR, else GITCAP_WWW, else www/ (build.sh writes www/pkg and
// www/pkg-threads).
const wwwAt = args.indexOf('--www');
const www = path.resolve(ROOT, wwwAt >= 0 ? args.splice(wwwAt, 2)[1] : process.env.GITCAP_WWW || 'www');
const [mode, modelArg, imageArg, threadsArg] = args;
const threads = Number(threadsArg);
if (!['cli', 'page'].includes(mode) || !modelArg || !imageArg || !(threads > 0)) {
  console.error('usage: node bench/peer/gitcap_worker.mjs cli|page MODEL IMAGE THREADS [--bin gitcap] [--query k=v&...]');
  process.exit(2);
}
const model = path.resolve(modelArg);
const image = path.resolve(imageArg);
const log = logger(`gitcap ${mode}`);
if (!fs.existsSync(bin)) {
  say({ error: `${bin} is missing: cargo build --release --features native` });
  process.exit(1);
}

function cliOnce() {
  const r = spawnSync(bin, ['caption', '--timings', '--json', '--max-new-tokens', '1', '--model', model, image, image], {
    env: { ...process.env, RAYON_NUM_THREADS: String(threads) },
    encoding: 'utf8',
    maxBuffer: 1 << 24,
  });
  if (r.status !== 0) throw new Error(`gitcap caption failed (${r.status}): ${r.stderr}`);
  const enc = [...r.stderr.matchAll(/image encoder ([\d.]+)/g)].map((m) => Number(m[1]));
  const load = /model loaded in ([\d.]+) ms/.exec(r.stderr);
  if (enc.length !== 2) throw new Error(`no "image encoder" timings in: ${r.stderr}`);
  return { ms: enc[1], firstMs: enc[0], loadMs: load ? Number(load[1]) : null };
}

async function pageWorker() {
  const { chromium } = await import('playwright-core');
  if (!fs.existsSync(path.join(www, 'pkg/gitcap.js'))) throw new Error('www/pkg is missing: bash build.sh --wasm-only');
  if (threads > 1 && !fs.existsSync(path.join(www, 'pkg-threads/gitcap.js'))) throw new Error('www/pkg-threads is missing: bash build.sh --wasm-only');
  refuseDevBuilds(www);
  const proc = spawn(bin, ['serve', www, '--port', '0', '--model-dir', model], { cwd: ROOT, stdio: ['ignore', 'pipe', 'inherit'] });
  const url = await new Promise((resolve, reject) => {
    let out = '';
    proc.stdout.on('data', (d) => {
      out += d;
      const m = /http:\/\/127\.0\.0\.1:\d+\//.exec(out);
      if (m) resolve(m[0]);
    });
    proc.once('exit', (c) => reject(new Error(`gitcap serve exited ${c}: ${out}`)));
  });
  const name = path.basename(model);
  const gguf = model.endsWith('.gguf');
  const modelUrl = gguf ? `/models/${name}` : `/models/${name}/`;
  // The server hashes the model files on start; wait for that outside the timings.
  await fetch(`${url}${modelUrl.slice(1)}${gguf ? '' : 'model.safetensors'}`, { method: 'HEAD' });
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'peer-gitcap-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    // PEER_CHROMIUM_ARGS: extra flags for experiments, e.g. '--js-flags=--no-liftoff'.
    args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run',
      ...(process.env.PEER_CHROMIUM_ARGS || '').split(' ').filter(Boolean)],
    serviceWorkers: 'block',
  });
  const close = async () => {
    await context.close().catch(() => {});
    proc.kill('SIGTERM');
    fs.rmSync(profile, { recursive: true, force: true });
  };
  try {
    const page = context.pages()[0] ?? (await context.newPage());
    page.on('pageerror', (e) => log('page error:', e.message));
    const q = new URLSearchParams({ model: modelUrl, max_new_tokens: '1', beams: '1', threads: String(threads), ...Object.fromEntries(new URLSearchParams(extraQuery)) });
    const t0 = Date.now();
    await page.goto(`${url}?${q}`);
    await page.waitForSelector('#model-status[data-state=ready], #model-status[data-state=error]', { timeout: 30 * 60_000 });
    const st = await page.$eval('#model-status', (e) => ({ ...e.dataset }));
    if (st.state === 'error') throw new Error(`load failed: ${st.error}`);
    const info = {
      threads,
      loadMs: Date.now() - t0,
      backend: await page.textContent('#backend'),
      backendThreads: Number(await page.$eval('#backend', (e) => e.dataset.threads || '0')),
      crossOriginIsolated: await page.evaluate(() => crossOriginIsolated),
      chromium: context.browser()?.version() ?? null,
    };
    if (info.backendThreads !== threads) throw new Error(`asked for ${threads} threads, the page runs ${info.backendThreads}: ${info.backend}`);
    log(JSON.stringify(info));
    return {
      info,
      close,
      async once() {
        await page.setInputFiles('input[type=file]', image);
        await page.waitForSelector('#caption[data-done], #caption[data-error]', { state: 'attached', timeout: 30 * 60_000 });
        const d = await page.$eval('#caption', (c) => ({ ...c.dataset }));
        if ('error' in d) throw new Error(`caption failed: ${d.error}`);
        // The whole caption's figures too, for the caption-level comparisons and for finding
        // where a thread count loses time (products split, integer products run).
        log(`caption: encode ${d.encodeMs} ms, ${d.tokens} tokens at ${d.perTokenMs} ms, total ${d.totalMs} ms, splits ${d.splits}, int8 products ${d.int8Products} (paired ${d.int8PairedProducts})`);
        return { ms: Number(d.encodeMs), totalMs: Number(d.totalMs), perTokenMs: Number(d.perTokenMs) };
      },
    };
  } catch (e) {
    await close();
    throw e;
  }
}

await serve(async () => {
  if (mode === 'cli') {
    const v = spawnSync(bin, ['--version'], { encoding: 'utf8' });
    return { info: { threads, bin, version: (v.stdout || '').trim() }, close: async () => {}, once: cliOnce };
  }
  return pageWorker();
}, log);
