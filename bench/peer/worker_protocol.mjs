// The protocol every timing worker of run.mjs speaks: one JSON object per line on stdout
// (`{ready, info}` once loaded, then one result per `run` line read from stdin, `{error}` on
// failure), diagnostics on stderr; `quit` or the end of stdin ends it.
import readline from 'node:readline';

export const say = (o) => process.stdout.write(JSON.stringify(o) + '\n');

export const logger = (tag) => (...a) => console.error(`# ${tag}:`, ...a);

// Playwright's connection to the browser does not keep Node's event loop alive: without this, the
// end of stdin while a page call is still pending would let Node wind down and close the browser.
const keepAlive = setInterval(() => {}, 1 << 30);

/// Loads with `start()` (which resolves to `{info, once, close?}`), announces it, answers each
/// `run` with `once()`, and always lets Node exit: the engine's `close()` runs if it started,
/// `cleanup()` runs in every case (for what was opened before or during a failed start).
export async function serve(start, log, cleanup = async () => {}) {
  let engine;
  try {
    engine = await start();
    say({ ready: true, info: engine.info });
    for await (const line of readline.createInterface({ input: process.stdin })) {
      const cmd = line.trim();
      if (cmd === 'quit') break;
      if (cmd !== 'run') {
        say({ error: `unknown command ${cmd}` });
        continue;
      }
      say(await engine.once());
    }
  } catch (e) {
    log(e.stack || String(e));
    say({ error: String(e.message || e) });
    process.exitCode = 1;
  } finally {
    await engine?.close?.();
    await cleanup();
    clearInterval(keepAlive);
  }
}
