#!/usr/bin/env node
// ONNX Runtime Web (npm onnxruntime-web, wasm backend) in headless Chromium, held loaded for
// bench/peer/run.mjs. Same line protocol as py_worker.py:
//   node bench/peer/ortweb_worker.mjs MODEL.onnx PIXELS.f32 THREADS [REFERENCE.f32]
// prints {"ready": true, "info": {...}} once the session exists, then {"ms": ...} per "run" line.
// With REFERENCE (ONNX Runtime's native output for the same model and pixels), the first
// encoding's relative error against it is reported in info.relErrVsNative.
import { logger, say, serve } from './worker_protocol.mjs';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { serveStatic } from './static_server.mjs';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const [model, pixels, threadsArg, reference] = process.argv.slice(2);
const threads = Number(threadsArg);
if (!model || !pixels || !(threads > 0)) {
  console.error('usage: node bench/peer/ortweb_worker.mjs MODEL.onnx PIXELS.f32 THREADS [REFERENCE.f32]');
  process.exit(2);
}
const log = logger('ort-web');

const modelDir = path.dirname(path.resolve(model));
if (path.dirname(path.resolve(pixels)) !== modelDir) throw new Error('MODEL and PIXELS must be in one folder');
const server = await serveStatic({
  '/ort/': path.join(ROOT, 'node_modules/onnxruntime-web/dist'),
  '/models/': modelDir,
  '/': path.join(ROOT, 'bench/peer/web'),
});
const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'peer-ortweb-'));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run'],
});
const cleanup = async () => {
  await context.close().catch(() => {});
  server.close();
  fs.rmSync(profile, { recursive: true, force: true });
};
await serve(async () => {
  const page = context.pages()[0] ?? (await context.newPage());
  const loaded = [];
  page.on('response', (r) => {
    if (/\.wasm$/.test(new URL(r.url()).pathname)) loaded.push(new URL(r.url()).pathname);
  });
  page.on('console', (m) => m.type() === 'error' && log('console:', m.text()));
  page.on('pageerror', (e) => log('page error:', e.message));
  page.on('crash', () => log('the page crashed'));
  page.on('close', () => log('the page closed'));
  context.on('close', () => log('the browser context closed'));
  await page.goto(`${server.url}ort.html`);
  await page.waitForFunction(() => typeof window.setup === 'function');
  const info = await page.evaluate((a) => window.setup(a), {
    model: `/models/${path.basename(model)}`,
    pixels: `/models/${path.basename(pixels)}`,
    threads,
  });
  info.wasmLoaded = [...new Set(loaded)];
  info.chromium = context.browser()?.version() ?? (await page.evaluate(() => navigator.userAgent));
  info.threads = threads;
  if (threads > 1 && !(info.crossOriginIsolated && info.sharedArrayBuffer)) {
    throw new Error(`asked for ${threads} threads but the page is not cross-origin isolated: ${JSON.stringify(info)}`);
  }
  if (reference) {
    const first = await page.evaluate(() => window.encode(true));
    const want = new Float32Array(fs.readFileSync(reference).buffer.slice(0));
    let d = 0, n = 0;
    for (let i = 0; i < want.length; i++) {
      d += (first.data[i] - want[i]) ** 2;
      n += want[i] ** 2;
    }
    info.outputDims = first.dims;
    info.relErrVsNative = Math.sqrt(d / n);
    info.firstMs = first.ms;
  }
  log(JSON.stringify(info));
  return { info, once: async () => {
    const r = await page.evaluate(() => window.encode());
    return { ms: r.ms, shape: r.dims };
  } };
}, log, cleanup);
