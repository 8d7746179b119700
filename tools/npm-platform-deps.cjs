// Used by test.sh after `npm ci --omit=optional` (which keeps bench/peer's 139 MB onnxruntime-web out).
// The platform binaries of vite's native dependencies (esbuild, rollup), which npm skips under
// --omit=optional: name@version for this machine, from their own optionalDependencies.
const fs = require('fs');
const out = [];
const libc = process.report?.getReport?.().header?.glibcVersionRuntime ? 'gnu' : 'musl';
for (const pkg of ['esbuild', 'rollup']) {
  let meta;
  try {
    meta = JSON.parse(fs.readFileSync(`node_modules/${pkg}/package.json`, 'utf8'));
  } catch {
    continue;
  }
  const want = `${process.platform}-${process.arch}`;
  for (const [name, version] of Object.entries(meta.optionalDependencies || {})) {
    const tail = name.split('/').pop();
    if (tail.endsWith(want) || tail.endsWith(`${want}-${libc}`)) {
      if (!fs.existsSync(`node_modules/${name}`)) out.push(`${name}@${version}`);
    }
  }
}
process.stdout.write(out.join(' '));
