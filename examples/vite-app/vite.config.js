export default {
  // gitcap's worker imports its WebAssembly glue dynamically: ES module workers keep that working.
  worker: { format: 'es' },
  // Pre-bundling would move gitcap's worker away from its files in development.
  optimizeDeps: { exclude: ['gitcap'] },
};
