#!/usr/bin/env node
// Browser benchmark (not a test): serves a model folder with `gitcap serve`, opens the page in
// headless Chromium and measures, from the worker's own timings:
//   - first load: download from the local server into OPFS while loading (network + store + parse)
//   - model load from the browser's store (a reload): what a returning user waits for
//   - image encoding (decode + preprocessing + vision tower + image half of the decoder)
//   - per-token decode time and the whole greedy caption (--tokens, default 20)
//   - wasm memory (memory.buffer.byteLength, current and peak, reported by the worker) and
//     performance.measureUserAgentSpecificMemory() where the browser offers it
//   - what the browser keeps: the bytes of the model's files in OPFS, and how (the `store` the
//     page's module chose: --query store=as-is|q8_0|q4k, or its default)
//
//   - with --threads 1,2,...: the captions once per thread count (?threads=N: 1 is the
//     single-threaded build, more the threaded build; the page's default is all cores);
//     with --rounds R the thread counts take turns R times (1, 2, 1, 2, ...), so that a slow
//     spell of a shared machine falls on both, and each round's speed-up is reported too
//
// Usage: node bench/browser_bench.mjs <model folder | file.gguf> [--image FILE] [--tokens N] [--runs N]
//        [--threads 1,2,4] [--rounds R] [--bin path/to/gitcap] [--www folder] [--chunk-kib N] [--json out.json]
//        [--screenshot out.png] [--query k=v&k2=v2]
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { refuseDevBuilds } from './release_pages.mjs';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const args = process.argv.slice(2);
const opt = (name, dflt) => {
  const i = args.indexOf(name);
  if (i < 0) return dflt;
  const v = args[i + 1];
  args.splice(i, 2);
  return v;
};
const image = path.resolve(opt('--image', path.join(ROOT, 'tests/images/chelsea.png')));
const tokens = Number(opt('--tokens', '20'));
const runs = Number(opt('--runs', '3'));
const chunkKib = opt('--chunk-kib', null);
// Extra page parameters, e.g. --query kernel_min=1000000 (candle's matmul instead of the kernel).
const extraQuery = opt('--query', '');
const jsonOut = opt('--json', null);
const screenshot = opt('--screenshot', null);
const threadCounts = (opt('--threads', '') || '').split(',').filter(Boolean).map(Number);
const rounds = Math.max(1, Number(opt('--rounds', '1')) || 1);
let bin = opt('--bin', null);
const www = path.resolve(ROOT, opt('--www', process.env.GITCAP_WWW || 'www'));
refuseDevBuilds(www);
const modelDir = args[0] && path.resolve(args[0]);
if (!modelDir || !fs.existsSync(modelDir)) {
  console.error('usage: node bench/browser_bench.mjs <model folder> [--image FILE] [--tokens N] [--runs N] [--bin gitcap]');
  process.exit(2);
}
if (!bin) {
  bin = ['release', 'debug'].map((p) => path.join(ROOT, 'target', p, 'gitcap')).find((p) => fs.existsSync(p));
  if (!bin) {
    console.error('no target/{release,debug}/gitcap: build it (cargo build --release --features native) or pass --bin');
    process.exit(2);
  }
}
if (!fs.existsSync(path.join(www, 'pkg/gitcap.js'))) {
  console.error(`${www}/pkg is missing: run bash build.sh first`);
  process.exit(2);
}

/** Peak resident memory (VmHWM) of this profile's Chromium renderer processes (Linux /proc). */
function rendererPeakRss(profile) {
  let best = null;
  for (const pid of fs.readdirSync('/proc').filter((d) => /^\d+$/.test(d))) {
    try {
      const cmd = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8');
      if (!cmd.includes('--type=renderer') || !cmd.includes(profile)) continue;
      const m = /VmHWM:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
      if (m && (best == null || Number(m[1]) * 1024 > best)) best = Number(m[1]) * 1024;
    } catch {}
  }
  return best;
}

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length ? (s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2) : NaN;
};
const mb = (n) => (n / 1e6).toFixed(1);
const log = (...a) => console.error('#', ...a);

function serve() {
  const proc = spawn(bin, ['serve', www, '--port', '0', '--model-dir', modelDir], { cwd: ROOT, stdio: ['ignore', 'pipe', 'inherit'] });
  return new Promise((resolve, reject) => {
    let out = '';
    proc.stdout.on('data', (d) => {
      out += d;
      const m = /http:\/\/127\.0\.0\.1:\d+\//.exec(out);
      if (m) resolve({ url: m[0], proc });
    });
    proc.once('exit', (c) => reject(new Error(`gitcap serve exited ${c}: ${out}`)));
  });
}

