// The default model source, the Hugging Face hub, with the hub played by Playwright (there is
// no network here): after a click on the model (nothing downloads before), the page asks the hub's tree API for the file list and the LFS SHA-256s,
// fetches `resolve/refs%2Fpr%2F1/...` with Range requests, checks what arrives, and keeps it as
// the default store does: converted to q8_0.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {
  startServer, launch, recordRequests, nativeCaption, captionResult, chooseFile, ensureWasm, gitcapBin, int8FormOfPage, sha256, IMAGES, TINY,
} from './helpers.mjs';

const CHELSEA = path.join(IMAGES, 'chelsea.png');
const HUB = 'https://huggingface.co';
const FILES = ['config.json', 'generation_config.json', 'preprocessor_config.json', 'tokenizer.json', 'tokenizer_config.json', 'model.safetensors'];
const CORS = {
  'access-control-allow-origin': '*',
  'access-control-expose-headers': 'ETag, Content-Range, Content-Length, Accept-Ranges, X-Linked-Size, X-Linked-ETag',
  'cross-origin-resource-policy': 'cross-origin',
};

let server;
before(async () => {
  ensureWasm();
  server = await startServer({ modelDirs: [] });
});
after(async () => server?.stop());

/** Serves tiny-coco as the hub would serve `repo` at the revisions in `trees`. */
async function fakeHub(context, repo, trees, pullRequests = []) {
  const tree = await Promise.all(
    FILES.map(async (f) => {
      const bytes = fs.readFileSync(path.join(TINY, f));
      const lfs = f.endsWith('.safetensors') ? { oid: await sha256(bytes), size: bytes.length, pointerSize: 135 } : undefined;
      return { type: 'file', path: f, size: bytes.length, oid: 'f'.repeat(40), ...(lfs ? { lfs } : {}) };
    })
  );
  await context.route(`${HUB}/**`, async (route) => {
    const req = route.request();
    const url = new URL(req.url());
    const json = (body, status = 200) => route.fulfill({ status, headers: { ...CORS, 'content-type': 'application/json' }, body: JSON.stringify(body) });
    let m;
    if ((m = new RegExp(`^/api/models/${repo}/tree/(.+)$`).exec(url.pathname))) {
      const rev = decodeURIComponent(m[1]);
      if (!(rev in trees)) return json({ error: 'Invalid rev id' }, 404);
      return json(tree.filter((t) => trees[rev].includes(t.path)));
    }
    if (url.pathname === `/api/models/${repo}/refs`) {
      return json({ branches: [{ name: 'main', ref: 'refs/heads/main' }], tags: [], converts: [], pullRequests });
    }
    if ((m = new RegExp(`^/${repo}/resolve/([^/]+)/(.+)$`).exec(url.pathname))) {
      const rev = decodeURIComponent(m[1]);
      const file = m[2];
      if (!trees[rev]?.includes(file)) return route.fulfill({ status: 404, headers: CORS, body: 'Entry not found' });
      const bytes = fs.readFileSync(path.join(TINY, file));
      const range = /bytes=(\d+)-(\d+)/.exec(req.headers()['range'] || '');
      if (range) {
        const [a, b] = [Number(range[1]), Math.min(Number(range[2]), bytes.length - 1)];
        return route.fulfill({
          status: 206,
          headers: { ...CORS, 'content-type': 'application/octet-stream', 'content-range': `bytes ${a}-${b}/${bytes.length}` },
          body: bytes.subarray(a, b + 1),
        });
      }
      return route.fulfill({ status: 200, headers: { ...CORS, 'content-type': 'application/octet-stream' }, body: bytes });
    }
    return route.fulfill({ status: 404, headers: CORS, body: 'not found' });
  });
}

