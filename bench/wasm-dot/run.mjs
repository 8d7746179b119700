// Times src/lib.rs's loops in headless Chromium (Debian's /usr/bin/chromium, or $CHROMIUM) and
// prints nanoseconds per dot with the CPU: `bash bench/wasm-dot/run.sh`. Each loop is called
// many times with a short count, so that it runs as TurboFan code (a long first call would stay
// in Liftoff to its end).
import http from 'node:http';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = path.dirname(fileURLToPath(import.meta.url));
const wasm = fs.readFileSync(path.join(here, 'target/wasm32-unknown-unknown/release/wasm_dot.wasm'));
const page = `<script>
(async () => {
  const { instance } = await WebAssembly.instantiateStreaming(fetch('d.wasm'));
  const e = instance.exports, out = {};
  const time = (f, dots, calls, n) => {
    for (let i = 0; i < 50; i++) e[f](n, 3);
    const t = performance.now();
    for (let i = 0; i < calls; i++) e[f](n, 3);
    return (performance.now() - t) * 1e6 / (calls * n * dots);
  };
  for (let round = 0; round < 3; round++) {
    for (const [f, dots, calls, n] of [['chains9', 9, 2000, 10000], ['chain1', 9, 500, 10000], ['groups', 128 * 9, 2000, 100], ['tile', 128 * 9, 2000, 100]]) {
      (out[f] ??= []).push(+time(f, dots, calls, n).toFixed(3));
    }
  }
  document.title = JSON.stringify(out);
})();
</script>`;
const server = http.createServer((req, res) => {
  if (req.url === '/d.wasm') res.writeHead(200, { 'content-type': 'application/wasm' }).end(wasm);
  else res.writeHead(200, { 'content-type': 'text/html' }).end(page);
});
await new Promise((r) => server.listen(0, '127.0.0.1', r));
const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'wasm-dot-'));
const ctx = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run'],
});
try {
  const p = ctx.pages()[0] ?? (await ctx.newPage());
  await p.goto(`http://127.0.0.1:${server.address().port}/`);
  await p.waitForFunction(() => document.title.startsWith('{'), null, { timeout: 120000 });
  const ns = JSON.parse(await p.title());
  console.log(JSON.stringify({ cpu: os.cpus()[0]?.model, chromium: ctx.browser()?.version() ?? null, nsPerDot: ns }));
} finally {
  await ctx.close();
  server.close();
}