async function caption(page) {
  await page.setInputFiles('input[type=file]', image);
  await page.waitForSelector('#caption[data-done], #caption[data-error]', { state: 'attached', timeout: 30 * 60_000 });
  const d = await page.$eval('#caption', (c) => ({ ...c.dataset, text: c.textContent }));
  if ('error' in d) throw new Error(`caption failed: ${d.error}`);
  return {
    text: d.text,
    tokens: Number(d.tokens),
    encodeMs: Number(d.encodeMs),
    firstTokenMs: Number(d.firstTokenMs),
    decodeMs: Number(d.decodeMs),
    perTokenMs: Number(d.perTokenMs),
    totalMs: Number(d.totalMs),
    wasmBytes: Number(d.wasmBytes),
    peakWasmBytes: Number(d.peakWasmBytes),
  };
}

async function main() {
  const server = await serve();
  const name = path.basename(modelDir);
  // The server hashes model files for their ETag once, on start; wait for that outside the timings.
  log('waiting for gitcap serve to hash the model files');
  // A single .gguf file is mounted as /models/<file name> itself; a folder as /models/<name>/.
  const gguf = modelDir.endsWith('.gguf');
  const modelUrl = gguf ? `/models/${name}` : `/models/${name}/`;
  await fetch(`${server.url}${modelUrl.slice(1)}${gguf ? '' : 'model.safetensors'}`, { method: 'HEAD' });
  const weightsBytes = (gguf ? [modelDir] : [path.join(modelDir, 'model.safetensors')])
    .filter((f) => fs.existsSync(f))
    .reduce((s, f) => s + fs.statSync(f).size, 0);
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'gitcap-bench-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    // BENCH_CHROMIUM_ARGS: extra flags for experiments, e.g. '--js-flags=--perf-basic-prof' to
    // profile the wasm with Linux perf.
    args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run', '--enable-blink-features=ForceEagerMeasureMemory',
      ...(process.env.BENCH_CHROMIUM_ARGS || '').split(' ').filter(Boolean)],
    serviceWorkers: 'block',
    viewport: { width: 1100, height: 900 },
  });
  // The CPU with every figure: engines rank differently on different CPUs.
  const cpu = { model: os.cpus()[0]?.model ?? null, count: os.cpus().length };
  const result = { model: name, cpu, weightsBytes, image: path.basename(image), tokens, runs, chromium: context.browser()?.version() ?? null };
  try {
    const page = context.pages()[0] ?? (await context.newPage());
    page.on('pageerror', (e) => log('page error:', e.message));
    const q = new URLSearchParams({ model: modelUrl, max_new_tokens: String(tokens), beams: '1' });
    if (chunkKib) q.set('chunk_kib', chunkKib);
    for (const [k, v] of new URLSearchParams(extraQuery)) q.set(k, v);
    const url = `${server.url}?${q}`;

    log(`first visit: download ${mb(weightsBytes)} MB from the local server into OPFS, loading as it arrives`);
    await page.goto(url);
    await page.waitForSelector('#model-status[data-state=ready], #model-status[data-state=error]', { timeout: 30 * 60_000 });
    let st = await page.$eval('#model-status', (e) => ({ ...e.dataset, text: e.textContent }));
    if (st.state === 'error') throw new Error(`load failed: ${st.error}`);
    result.firstLoadMs = Number(st.loadMs);
    result.wasmBytesFirstLoad = Number(st.wasmBytes);
    result.backend = await page.textContent('#backend');
    result.crossOriginIsolated = await page.evaluate(() => crossOriginIsolated);
    log(`  ${result.firstLoadMs} ms; ${result.backend}`);

    // What is kept: every file of the model's OPFS folder (manifest and small files included).
    Object.assign(
      result,
      await page.evaluate(async () => {
        const root = await (await navigator.storage.getDirectory()).getDirectoryHandle('gitcap-models');
        let storedBytes = 0;
        let store = null;
        for await (const [, dir] of root.entries()) {
          for await (const [name, h] of dir.entries()) {
            storedBytes += (await h.getFile()).size;
            if (name === 'manifest.json') store = JSON.parse(await (await h.getFile()).text()).store ?? null;
          }
        }
        return { storedBytes, store };
      })
    );
    log(`  kept in OPFS: ${mb(result.storedBytes)} MB (store ${result.store})`);

    log('reload: model from the browser store');
    await page.reload();
    await page.waitForSelector('#model-status[data-state=ready], #model-status[data-state=error]', { timeout: 30 * 60_000 });
    st = await page.$eval('#model-status', (e) => ({ ...e.dataset }));
    if (st.state === 'error') throw new Error(`cached load failed: ${st.error}`);
    if (st.fromCache !== 'true') throw new Error('the reload did not load from the store');
    result.cachedLoadMs = Number(st.loadMs);
    result.wasmBytesAfterLoad = Number(st.wasmBytes);
    log(`  ${result.cachedLoadMs} ms; wasm memory ${mb(result.wasmBytesAfterLoad)} MB`);

    const summary = (all) => ({
      captions: all,
      encodeMs: median(all.map((r) => r.encodeMs)),
      perTokenMs: median(all.map((r) => r.perTokenMs)),
      totalMs: median(all.map((r) => r.totalMs)),
      steps: all[0].tokens,
      peakWasmBytes: Math.max(...all.map((r) => r.peakWasmBytes)),
    });
    const captions = async () => {
      const all = [];
      for (let i = 0; i < runs; i++) {
        const r = await caption(page);
        all.push(r);
        log(`  caption ${i + 1}: encode ${r.encodeMs} ms, ${r.tokens} tokens at ${r.perTokenMs} ms, total ${r.totalMs} ms: "${r.text}"`);
      }
      return summary(all);
    };
    Object.assign(result, await captions());
    if (screenshot) await page.screenshot({ path: screenshot, fullPage: true });

    const byThreads = new Map();
    result.rounds = [];
    for (let round = 0; round < rounds; round++) {
      const medians = {};
      for (const n of threadCounts) {
        q.set('threads', String(n));
        log(`?threads=${n}${rounds > 1 ? ` (round ${round + 1} of ${rounds})` : ''}: model from the browser store`);
        await page.goto(`${server.url}?${q}`);
        await page.waitForSelector('#model-status[data-state=ready], #model-status[data-state=error]', { timeout: 30 * 60_000 });
        st = await page.$eval('#model-status', (e) => ({ ...e.dataset }));
        if (st.state === 'error') throw new Error(`load with ${n} threads failed: ${st.error}`);
        const backend = await page.textContent('#backend');
        log(`  ${backend}`);
        const got = await captions();
        medians[n] = got.totalMs;
        const entry = byThreads.get(n) ?? { threads: n, backend, loadMs: Number(st.loadMs), captions: [] };
        entry.captions.push(...got.captions);
        byThreads.set(n, entry);
      }
      result.rounds.push(medians);
    }
    result.byThreads = [...byThreads.values()].map((e) => ({ ...e, ...summary(e.captions) }));
    result.rendererPeakRssBytes = rendererPeakRss(profile);
    result.userAgentMemory = await page.evaluate(async () => {
      if (!self.crossOriginIsolated || !performance.measureUserAgentSpecificMemory) return null;
      try {
        const m = await Promise.race([
          performance.measureUserAgentSpecificMemory(),
          new Promise((r) => setTimeout(() => r(null), 60_000)),
        ]);
        return m && { bytes: m.bytes, breakdown: m.breakdown.filter((b) => b.bytes > 1e6).map((b) => ({ bytes: b.bytes, types: b.types, scope: b.attribution?.[0]?.scope ?? null })) };
      } catch (e) {
        return { error: String(e) };
      }
    });
  } finally {
    await context.close();
    server.proc.kill('SIGTERM');
    fs.rmSync(profile, { recursive: true, force: true });
  }

  console.log(JSON.stringify(result, null, 2));
  if (jsonOut) fs.writeFileSync(jsonOut, JSON.stringify(result, null, 2));
  console.error(`
CPU: ${result.cpu.model} (${result.cpu.count} CPUs), Chromium ${result.chromium}

| measure | value |
| --- | --- |
| weights | ${mb(result.weightsBytes)} MB |
| kept in OPFS (store ${result.store}) | ${mb(result.storedBytes)} MB |
| first load (local download into OPFS + load) | ${(result.firstLoadMs / 1000).toFixed(2)} s |
| model load from the browser store | ${(result.cachedLoadMs / 1000).toFixed(2)} s |
| wasm memory after the first load | ${mb(result.wasmBytesFirstLoad)} MB |
| image encoding (median of ${runs}) | ${result.encodeMs} ms |
| per-token decode (median) | ${result.perTokenMs.toFixed(1)} ms |
| whole ${result.steps}-step greedy caption incl. encoding (median) | ${(result.totalMs / 1000).toFixed(2)} s |
| wasm memory after load / peak | ${mb(result.wasmBytesAfterLoad)} MB / ${mb(result.peakWasmBytes)} MB |
| renderer process peak RSS (VmHWM, whole run) | ${result.rendererPeakRssBytes ? `${mb(result.rendererPeakRssBytes)} MB` : 'n/a'} |
| measureUserAgentSpecificMemory | ${result.userAgentMemory?.bytes ? `${mb(result.userAgentMemory.bytes)} MB` : 'n/a'} |
`);
  if (result.byThreads.length) {
    const base = result.byThreads[0];
    console.error(`| threads | encode | per token | ${result.steps}-step caption | speed-up vs ${base.threads} |
| --- | --- | --- | --- | --- |
${result.byThreads
  .map((r) => `| ${r.threads} | ${(r.encodeMs / 1000).toFixed(2)} s | ${r.perTokenMs.toFixed(1)} ms | ${(r.totalMs / 1000).toFixed(2)} s | ${(base.totalMs / r.totalMs).toFixed(2)}× |`)
  .join('\n')}
`);
    if (rounds > 1) {
      const [first, ...others] = threadCounts;
      for (const n of others) {
        const ratios = result.rounds.map((m) => m[first] / m[n]);
        console.error(`speed-up ${first} → ${n} threads by round (median captions): ${ratios.map((r) => `${r.toFixed(2)}×`).join(', ')}; median ${median(ratios).toFixed(2)}×`);
      }
    }
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
