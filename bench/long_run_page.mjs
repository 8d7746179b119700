// Many captions in one page: do wasm memory and the renderer's resident memory stay flat, and does
// the worker keep working after many cancels? (issue 14's long runs; a measurement, not a test)
//
//   node bench/long_run_page.mjs MODEL [--captions 200] [--cancels 50] [--image FILE] [--query k=v&...]
//
// MODEL: a checkpoint folder or a .gguf file, served by `gitcap serve` (target/release/gitcap, else
// target/debug/gitcap) with the page from www/. Captions IMAGE N times in one headless Chromium
// page, recording after each the worker's wasm memory (`#caption[data-wasm-bytes]`) and the
// renderer processes' resident memory (VmRSS, /proc); then starts and cancels a caption C times
// (cancel sent in the same task, before the first token) and captions once more, which must give
// the first caption's ids. Prints the figures at caption 20 and N and their ratios.
import { chromium } from 'playwright-core';
import { spawn } from 'node:child_process';
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
  console.error('usage: node bench/long_run_page.mjs MODEL [--captions 200] [--cancels 50] [--image FILE] [--query k=v]');
  process.exit(2);
}
const captions = Number(opt('--captions', '200'));
const cancels = Number(opt('--cancels', '50'));
const image = path.resolve(opt('--image', path.join(ROOT, 'tests/images/chelsea.png')));
const extra = opt('--query', '');
const bin = ['release', 'debug'].map((p) => path.join(ROOT, 'target', p, 'gitcap')).find((p) => fs.existsSync(p));

const modelDir = fs.statSync(model).isDirectory() ? model : path.dirname(model);
const server = spawn(bin, ['serve', path.join(ROOT, 'www'), '--port', '0', '--model-dir', modelDir], { stdio: ['ignore', 'pipe', 'inherit'] });
const url = await new Promise((resolve, reject) => {
  readline.createInterface({ input: server.stdout }).on('line', (l) => {
    const m = /(http:\/\/127\.0\.0\.1:\d+)/.exec(l);
    if (m) resolve(m[1]);
  });
  server.on('exit', (c) => reject(new Error(`gitcap serve exited with ${c}`)));
});
const modelUrl = `/models/${path.basename(modelDir)}/${fs.statSync(model).isDirectory() ? '' : path.basename(model)}`;

function rendererRss(profile) {
  let total = 0;
  for (const pid of fs.readdirSync('/proc').filter((d) => /^\d+$/.test(d))) {
    try {
      const cmd = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8');
      if (!cmd.includes('--type=renderer') || !cmd.includes(profile)) continue;
      total += Number(/VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))[1]) * 1024;
    } catch {}
  }
  return total;
}

const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'gitcap-longrun-'));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--no-first-run'],
});
context.setDefaultTimeout(30 * 60_000);
const mb = (b) => (b / 1e6).toFixed(1);
try {
  const page = await context.newPage();
  await page.goto(`${url}/?model=${encodeURIComponent(modelUrl)}&nosave=1${extra ? `&${extra}` : ''}`);
  await page.waitForSelector('#model-status[data-state=ready]');
  console.log(`cpu: ${os.cpus()[0].model}, ${os.cpus().length} cores; ${await page.textContent('#backend')}`);
  const bytes = fs.readFileSync(image).toString('base64');
  const captionOnce = async () => {
    await page.evaluate((b64) => {
      const el = document.querySelector('#caption');
      delete el.dataset.done;
      window.gitcap.captionBytes(Uint8Array.from(atob(b64), (c) => c.charCodeAt(0)).buffer, 'image.png', 'image/png');
    }, bytes);
    await page.waitForSelector('#caption[data-done], #caption[data-error]', { state: 'attached' });
    return page.$eval('#caption', (c) => ({ ...c.dataset }));
  };
  const samples = [];
  let firstIds = null;
  const started = Date.now();
  for (let i = 1; i <= captions; i++) {
    const d = await captionOnce();
    if ('error' in d) throw new Error(`caption ${i}: ${d.error}`);
    firstIds ??= d.tokenIds;
    if (d.tokenIds !== firstIds) throw new Error(`caption ${i} differs from the first`);
    samples.push({ i, wasm: Number(d.wasmBytes), rss: rendererRss(profile) });
  }
  const at = (i) => samples[Math.min(i, samples.length) - 1];
  const a = at(20);
  const b = at(captions);
  console.log(`${captions} captions in ${((Date.now() - started) / 1000).toFixed(0)} s, all with the same ids`);
  console.log(`wasm memory: caption ${a.i} ${mb(a.wasm)} MB, caption ${b.i} ${mb(b.wasm)} MB, ratio ${(b.wasm / a.wasm).toFixed(3)}`);
  console.log(`renderer RSS: caption ${a.i} ${mb(a.rss)} MB, caption ${b.i} ${mb(b.rss)} MB, ratio ${(b.rss / a.rss).toFixed(3)}`);

  let cancelled = 0;
  for (let i = 0; i < cancels; i++) {
    await page.evaluate((b64) => {
      window.gitcap.captionBytes(Uint8Array.from(atob(b64), (c) => c.charCodeAt(0)).buffer, 'image.png', 'image/png');
      window.gitcap.cancel();
    }, bytes);
    await page.waitForSelector('#caption[data-done], #caption[data-error], #caption[data-cancelled]', { state: 'attached' });
    if (await page.$eval('#caption', (c) => c.hasAttribute('data-cancelled'))) cancelled++;
  }
  const after = await captionOnce();
  console.log(`${cancels} start/cancel cycles: ${cancelled} cancelled; the next caption ${after.tokenIds === firstIds ? 'gives the same ids' : `DIFFERS (${after.error ?? after.tokenIds})`}; wasm memory ${mb(Number(after.wasmBytes))} MB, renderer RSS ${mb(rendererRss(profile))} MB`);
} finally {
  await context.close();
  server.kill();
  fs.rmSync(profile, { recursive: true, force: true });
}
