// Service worker: keeps the app shell (page, scripts, WebAssembly) so that after the first
// visit the page opens and captions with no network at all. The model itself is stored by the
// model worker in OPFS, not here. Strategy: network first (so updates show at once), the cache
// when the network fails or is slow. Model files and ranged requests pass straight through.

const CACHE = 'gitcap-shell-v6';
const SHELL = [
  './',
  'index.html',
  'app.js',
  // The module the page runs on (gitcap.js and the worker's modules).
  'gitcap.js',
  'worker.js',
  'protocol.js',
  'wasm.js',
  'model.js',
  'storage.js',
  'download.js',
  'hub.js',
  'models.js',
  'store_q8.js',
  'style.css',
  'icon.svg',
  'manifest.webmanifest',
  'pkg/gitcap.js',
  'pkg/gitcap_bg.wasm',
  // Taken instead of pkg/ by engines with relaxed SIMD; absent from builds without it.
  'pkg-relaxed/gitcap.js',
  'pkg-relaxed/gitcap_bg.wasm',
];
// The threaded builds' files (their helper script's folder is named by a hash): build.sh lists
// them; the relaxed SIMD one is taken by engines that have relaxed SIMD.
const THREADED_DIRS = ['pkg-threads', 'pkg-threads-relaxed'];
const NETWORK_TIMEOUT_MS = 4000;

self.addEventListener('install', (event) => {
  event.waitUntil(
    (async () => {
      const cache = await caches.open(CACHE);
      const threaded = [];
      for (const dir of THREADED_DIRS) {
        try {
          const res = await fetch(new Request(`${dir}/files.json`, { cache: 'no-cache' }));
          if (res.ok) threaded.push(...(await res.json()).map((f) => `${dir}/${f}`));
        } catch {}
      }
      // One at a time, each failure its own: a missing optional file must not leave the whole
      // shell uncached, and all at once (four 3–17 MB wasm files beside the page's own requests
      // and the model download) left Firefox ESR's install waiting, now and then, on requests
      // that never reached the server.
      for (const path of [...SHELL, ...threaded]) {
        try {
          const res = await fetch(new Request(path, { cache: 'no-cache' }));
          if (res.ok) await cache.put(path, res);
        } catch {}
      }
      await self.skipWaiting();
    })()
  );
});

self.addEventListener('activate', (event) => {
  event.waitUntil(
    (async () => {
      for (const key of await caches.keys()) if (key.startsWith('gitcap-shell-') && key !== CACHE) await caches.delete(key);
      await self.clients.claim();
    })()
  );
});

function isShell(url) {
  if (url.origin !== self.location.origin) return false;
  const scope = new URL(self.registration.scope);
  if (!url.pathname.startsWith(scope.pathname)) return false;
  const rel = url.pathname.slice(scope.pathname.length);
  if (rel.startsWith('models/')) return false;
  return rel === '' || SHELL.includes(rel) || rel.startsWith('pkg/') || rel.startsWith('pkg-relaxed/') || THREADED_DIRS.some((d) => rel.startsWith(`${d}/`));
}

self.addEventListener('fetch', (event) => {
  const req = event.request;
  if (req.method !== 'GET' || req.headers.has('range')) return;
  const url = new URL(req.url);
  if (!isShell(url)) return;
  event.respondWith(networkFirst(req, url));
});

async function networkFirst(req, url) {
  const cache = await caches.open(CACHE);
  // The page with any query (?model=...) is the same cached index.html.
  const key = url.pathname.endsWith('/') ? new URL('index.html', url).href : url.origin + url.pathname;
  const fromCache = async () =>
    (await cache.match(key)) ||
    (req.mode === 'navigate' ? await cache.match(new URL('index.html', self.registration.scope).href) : undefined);
  const network = fetch(req).then(async (res) => {
    if (res.ok && res.type === 'basic') await cache.put(key, res.clone());
    return res;
  });
  try {
    const timeout = new Promise((resolve) => setTimeout(() => resolve(null), NETWORK_TIMEOUT_MS));
    const res = await Promise.race([network, timeout]);
    if (res) return res;
    // Slow network: the cached copy if there is one, else keep waiting.
    return (await fromCache()) || (await network);
  } catch (e) {
    const hit = await fromCache();
    if (hit) return hit;
    throw e;
  }
}
