// The benchmarks time the page from www/ as build.sh leaves it: release builds after wasm-opt
// (about 3 MB each). `./test.sh --browser` writes dev-profile builds to the same folders (10–16
// MB, several times slower: an encode took 5.3 s against 1.6 s), so a benchmark run after the
// tests would time the wrong page without a word. This check refuses to.
import fs from 'node:fs';
import path from 'node:path';

/** Above this size a gitcap_bg.wasm is a dev-profile build (release builds are 2.8–2.9 MB). */
const MAX_RELEASE_BYTES = 6e6;

/** Throws, saying how to fix it, where a build in `www` is a dev-profile one. */
export function refuseDevBuilds(www) {
  for (const dir of ['pkg', 'pkg-relaxed', 'pkg-threads', 'pkg-threads-relaxed']) {
    const file = path.join(www, dir, 'gitcap_bg.wasm');
    if (!fs.existsSync(file)) continue;
    const size = fs.statSync(file).size;
    if (size > MAX_RELEASE_BYTES) {
      throw new Error(
        `${file} is ${(size / 1e6).toFixed(1)} MB: a dev-profile build (./test.sh --browser writes them), ` +
          'not what users get; build the release pages first: bash build.sh --wasm-only'
      );
    }
  }
}
