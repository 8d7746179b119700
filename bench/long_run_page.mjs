// Many captions in one page: do wasm memory and the renderer's resident memory stay flat, and does
// the worker keep working after many cancels? (issue 14's long runs; a measurement, not a test)
//
//   node bench/long_run_page.mjs MODEL [--captions 200] [--cancels 50] [--image FILE] [--query k=v&...]
//                                      [--page demo|module] [--every 10] [--json FILE]
//
// MODEL: a checkpoint folder or a .gguf file, served by `gitcap serve` (target/release/gitcap, else
// target/debug/gitcap) with the page. --page demo (default): the demo page, www/ (app.js);
// --page module: a plain page that loads the module (www/gitcap.js, the same worker and wasm
// builds) and keeps nothing, to tell the demo's memory from the module's (--query input=blob
// hands it Blobs, as the demo does). Captions IMAGE N times in one page, recording after each the
// worker's wasm memory and the resident memory (/proc) of this browser's renderers: the page's
// own (the one whose threads include the workers: page, model worker, thread pool and service
// worker share it), split into anonymous, file and shared pages, and all of them (the first
// figures' sum, which included headless Chromium's WebUI renderers, a constant).
// At caption 20, at N and after the cancels, a probe: the JavaScript heaps (page, model worker,
// pool workers: CDP Runtime.getHeapUsage, whose backingStorageSize counts ArrayBuffers), the
// page's DOM counters and live Blobs, and the memory once more after HeapProfiler.collectGarbage
// in the page and the model worker; at N and after the cancels, once more after a critical
// memory-pressure signal (caches let go). Garbage is the difference between the first two; what
// survives the signal is held. --every K probes every K captions too (diagnosis: each collection
// changes the run it measures).
// Then C start/cancel cycles, cancelled at three points in turn (in the task that starts it,
// before the worker has it; at the 'encoded' event, while the worker holds it; at the first
// token), and one more caption, which must give the first caption's ids. --json FILE writes every
// figure, with the CPU (lscpu), Chromium's version and the build the page ran.
import puppeteer from 'puppeteer-core';
import { spawn, execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const args = process.argv.slice(2);
const opt = (name, dflt) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : dflt;
};
const model = args[0] && path.resolve(args[0]);
if (!model || !fs.existsSync(model)) {
  console.error(
    'usage: node bench/long_run_page.mjs MODEL [--captions 200] [--cancels 50] [--image FILE] [--query k=v]\n' +
      '                                   [--page demo|module] [--every 10] [--json FILE]'
  );
  process.exit(2);
}
const captions = Number(opt('--captions', '200'));
const cancels = Number(opt('--cancels', '50'));
const every = Number(opt('--every', '0'));
const pageKind = opt('--page', 'demo');
const jsonOut = opt('--json', null);
const image = path.resolve(opt('--image', path.join(ROOT, 'tests/images/chelsea.png')));
const extra = opt('--query', '');
const bin = ['release', 'debug'].map((p) => path.join(ROOT, 'target', p, 'gitcap')).find((p) => fs.existsSync(p));
if (!['demo', 'module'].includes(pageKind)) throw new Error(`--page demo|module, not ${pageKind}`);

