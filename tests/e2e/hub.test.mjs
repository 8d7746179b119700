// The default model source, the Hugging Face hub, with the hub played by Playwright (there is
// no network here): after a click on the model (nothing downloads before), the page asks the hub's tree API for the file list and the LFS SHA-256s,
// fetches `resolve/refs%2Fpr%2F1/...` with Range requests, and checks what arrives.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { startServer, launch, recordRequests, nativeCaption, captionResult, chooseFile, ensureWasm, sha256, IMAGES, TINY } from './helpers.mjs';

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

test('by default the page loads microsoft/git-large-r-coco at refs/pr/1 from the hub', async () => {
  const b = await launch();
  try {
    const requests = recordRequests(b.context);
    await fakeHub(b.context, 'microsoft/git-large-r-coco', { main: ['config.json', 'tokenizer.json'], 'refs/pr/1': FILES });
    const page = await b.context.newPage();
    await page.goto(`${server.url}?chunk_kib=1024`);
    // Nothing is downloaded before a click: the page offers the models with their sizes.
    await page.waitForSelector('#model-status[data-state=choose]');
    assert.match(await page.textContent('#model-choices'), /GIT large \(COCO\).*1\.6 GB download/);
    assert.deepEqual(requests.filter((q) => q.url.startsWith(HUB)), [], 'no request to the hub before the click');
    await page.click('#model-choices button[data-model="hf:microsoft/git-large-r-coco@refs/pr/1"]');
    await chooseFile(page, CHELSEA);
    const r = await captionResult(page);
    assert.ok(r.done, JSON.stringify(r));
    assert.equal(r.text, nativeCaption(CHELSEA).text);
    const urls = requests.map((q) => q.url);
    assert.ok(urls.includes(`${HUB}/api/models/microsoft/git-large-r-coco/tree/refs%2Fpr%2F1`), urls.join('\n'));
    const weights = requests.filter((q) => q.url === `${HUB}/microsoft/git-large-r-coco/resolve/refs%2Fpr%2F1/model.safetensors`);
    assert.equal(weights.length, Math.ceil(fs.statSync(path.join(TINY, 'model.safetensors')).size / (1024 * 1024)));
    assert.ok(weights.every((q) => q.range));
    assert.match(await page.textContent('#model-status'), /GIT large \(COCO\)/);
  } finally {
    await b.close();
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
