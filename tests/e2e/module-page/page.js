// Exposes the module's exports to the tests as window.M.
window.M = await import('./gitcap/gitcap.js');
document.body.dataset.ready = '';
