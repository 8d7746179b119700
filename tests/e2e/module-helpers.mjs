// Shared by the module's end-to-end tests: a site folder holding the module (dist/gitcap/, as
// build.sh assembles it), the test page (tests/e2e/module-page/) and the test images, served by
// `gitcap serve`.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { ROOT, IMAGES, ensureWasm } from './helpers.mjs';

/** The module as build.sh assembles dist/gitcap/ from www/ now (--module-only: copies, no
 *  compiling), in a folder of this test process's own: test files run in parallel. Returns it. */
let built = null;
export function ensureModule() {
  if (built) return built;
  ensureWasm();
  const out = fs.mkdtempSync(path.join(os.tmpdir(), 'gitcap-dist-'));
  process.on('exit', () => fs.rmSync(out, { recursive: true, force: true }));
  const dist = path.join(out, 'gitcap');
  const r = spawnSync('bash', ['build.sh', '--module-only'], {
    cwd: ROOT,
    encoding: 'utf8',
    env: { ...process.env, GITCAP_MODULE_OUT: dist },
  });
  if (r.status !== 0) throw new Error(`bash build.sh --module-only failed: ${r.stdout}${r.stderr}`);
  built = dist;
  return dist;
}

/** A temporary site: the test page, gitcap/ (the module as built) and images/. */
export function makeSite() {
  const dist = ensureModule();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'gitcap-site-'));
  fs.cpSync(path.join(ROOT, 'tests/e2e/module-page'), dir, { recursive: true });
  fs.cpSync(dist, path.join(dir, 'gitcap'), { recursive: true });
  fs.cpSync(IMAGES, path.join(dir, 'images'), { recursive: true });
  return { dir, remove: () => fs.rmSync(dir, { recursive: true, force: true }) };
}