test('by default the page loads microsoft/git-large-r-coco at refs/pr/1 from the hub, kept as q8_0', async () => {
  // What the page should keep: `gitcap quantize --model microsoft/git-large-r-coco` of the same
  // files (the page records the hub id as general.name, as the CLI its --model argument).
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'gitcap-hub-q8-'));
  const repo = path.join(tmp, 'microsoft/git-large-r-coco');
  fs.mkdirSync(repo, { recursive: true });
  for (const f of FILES) fs.copyFileSync(path.join(TINY, f), path.join(repo, f));
  const q8 = path.join(tmp, 'q8.gguf');
  const q = spawnSync(path.resolve(gitcapBin()), ['quantize', '--model', 'microsoft/git-large-r-coco', '--out', q8, '--quiet'], { cwd: tmp, encoding: 'utf8' });
  assert.equal(q.status, 0, q.stderr);
  const b = await launch();
  try {
    const requests = recordRequests(b.context);
    await fakeHub(b.context, 'microsoft/git-large-r-coco', { main: ['config.json', 'tokenizer.json'], 'refs/pr/1': FILES });
    const page = await b.context.newPage();
    await page.goto(`${server.url}?chunk_kib=1024`);
    // Nothing is downloaded before a click: the page offers the models with their sizes.
    await page.waitForSelector('#model-status[data-state=choose]');
    assert.match(await page.textContent('#model-choices'), /GIT large \(COCO\).*1\.6 GB download · 426 MB stored \(q8_0\)/);
    assert.deepEqual(requests.filter((q) => q.url.startsWith(HUB)), [], 'no request to the hub before the click');
    await page.click('#model-choices button[data-model="hf:microsoft/git-large-r-coco@refs/pr/1"]');
    await chooseFile(page, CHELSEA);
    const r = await captionResult(page);
    assert.ok(r.done, JSON.stringify(r));
    const native = nativeCaption(CHELSEA, [], { model: q8, int8: int8FormOfPage(await page.textContent('#backend')) });
    assert.equal(r.data.tokenIds, native.token_ids.join(','));
    assert.equal(r.text, native.text);
    const urls = requests.map((q) => q.url);
    assert.ok(urls.includes(`${HUB}/api/models/microsoft/git-large-r-coco/tree/refs%2Fpr%2F1`), urls.join('\n'));
    const weights = requests.filter((q) => q.url === `${HUB}/microsoft/git-large-r-coco/resolve/refs%2Fpr%2F1/model.safetensors`);
    // The header (the converted size, for the quota check), then the file in 1 MiB chunks.
    const source = fs.readFileSync(path.join(TINY, 'model.safetensors'));
    const chunks = Math.ceil(source.length / (1024 * 1024));
    assert.deepEqual(weights.map((q) => q.range), [
      'bytes=0-7',
      `bytes=8-${7 + Number(source.readBigUInt64LE(0))}`,
      ...Array.from({ length: chunks }, (_, i) => `bytes=${i << 20}-${Math.min(source.length, (i + 1) << 20) - 1}`),
    ]);
    assert.match(await page.textContent('#model-status'), /GIT large \(COCO\)/);
    // Kept: gitcap quantize's file (the source's SHA-256 was checked on the way), not the f32.
    const stored = await page.evaluate(async () => {
      const root = await (await navigator.storage.getDirectory()).getDirectoryHandle('gitcap-models');
      const parts = [];
      const names = [];
      for await (const [, dir] of root.entries()) {
        for await (const [name, h] of dir.entries()) {
          names.push(name);
          if (/^model\.q8_0\.gguf\.\d+$/.test(name)) parts.push([name, new Uint8Array(await (await h.getFile()).arrayBuffer())]);
        }
      }
      parts.sort((x, y) => (x[0] < y[0] ? -1 : 1));
      const all = new Uint8Array(parts.reduce((n, [, p]) => n + p.length, 0));
      let at = 0;
      for (const [, p] of parts) {
        all.set(p, at);
        at += p.length;
      }
      const digest = new Uint8Array(await crypto.subtle.digest('SHA-256', all));
      return { names, sha256: [...digest].map((x) => x.toString(16).padStart(2, '0')).join('') };
    });
    assert.equal(stored.sha256, await sha256(fs.readFileSync(q8)));
    assert.deepEqual(stored.names.filter((n) => n.startsWith('model.safetensors')), []);
  } finally {
    await b.close();
    fs.rmSync(tmp, { recursive: true, force: true });
  }
});

test('a hub revision without model.safetensors is explained, with the revision that has it', async () => {
  const b = await launch();
  try {
    await fakeHub(
      b.context,
      'microsoft/git-base-coco',
      { main: ['config.json', 'tokenizer.json', 'pytorch_model.bin'], 'refs/pr/7': FILES },
      [{ name: '7', ref: 'refs/pr/7', targetCommit: 'a'.repeat(40) }]
    );
    const page = await b.context.newPage();
    await page.goto(`${server.url}?model=hf:microsoft/git-base-coco@main`);
    // A ?model= link (not from this site) asks before downloading.
    await page.waitForSelector('#model-status[data-state=choose]');
    assert.ok(await page.isVisible('#model-ask'));
    await page.click('#model-choices button[data-model="hf:microsoft/git-base-coco@main"]');
    await page.waitForSelector('#model-status[data-state=error]');
    const msg = await page.getAttribute('#model-status', 'data-error');
    assert.match(msg, /no model\.safetensors/);
    assert.match(msg, /\?model=hf:microsoft\/git-base-coco@refs\/pr\/7/);
  } finally {
    await b.close();
  }
});