// The site: www/ itself for the demo; for the module page, a folder with the module's files and
// wasm builds from www/ (as build.sh's dist/gitcap/ has them) and a page that keeps nothing.
const MODULE_FILES = ['gitcap.js', 'worker.js', 'protocol.js', 'wasm.js', 'model.js', 'storage.js', 'download.js', 'hub.js', 'models.js', 'store_q8.js'];
let site = path.join(ROOT, 'www');
let tmpSite = null;
if (pageKind === 'module') {
  tmpSite = site = fs.mkdtempSync(path.join(os.tmpdir(), 'gitcap-longrun-site-'));
  for (const f of MODULE_FILES) fs.copyFileSync(path.join(ROOT, 'www', f), path.join(site, f));
  for (const d of ['pkg', 'pkg-relaxed', 'pkg-threads', 'pkg-threads-relaxed']) {
    if (fs.existsSync(path.join(ROOT, 'www', d, 'gitcap.js'))) fs.cpSync(path.join(ROOT, 'www', d), path.join(site, d), { recursive: true });
  }
  fs.writeFileSync(path.join(site, 'index.html'), '<!doctype html><meta charset="utf-8"><title>long run</title><script type="module" src="page.js"></script>\n');
  fs.writeFileSync(
    path.join(site, 'page.js'),
    `// A page that captions with the module and keeps nothing of it (bench/long_run_page.mjs).
import { Captioner } from './gitcap.js';
const q = new URLSearchParams(location.search);
const knob = (k) => (q.has(k) ? q.get(k) : undefined);
const c = await Captioner.load({
  model: q.get('model'),
  persist: false,
  threads: q.has('threads') ? Number(q.get('threads')) : undefined,
  tuning: { minSplitMacs: knob('split_min'), minSplitRows: knob('split_rows'), kernelMinRows: knob('kernel_min'), int8MinRows: knob('int8_min'), relaxed: q.get('relaxed') === '0' ? false : undefined },
});
const b = c.info.build;
window.bench = {
  backend: c.info.backend + (b.relaxed ? ' + relaxed SIMD' : ''),
  async caption(bytes) {
    // ?input=blob: hand the module a Blob (as the demo does, and a site with a File would).
    const r = await c.caption(q.get('input') === 'blob' ? new Blob([bytes], { type: 'image/png' }) : bytes);
    return { tokenIds: r.tokenIds.join(','), wasmBytes: r.timings.wasmBytes };
  },
  // Starts a caption and aborts it at 'now', 'encoded' or 'token'; resolves with how it ended.
  async cancelAt(bytes, when) {
    const ac = new AbortController();
    const p = c.caption(bytes, {
      signal: ac.signal,
      onEvent: (ev) => ev.type === 'encoded' && when === 'encoded' && ac.abort(),
      onToken: () => when === 'token' && ac.abort(),
    });
    if (when === 'now') ac.abort();
    return p.then(() => 'done', (e) => (e.name === 'AbortError' ? 'cancelled' : 'error: ' + e.message));
  },
};
document.body.dataset.ready = '';
`
  );
}

const modelDir = fs.statSync(model).isDirectory() ? model : path.dirname(model);
const server = spawn(bin, ['serve', site, '--port', '0', '--model-dir', modelDir], { stdio: ['ignore', 'pipe', 'inherit'] });
const url = await new Promise((resolve, reject) => {
  readline.createInterface({ input: server.stdout }).on('line', (l) => {
    const m = /(http:\/\/127\.0\.0\.1:\d+)/.exec(l);
    if (m) resolve(m[1]);
  });
  server.on('exit', (c) => reject(new Error(`gitcap serve exited with ${c}`)));
});
const modelUrl = `/models/${path.basename(modelDir)}/${fs.statSync(model).isDirectory() ? '' : path.basename(model)}`;

// This browser's processes: the descendants of the one puppeteer started (not any other Chromium
// on the machine), with their kind (--type=, --utility-sub-type=) and memory.
function processes(rootPid) {
  const parent = new Map();
  for (const pid of fs.readdirSync('/proc').filter((d) => /^\d+$/.test(d))) {
    try {
      const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
      parent.set(Number(pid), Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]));
    } catch {}
  }
  const mine = (pid) => {
    for (let p = pid, n = 0; p > 1 && n < 32; p = parent.get(p), n++) if (p === rootPid) return true;
    return false;
  };
  const out = [];
  for (const pid of parent.keys()) {
    if (!mine(pid)) continue;
    try {
      const cmd = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8');
      const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
      const kb = (k) => Number((new RegExp(`${k}:\\s+(\\d+) kB`).exec(status) || [0, 0])[1]) * 1024;
      const type = /--type=([\w-]+)/.exec(cmd)?.[1] ?? 'browser';
      const sub = /--utility-sub-type=([\w.-]+)/.exec(cmd)?.[1];
      // Which renderer runs what: its threads' names (the model worker and the thread pool's are
      // "DedicatedWorker", a service worker's "ServiceWorker t...").
      const threads = {};
      for (const t of fs.readdirSync(`/proc/${pid}/task`)) {
        try {
          const n = fs.readFileSync(`/proc/${pid}/task/${t}/comm`, 'utf8').trim();
          if (/Worker/.test(n)) threads[n] = (threads[n] ?? 0) + 1;
        } catch {}
      }
      out.push({ pid, type: sub ? `utility:${sub.split('.').pop()}` : type, rss: kb('VmRSS'), anon: kb('RssAnon'), file: kb('RssFile'), shmem: kb('RssShmem'), threads });
    } catch {}
  }
  return out;
}
// The renderer figures: all of this browser's renderers (what the first figures summed: with
// headless Chromium's WebUI renderers, about 240 MB that do not change), and the page's own
// renderer, the one running the workers (the page, its model worker, the thread pool and the
// service worker share it), split into anonymous, file-backed and shared pages.
function rendererMemory(rootPid) {
  const rs = processes(rootPid).filter((p) => p.type === 'renderer');
  const mine = rs.filter((p) => p.threads.DedicatedWorker);
  const sum = (xs, k) => xs.reduce((s, x) => s + x[k], 0);
  return { rss: sum(rs, 'rss'), pageRss: sum(mine, 'rss'), pageAnon: sum(mine, 'anon'), pageFile: sum(mine, 'file'), pageShmem: sum(mine, 'shmem') };
}

