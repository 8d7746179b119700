// Shared by the module's end-to-end tests: a site folder holding the module (dist/gitcap/, as
// build.sh assembles it), the test page (tests/e2e/module-page/) and the test images, served by
// `gitcap serve`.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { ROOT, IMAGES, ensureWasm } from './helpers.mjs';

export const DIST = path.join(ROOT, 'dist/gitcap');

/** dist/gitcap from www/ as it is now (build.sh --module-only: copies, no compiling). */
export function ensureModule() {
  ensureWasm();
  const r = spawnSync('bash', ['build.sh', '--module-only'], { cwd: ROOT, encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`bash build.sh --module-only failed: ${r.stdout}${r.stderr}`);
}

/** A temporary site: the test page, gitcap/ (the module as built) and images/. */
export function makeSite() {
  ensureModule();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'gitcap-site-'));
  fs.cpSync(path.join(ROOT, 'tests/e2e/module-page'), dir, { recursive: true });
  fs.cpSync(DIST, path.join(dir, 'gitcap'), { recursive: true });
  fs.cpSync(IMAGES, path.join(dir, 'images'), { recursive: true });
  return { dir, remove: () => fs.rmSync(dir, { recursive: true, force: true }) };
}
