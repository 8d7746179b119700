#!/usr/bin/env node
// The peer benchmark's timing driver (bench/peer/run.sh prepares its inputs, then calls this).
// For each thread count it starts every engine once (each a worker process that loads its model
// and stays loaded: py_worker.py, ortweb_worker.mjs, gitcap_worker.mjs), runs one warm-up
// encoding on each, then R rounds in which the engines take turns (A, B, C, A, B, C, ...), so
// that a slow spell of a shared machine falls on all of them. Reports medians and every round,
// writes JSON under bench/peer/results/ and prints a markdown table.
//
//   node bench/peer/run.mjs [--threads 1,2] [--rounds 3] [--engines id,id,...] [--out FILE]
//        [--checkpoint bench-out/git-large-random] [--gguf bench-out/git-large-random-q8_0.gguf]
//        [--peer-dir bench-out/peer] [--image tests/images/chelsea.png] [--python .venv-ref/bin/python]
import { execSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const args = process.argv.slice(2);
const opt = (name, dflt) => {
  const i = args.indexOf(name);
  return i < 0 ? dflt : args.splice(i, 2)[1];
};
const threadCounts = opt('--threads', '1,2').split(',').map(Number);
const rounds = Number(opt('--rounds', '3'));
const only = opt('--engines', '');
const checkpoint = path.resolve(ROOT, opt('--checkpoint', 'bench-out/git-large-random'));
const gguf = path.resolve(ROOT, opt('--gguf', 'bench-out/git-large-random-q8_0.gguf'));
const peerDir = path.resolve(ROOT, opt('--peer-dir', 'bench-out/peer'));
const image = path.resolve(ROOT, opt('--image', 'tests/images/chelsea.png'));
const python = path.resolve(ROOT, opt('--python', '.venv-ref/bin/python'));
let outFile = opt('--out', null);
const log = (...a) => console.error('#', ...a);

const onnx = (t) => path.join(peerDir, `encoder-${t}.onnx`);
const pixels = path.join(peerDir, 'pixels.f32');
const ENGINES = [
  { id: 'ort-fp32', name: 'ONNX Runtime (native)', weights: 'fp32', cmd: (n) => [python, 'bench/peer/py_worker.py', 'ort', onnx('fp32'), pixels, n] },
  { id: 'ort-int8', name: 'ONNX Runtime (native)', weights: 'int8 (q8)', cmd: (n) => [python, 'bench/peer/py_worker.py', 'ort', onnx('int8'), pixels, n] },
  { id: 'ortweb-fp32', name: 'ONNX Runtime Web (wasm, Chromium)', weights: 'fp32', cmd: (n) => ['node', 'bench/peer/ortweb_worker.mjs', onnx('fp32'), pixels, n, path.join(peerDir, 'features-fp32.f32')] },
  { id: 'ortweb-int8', name: 'ONNX Runtime Web (wasm, Chromium)', weights: 'int8 (q8)', cmd: (n) => ['node', 'bench/peer/ortweb_worker.mjs', onnx('int8'), pixels, n, path.join(peerDir, 'features-int8.f32')] },
  { id: 'transformers', name: 'transformers (PyTorch)', weights: 'fp32', cmd: (n) => [python, 'bench/peer/py_worker.py', 'transformers', checkpoint, pixels, n] },
  { id: 'gitcap-cli-f32', name: 'gitcap native CLI', weights: 'f32', cmd: (n) => ['node', 'bench/peer/gitcap_worker.mjs', 'cli', checkpoint, image, n] },
  { id: 'gitcap-cli-q8_0', name: 'gitcap native CLI', weights: 'q8_0', cmd: (n) => ['node', 'bench/peer/gitcap_worker.mjs', 'cli', gguf, image, n] },
  { id: 'gitcap-page-f32', name: 'gitcap page (wasm, Chromium)', weights: 'f32', wider: true, cmd: (n) => ['node', 'bench/peer/gitcap_worker.mjs', 'page', checkpoint, image, n] },
  { id: 'gitcap-page-q8_0', name: 'gitcap page (wasm, Chromium)', weights: 'q8_0', wider: true, cmd: (n) => ['node', 'bench/peer/gitcap_worker.mjs', 'page', gguf, image, n] },
  // The same page kept off its relaxed SIMD builds (?relaxed=0): the SIMD128 integer kernel that
  // engines without relaxed SIMD run.
  { id: 'gitcap-page-q8_0-simd128', name: 'gitcap page, SIMD128 only (wasm, Chromium)', weights: 'q8_0', wider: true, cmd: (n) => ['node', 'bench/peer/gitcap_worker.mjs', 'page', gguf, image, n, '--query', 'relaxed=0'] },
  // The same pages with the integer kernel off (?int8_min: no product has that many rows): q8_0
  // blocks expanded into the f32 kernel's panels, as before the integer kernel. For telling the
  // integer kernel's threading apart from the rest of the page's.
  { id: 'gitcap-page-q8_0-f32kernel', name: 'gitcap page, q8_0 through the f32 kernel (wasm, Chromium)', weights: 'q8_0', wider: true, cmd: (n) => ['node', 'bench/peer/gitcap_worker.mjs', 'page', gguf, image, n, '--query', 'int8_min=1000000'] },
  { id: 'gitcap-page-q8_0-simd128-f32kernel', name: 'gitcap page, SIMD128 only, q8_0 through the f32 kernel (wasm, Chromium)', weights: 'q8_0', wider: true, cmd: (n) => ['node', 'bench/peer/gitcap_worker.mjs', 'page', gguf, image, n, '--query', 'relaxed=0&int8_min=1000000'] },
  // PEER_ALT_WWW=DIR[,DIR...]: the page once more from each other folder laid out like www/ (other
  // builds of the wasm; ids gitcap-page-q8_0-alt, -alt2, ...), timed in the same rounds as the
  // page from www/: an A/B of two builds, or more.
  ...(process.env.PEER_ALT_WWW ?? '').split(',').filter(Boolean).map((dir, i) => (
    { id: `gitcap-page-q8_0-alt${i ? i + 1 : ''}`, name: `gitcap page from ${dir} (wasm, Chromium)`, weights: 'q8_0', wider: true, cmd: (n) => ['node', 'bench/peer/gitcap_worker.mjs', 'page', gguf, image, n, '--www', dir] })),
].filter((e) => !only || only.split(',').includes(e.id));
if (!ENGINES.length) throw new Error(`no engine matches --engines ${only}`);

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

function cpu() {
  const lscpu = execSync('lscpu', { encoding: 'utf8' });
  const field = (k) => new RegExp(`^${k}:\\s*(.*)$`, 'm').exec(lscpu)?.[1].trim() ?? null;
  const flags = (field('Flags') ?? '').split(/\s+/);
  const has = (f) => flags.includes(f);
  return {
    model: field('Model name'),
    cpus: os.cpus().length,
    avx512f: has('avx512f'),
    avx512_vnni: has('avx512_vnni'),
    amx_tile: has('amx_tile'),
    amx_int8: has('amx_int8'),
    amx_bf16: has('amx_bf16'),
    hypervisor: field('Hypervisor vendor'),
  };
}

/** A worker process speaking the line protocol: ready line, then one reply per "run". */
async function startWorker(engine, threads) {
  const [cmd, ...rest] = engine.cmd(String(threads));
  const proc = spawn(cmd, rest, { cwd: ROOT, stdio: ['pipe', 'pipe', 'inherit'] });
  const lines = readline.createInterface({ input: proc.stdout })[Symbol.asyncIterator]();
  // A worker that never answers (a hung page, say) costs this engine, not the whole run.
  const limitMs = Number(process.env.PEER_WORKER_TIMEOUT_S || 1200) * 1000;
  const next = async () => {
    for (;;) {
      let timer;
      const timeout = new Promise((_, reject) => {
        timer = setTimeout(() => {
          proc.kill('SIGTERM');
          reject(new Error(`${engine.id}: no answer in ${limitMs / 1000} s`));
        }, limitMs);
      });
      const { value, done } = await Promise.race([lines.next(), timeout]).finally(() => clearTimeout(timer));
      if (done) throw new Error(`${engine.id} worker exited`);
      if (!value.startsWith('{')) continue; // a library's chatter on stdout
      const msg = JSON.parse(value);
      if (msg.error) throw new Error(`${engine.id}: ${msg.error}`);
      return msg;
    }
  };
  const ready = await next();
  return {
    info: ready.info,
    async run() {
      proc.stdin.write('run\n');
      return next();
    },
    stop() {
      proc.stdin.end('quit\n');
      return new Promise((r) => (proc.exitCode !== null ? r() : proc.once('exit', r)));
    },
  };
}

async function main() {
  const started = new Date();
  const result = {
    date: started.toISOString(),
    cpu: cpu(),
    memGiB: +(os.totalmem() / 2 ** 30).toFixed(1),
    node: process.version,
    onnxruntimeWeb: JSON.parse(fs.readFileSync(path.join(ROOT, 'node_modules/onnxruntime-web/package.json'), 'utf8')).version,
    image: path.relative(ROOT, image),
    rounds,
    prepare: fs.existsSync(path.join(peerDir, 'prepare.json')) ? JSON.parse(fs.readFileSync(path.join(peerDir, 'prepare.json'), 'utf8')) : null,
    byThreads: [],
  };
  log(`CPU: ${result.cpu.model}; avx512f ${result.cpu.avx512f}, avx512_vnni ${result.cpu.avx512_vnni}, amx ${result.cpu.amx_int8}; ${result.cpu.cpus} CPUs`);
  for (const threads of threadCounts) {
    const workers = new Map();
    const entry = { threads, loadavgStart: os.loadavg(), engines: {}, roundLoadavg: [] };
    try {
      for (const e of ENGINES) {
        log(`${threads} thread(s): loading ${e.id}`);
        try {
          const w = await startWorker(e, threads);
          workers.set(e.id, w);
          entry.engines[e.id] = { name: e.name, weights: e.weights, info: w.info, rounds: [] };
        } catch (err) {
          // One engine that cannot run here (say, a model too large for it) should not cost the others.
          log(`${e.id} failed to start: ${err.message}`);
          entry.engines[e.id] = { name: e.name, weights: e.weights, error: err.message, rounds: [] };
        }
      }
      const live = ENGINES.filter((e) => workers.has(e.id));
      for (const e of live) {
        const r = await workers.get(e.id).run();
        entry.engines[e.id].warmupMs = r.ms;
        log(`${threads} thread(s) warm-up ${e.id}: ${r.ms.toFixed(0)} ms`);
      }
      for (let round = 0; round < rounds; round++) {
        for (const e of live) {
          const r = await workers.get(e.id).run();
          entry.engines[e.id].rounds.push(r.ms);
          log(`${threads} thread(s) round ${round + 1}/${rounds} ${e.id}: ${r.ms.toFixed(0)} ms`);
        }
        entry.roundLoadavg.push(os.loadavg()[0]);
      }
    } finally {
      for (const w of workers.values()) await w.stop();
    }
    for (const e of Object.values(entry.engines)) e.medianMs = e.rounds.length ? median(e.rounds) : null;
    entry.loadavgEnd = os.loadavg();
    result.byThreads.push(entry);
  }
  result.seconds = (Date.now() - started) / 1000;

  if (!outFile) {
    const slug = result.cpu.model.toLowerCase().replace(/\(r\)|\(tm\)/g, '').replace(/[^a-z0-9]+/g, '-').replace(/^-|-$/g, '');
    outFile = path.join(ROOT, 'bench/peer/results', `encoder-${started.toISOString().slice(0, 16).replace(':', '')}-${slug}.json`);
  }
  fs.mkdirSync(path.dirname(outFile), { recursive: true });
  fs.writeFileSync(outFile, JSON.stringify(result, null, 2) + '\n');
  log(`wrote ${path.relative(ROOT, outFile)}`);
  console.log(table(result));
}

function table(result) {
  const c = result.cpu;
  const s = (ms) => (ms == null ? '—' : (ms / 1000).toFixed(2));
  const lines = [
    `CPU: ${c.model} (${c.cpus} CPUs; avx512f ${c.avx512f ? 'yes' : 'no'}, avx512_vnni ${c.avx512_vnni ? 'yes' : 'no'}, amx_int8 ${c.amx_int8 ? 'yes' : 'no'}), ${result.date}, ` +
      `load average at start ${result.byThreads.map((t) => t.loadavgStart[0].toFixed(1)).join(' / ')}; ` +
      `GIT image encoder (ViT-L/14 + projection, 224 px), seconds, median of ${result.rounds} rounds after a warm-up`,
    '',
    `| engine | weights | ${result.byThreads.map((t) => `${t.threads} thr median | ${t.threads} thr rounds`).join(' | ')}${result.byThreads.length > 1 ? ` | ${result.byThreads[0].threads}→${result.byThreads.at(-1).threads} speed-up` : ''} |`,
    `| --- | --- | ${result.byThreads.map(() => '---: | ---').join(' | ')}${result.byThreads.length > 1 ? ' | ---:' : ''} |`,
  ];
  for (const id of Object.keys(result.byThreads[0].engines)) {
    const per = result.byThreads.map((t) => t.engines[id]);
    const e = per[0];
    const cells = per.map((p) => (p.error ? `failed | ${p.error.slice(0, 80)}` : `${s(p.medianMs)} | ${p.rounds.map(s).join(', ')}`)).join(' | ');
    const up = per.length > 1 ? ` | ${per[0].medianMs && per.at(-1).medianMs ? (per[0].medianMs / per.at(-1).medianMs).toFixed(2) + '×' : '—'}` : '';
    lines.push(`| ${e.name}${id.startsWith('gitcap-page') ? ' *' : ''} | ${e.weights} | ${cells}${up} |`);
  }
  lines.push('', '\\* the gitcap page reports a wider stage: image decoding, preprocessing and the image half of the decoder (the image rows\' keys and values) on top of the encoder.');
  const web = result.byThreads.flatMap((t) => Object.entries(t.engines).filter(([id, e]) => id.startsWith('ortweb') && e.info).map(([id, e]) => `${id} ${t.threads} thr: crossOriginIsolated ${e.info.crossOriginIsolated}, numThreads ${e.info.numThreads}, wasm ${e.info.wasmLoaded.join(' ')}, output vs native ${e.info.relErrVsNative?.toExponential(2)}`));
  if (web.length) lines.push('', ...web.map((w) => `- ${w}`));
  return lines.join('\n');
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
