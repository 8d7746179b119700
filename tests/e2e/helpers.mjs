// Shared by the end-to-end tests: build checks, `gitcap serve --port 0`, headless Chromium.
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
export const TINY = path.join(ROOT, 'tests/fixtures/models/tiny-coco');
export const IMAGES = path.join(ROOT, 'tests/images');
export const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
/** The folder served as the page ($GITCAP_WWW, default www/). */
export const WWW = path.resolve(ROOT, process.env.GITCAP_WWW || 'www');
export const CHROMIUM_ARGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--no-first-run',
];

/** The gitcap binary: $GITCAP_BIN, else the newest of target/{debug,release}/gitcap (built if neither exists). */
export function gitcapBin() {
  if (process.env.GITCAP_BIN) return process.env.GITCAP_BIN;
  const candidates = ['debug', 'release']
    .map((p) => path.join(ROOT, 'target', p, 'gitcap'))
    .filter((p) => fs.existsSync(p))
    .sort((a, b) => fs.statSync(b).mtimeMs - fs.statSync(a).mtimeMs);
  if (candidates.length) return candidates[0];
  console.error('# building target/debug/gitcap (cargo build --features native)');
  const r = spawnSync('cargo', ['build', '--features', 'native'], { cwd: ROOT, stdio: 'inherit' });
  if (r.status !== 0) throw new Error('cargo build --features native failed');
  return path.join(ROOT, 'target', 'debug', 'gitcap');
}

/** The page needs www/pkg (bash build.sh); build it when missing. */
export function ensureWasm() {
  if (fs.existsSync(path.join(WWW, 'pkg/gitcap.js')) && fs.existsSync(path.join(WWW, 'pkg/gitcap_bg.wasm'))) return;
  console.error('# www/pkg is missing: running bash build.sh');
  const r = spawnSync('bash', ['build.sh'], { cwd: ROOT, stdio: 'inherit' });
  if (r.status !== 0) throw new Error('bash build.sh failed; the page cannot run without www/pkg');
}

/** Starts `gitcap serve www --port 0 ...` and resolves with its base URL once it listens. */
export function startServer({ modelDirs = [TINY], isolation = true, dir = WWW, extra = [] } = {}) {
  const args = ['serve', dir, '--port', '0', ...modelDirs.flatMap((d) => ['--model-dir', d]), ...extra];
  if (!isolation) args.push('--no-isolation');
  const proc = spawn(gitcapBin(), args, { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  proc.stderr.on('data', (d) => (err += d));
  // Everything the server prints is kept (output()), also what comes after the URL.
  proc.stdout.on('data', (d) => (out += d));
  return new Promise((resolve, reject) => {
    const onData = () => {
      const m = /http:\/\/127\.0\.0\.1:(\d+)\//.exec(out);
      if (m) {
        proc.stdout.off('data', onData);
        resolve({
          url: m[0],
          port: Number(m[1]),
          proc,
          output: () => out,
          stop: () =>
            new Promise((res) => {
              if (proc.exitCode !== null || proc.signalCode) return res();
              proc.once('exit', () => res());
              proc.kill('SIGTERM');
            }),
        });
      }
    };
    proc.stdout.on('data', onData);
    proc.once('exit', (code) => reject(new Error(`gitcap serve exited (${code}) before listening: ${out}${err}`)));
    proc.once('error', reject);
  });
}

/** A fresh headless Chromium profile. */
export async function launch({ serviceWorkers = 'block' } = {}) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'gitcap-e2e-'));
  const context = await chromium.launchPersistentContext(dir, {
    executablePath: CHROMIUM,
    headless: true,
    args: CHROMIUM_ARGS,
    serviceWorkers,
    viewport: { width: 1100, height: 900 },
  });
  // Waits are guards against hangs, not speed limits: test.sh runs two test files at once on CI's
  // two cores against the dev-profile page, where loading and captioning take several times longer
  // than with the release page.
  context.setDefaultTimeout(180_000);
  return {
    context,
    dir,
    async close() {
      await context.close().catch(() => {});
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** Every request the context makes (pages and their workers), in order. */
export function recordRequests(context) {
  const list = [];
  context.on('request', (r) => list.push({ url: r.url(), method: r.method(), range: r.headers()['range'] ?? null, type: r.resourceType() }));
  return list;
}

/** The native CLI's caption for an image, with the tiny model unless `model` names another; `int8`
 *  sets GITCAP_INT8, the form of the integer q8_0 kernel the CLI runs. */
export function nativeCaption(image, extraArgs = [], { model = TINY, int8 } = {}) {
  const env = int8 ? { ...process.env, GITCAP_INT8: int8 } : process.env;
  const r = spawnSync(gitcapBin(), ['caption', '--json', '--model', model, ...extraArgs, image], { cwd: ROOT, encoding: 'utf8', env });
  if (r.status !== 0) throw new Error(`gitcap caption failed: ${r.stderr}`);
  return JSON.parse(r.stdout.trim().split('\n').pop());
}

/** The CLI's GITCAP_INT8 form that gives the bits of the page's integer kernel, from the page's
 *  backend line: every wasm form equals the portable one, except relaxed SIMD where the engine's
 *  dot is exact for 7-bit operands only (x at ±63 in the image encoder). */
export function int8FormOfPage(backendText) {
  return /x at ±63/.test(backendText) ? 'relaxed' : 'portable';
}

/** The page's query for tests that compare with the CLI's captions of the f32 fixture: the weights
 *  kept as they are. Without it the page stores a safetensors source as q8_0 (the default). */
export const AS_IS = Object.freeze({ store: 'as-is' });

export function pageUrl(server, query = {}) {
  const q = new URLSearchParams({ model: '/models/tiny-coco/', ...query });
  return `${server.url}?${q}`;
}

/** Waits until #caption is finished one way or another and returns its state. */
export async function captionResult(page, { timeout = 180_000 } = {}) {
  await page.waitForSelector('#caption[data-done], #caption[data-error], #caption[data-cancelled]', { state: 'attached', timeout });
  return page.$eval('#caption', (c) => ({
    text: c.textContent,
    done: c.hasAttribute('data-done'),
    error: c.dataset.error ?? null,
    cancelled: c.hasAttribute('data-cancelled'),
    data: { ...c.dataset },
  }));
}

export async function chooseFile(page, file) {
  await page.setInputFiles('input[type=file]', file);
}

export const sha256 = async (buf) => {
  const { createHash } = await import('node:crypto');
  return createHash('sha256').update(buf).digest('hex');
};