const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'gitcap-longrun-'));
const browser = await puppeteer.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  userDataDir: profile,
  protocolTimeout: 30 * 60_000,
  args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run'],
});
const rootPid = browser.process().pid;
const mb = (b) => (b / 1e6).toFixed(1);
const result = { model: path.basename(model), page: pageKind, captions, cancels, samples: [], details: [] };
const lscpu = (() => {
  try {
    return /Model name:\s*(.*)/.exec(execFileSync('lscpu', { encoding: 'utf8' }))?.[1]?.trim();
  } catch {
    return null;
  }
})();
try {
  const page = await browser.newPage();
  // The first tab, about:blank, closed: its renderer would only add a constant to the figures.
  for (const p of await browser.pages()) if (p !== page) await p.close();
  page.setDefaultTimeout(30 * 60_000);
  result.chromium = await browser.version();
  result.cpu = `${lscpu ?? os.cpus()[0].model}, ${os.cpus().length} cores`;
  const query = `model=${encodeURIComponent(modelUrl)}&nosave=1${extra ? `&${extra}` : ''}`;
  const t0 = Date.now();
  await page.goto(`${url}/?${query}`);
  if (pageKind === 'demo') {
    await page.waitForSelector('#model-status[data-state=ready]');
    result.backend = await page.$eval('#backend', (e) => e.textContent);
    result.threads = await page.$eval('#backend', (e) => Number(e.dataset.threads));
  } else {
    await page.waitForSelector('body[data-ready]');
    result.backend = await page.evaluate(() => window.bench.backend);
    result.threads = Number(/(\d+) threads?/.exec(result.backend)?.[1]);
  }
  result.loadS = (Date.now() - t0) / 1000;
  console.log(`cpu: ${result.cpu}; ${result.chromium}; ${pageKind} page; ${result.backend}`);

  // The image once, kept by the page and handed as it is to each caption: the demo's captionBytes
  // copies it into a Blob, the module into the buffer it sends its worker. (A copy per caption
  // here, as the first version made, was 240 KB of garbage per caption, which the page's V8
  // collects only every 60 MB or so: it alone swung the renderer's RSS by that much.)
  await page.evaluate((b64) => {
    window.__image = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  }, fs.readFileSync(image).toString('base64'));

  const captionOnce =
    pageKind === 'demo'
      ? () =>
          page.evaluate(
            () =>
              new Promise((resolve) => {
                const el = document.querySelector('#caption');
                const id = window.gitcap.captionBytes(window.__image.buffer, 'image.png', 'image/png');
                const check = () => {
                  const it = window.gitcap.items.get(id);
                  if (it.status === 'done' || it.status === 'error') {
                    obs.disconnect();
                    resolve(it.status === 'done' ? { ...el.dataset } : { error: it.error });
                  }
                };
                const obs = new MutationObserver(check);
                obs.observe(el, { attributes: true });
                check();
              })
          )
      : () => page.evaluate(() => window.bench.caption(window.__image));

  // One cancel: 'now' (in the task that starts it), 'encoded' or 'token'. Resolves with how it ended.
  const cancelOnce =
    pageKind === 'demo'
      ? (when) =>
          page.evaluate(
            (when) =>
              new Promise((resolve) => {
                const el = document.querySelector('#caption');
                const id = window.gitcap.captionBytes(window.__image.buffer, 'image.png', 'image/png');
                const it = window.gitcap.items.get(id);
                const check = () => {
                  if (when === 'encoded' && 'encodeMs' in el.dataset && it.status === 'running') window.gitcap.cancel(id);
                  if (when === 'token' && 'fragments' in el.dataset && it.status === 'running') window.gitcap.cancel(id);
                  if (it.status === 'done' || it.status === 'error' || it.status === 'cancelled') {
                    obs.disconnect();
                    resolve(it.status === 'error' ? `error: ${it.error}` : it.status);
                  }
                };
                const obs = new MutationObserver(check);
                obs.observe(el, { attributes: true });
                if (when === 'now') window.gitcap.cancel(id);
                check();
              }),
            when
          )
      : (when) => page.evaluate((when) => window.bench.cancelAt(window.__image, when), when);

  // Every JavaScript isolate of the page: the page and its workers (the model worker and, threaded,
  // the pool's), each with a CDP session of its own.
  const sessions = new Map();
  const pageCdp = await page.createCDPSession();
  const isolates = async () => {
    const now = page.workers();
    for (const w of now) {
      if (!sessions.has(w)) sessions.set(w, { name: w.url().startsWith('blob:') ? 'pool worker' : `worker ${w.url().split('/').pop()}`, cdp: w.client });
    }
    for (const w of sessions.keys()) if (!now.includes(w)) sessions.delete(w);
    return [{ name: 'page', cdp: pageCdp }, ...sessions.values()];
  };
  const heaps = async () => {
    const out = [];
    for (const s of await isolates()) {
      try {
        const h = await s.cdp.send('Runtime.getHeapUsage');
        out.push({ name: s.name, used: h.usedSize, total: h.totalSize, backing: h.backingStorageSize ?? null, embedder: h.embedderHeapUsedSize ?? null });
      } catch (e) {
        out.push({ name: s.name, error: e.message });
      }
    }
    return out;
  };
  // A probe: the figures as they are, then after a garbage collection in the page and the model
  // worker (what is left is what the page still references), and with `pressure`, after a
  // critical memory-pressure signal too (what is left after it is not a cache either). Only at
  // caption 20 (collection only: the signal empties caches, which would change what follows),
  // at the last caption and after the cancels, unless --every asks for more.
  const detail = async (i, wasm, { pressure = false } = {}) => {
    const before = { procs: processes(rootPid), heaps: await heaps(), dom: await pageCdp.send('Memory.getDOMCounters') };
    // Not in the thread pool's workers: HeapProfiler.collectGarbage there ended the renderer
    // (Chromium 156, a worker parked in Atomics.wait); their heaps hold under 1 MB anyway.
    for (const s of await isolates()) if (s.name !== 'pool worker') await s.cdp.send('HeapProfiler.collectGarbage');
    const after = { procs: processes(rootPid), heaps: await heaps(), dom: await pageCdp.send('Memory.getDOMCounters') };
    // Blobs the page's JavaScript still references (the demo's images are Blobs).
    const proto = await page.evaluateHandle(() => Blob.prototype);
    const alive = await page.queryObjects(proto);
    after.blobs = await alive.evaluate((xs) => ({ n: xs.length, bytes: xs.reduce((s, b) => s + b.size, 0) }));
    await Promise.all([proto.dispose(), alive.dispose()]);
    let purged = null;
    if (pressure) {
      await pageCdp.send('Memory.simulatePressureNotification', { level: 'critical' });
      await new Promise((r) => setTimeout(r, 1000)); // the renderer purges on its own threads; no event says when it is done
      purged = { procs: processes(rootPid) };
    }
    result.details.push({ i, wasm, before, after, purged });
    const r = (x) => x.procs.filter((p) => p.type === 'renderer' && p.threads.DedicatedWorker);
    const sum = (xs, k) => xs.reduce((s, x) => s + (x[k] ?? 0), 0);
    console.log(
      `  [${i}] page's renderer RSS ${mb(sum(r(before), 'rss'))} MB, after GC ${mb(sum(r(after), 'rss'))} MB (anon ${mb(sum(r(after), 'anon'))}, ` +
        `shmem ${mb(sum(r(after), 'shmem'))})` +
        (purged ? `, after memory pressure ${mb(sum(r(purged), 'rss'))} MB (anon ${mb(sum(r(purged), 'anon'))}, shmem ${mb(sum(r(purged), 'shmem'))})` : '') +
        `; JS heaps used ${mb(sum(before.heaps, 'used'))} -> ${mb(sum(after.heaps, 'used'))} MB, ArrayBuffers ${mb(sum(before.heaps, 'backing'))} -> ` +
        `${mb(sum(after.heaps, 'backing'))} MB in ${after.heaps.length} isolates; DOM nodes ${after.dom.nodes}, listeners ${after.dom.jsEventListeners}, ` +
        `Blobs ${after.blobs.n} (${mb(after.blobs.bytes)} MB)`
    );
  };

  let firstIds = null;
  const started = Date.now();
  for (let i = 1; i <= captions; i++) {
    const d = await captionOnce();
    if ('error' in d) throw new Error(`caption ${i}: ${d.error}`);
    firstIds ??= d.tokenIds;
    if (d.tokenIds !== firstIds) throw new Error(`caption ${i} differs from the first`);
    result.samples.push({ i, wasm: Number(d.wasmBytes), ...rendererMemory(rootPid), t: (Date.now() - started) / 1000 });
    if (i === 20 || i === captions || (every && i % every === 0)) await detail(i, Number(d.wasmBytes), { pressure: i === captions });
  }
  const at = (i) => result.samples[Math.min(i, result.samples.length) - 1];
  const a = at(20);
  const b = at(captions);
  result.captionsS = (Date.now() - started) / 1000;
  result.summary = {};
  console.log(`${captions} captions in ${result.captionsS.toFixed(0)} s, all with the same ids`);
  for (const [k, what] of [['wasm', 'wasm memory'], ['pageRss', "the page's renderer RSS"], ['pageAnon', '  its anonymous pages'], ['pageShmem', '  its shared memory'], ['rss', 'all renderers RSS']]) {
    result.summary[k] = { at: a.i, a: a[k], end: b.i, b: b[k], ratio: b[k] / a[k] };
    console.log(`${what}: caption ${a.i} ${mb(a[k])} MB, caption ${b.i} ${mb(b[k])} MB, ratio ${(b[k] / a[k]).toFixed(3)}`);
  }
  const gcd = (i) => result.details.find((d) => d.i === i);
  const ga = gcd(a.i);
  const gb = gcd(b.i);
  if (ga && gb && ga !== gb) {
    const mine = (d, k) => d.after.procs.filter((p) => p.type === 'renderer' && p.threads.DedicatedWorker).reduce((s, p) => s + p[k], 0);
    const all = (d) => d.after.procs.filter((p) => p.type === 'renderer').reduce((s, p) => s + p.rss, 0);
    for (const [k, what, f] of [['pageRssAfterGc', "the page's renderer RSS after GC", (d) => mine(d, 'rss')], ['pageAnonAfterGc', '  its anonymous pages', (d) => mine(d, 'anon')], ['rssAfterGc', 'all renderers RSS after GC', all]]) {
      result.summary[k] = { at: a.i, a: f(ga), end: b.i, b: f(gb), ratio: f(gb) / f(ga) };
      console.log(`${what}: caption ${a.i} ${mb(f(ga))} MB, caption ${b.i} ${mb(f(gb))} MB, ratio ${(f(gb) / f(ga)).toFixed(3)}`);
    }
  }

  const ends = { now: {}, encoded: {}, token: {} };
  const points = Object.keys(ends);
  for (let i = 0; i < cancels; i++) {
    const when = points[i % points.length];
    const how = await cancelOnce(when);
    ends[when][how] = (ends[when][how] ?? 0) + 1;
  }
  const after = await captionOnce();
  const cancelled = points.reduce((s, w) => s + (ends[w].cancelled ?? 0), 0);
  result.cancel = { ends, cancelled, nextSameIds: after.tokenIds === firstIds, wasm: Number(after.wasmBytes), ...rendererMemory(rootPid) };
  console.log(
    `${cancels} start/cancel cycles: ${cancelled} cancelled (${points.map((w) => `${w}: ${JSON.stringify(ends[w])}`).join('; ')}); ` +
      `the next caption ${after.tokenIds === firstIds ? 'gives the same ids' : `DIFFERS (${after.error ?? after.tokenIds})`}; ` +
      `wasm memory ${mb(result.cancel.wasm)} MB, the page's renderer RSS ${mb(result.cancel.pageRss)} MB (all renderers ${mb(result.cancel.rss)} MB)`
  );
  await detail('after cancels', result.cancel.wasm, { pressure: true });
} finally {
  await browser.close();
  server.kill();
  fs.rmSync(profile, { recursive: true, force: true });
  if (tmpSite) fs.rmSync(tmpSite, { recursive: true, force: true });
  if (jsonOut) fs.writeFileSync(jsonOut, `${JSON.stringify(result, null, 1)}\n`);
}
