// The module's TypeScript declarations: the example that uses every call type-checks, and a
// misuse of the API does not (so the check reads the declarations, not `any`).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ROOT } from './helpers.mjs';

const TSC = path.join(ROOT, 'node_modules/typescript/bin/tsc');

function tsc(project) {
  return spawnSync(process.execPath, [TSC, '--noEmit', '-p', project], { cwd: ROOT, encoding: 'utf8' });
}

test('examples/typescript/example.ts type-checks against the declarations', () => {
  const r = tsc('examples/typescript');
  assert.equal(r.status, 0, r.stdout + r.stderr);
});

test('a misuse of the API is a type error', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'gitcap-types-'));
  try {
    const config = JSON.parse(fs.readFileSync(path.join(ROOT, 'examples/typescript/tsconfig.json'), 'utf8'));
    config.compilerOptions.paths = { gitcap: [path.join(ROOT, 'module')] };
    config.files = ['bad.ts'];
    fs.writeFileSync(path.join(dir, 'tsconfig.json'), JSON.stringify(config));
    fs.writeFileSync(
      path.join(dir, 'bad.ts'),
      "import { Captioner } from 'gitcap';\n" +
        "export const c = Captioner.load({ store: 'q9' });\n" +
        'export const n: number = (await c).info.model;\n'
    );
    const r = tsc(dir);
    assert.notEqual(r.status, 0);
    assert.match(r.stdout, /bad\.ts\(2,.*TS2322.*"q9"/);
    assert.match(r.stdout, /bad\.ts\(3,.*TS2322/);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
