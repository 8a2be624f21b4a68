// llama.mjs - start a real llama.cpp llama-server with the tiny test model, for the tests and
// benchmarks of the real tier (tests/real/README.md).
//
//   import { startLlama } from '../real/llama.mjs';
//   const llama = await startLlama({ ctx: 8192, np: 1 });
//   if (!llama) return t.skip('no LLAMA_SERVER');            // reason already logged
//   ... fetch(`${llama.url}/v1/chat/completions`, ...) ...
//   await llama.stop();
//
// LLAMA_SERVER names the llama-server binary (built by the user from llama.cpp; nothing here
// builds it). LLAMA_MODEL may name a .gguf to use instead of the generated tiny model, which is
// otherwise written once by make-tiny-gguf.mjs into $ANTHROXY_REAL_CACHE (default
// $TMPDIR/anthroxy-real) and reused. The server listens on a free loopback port only.
import { spawn, execFileSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const HERE = path.dirname(fileURLToPath(import.meta.url));
export const MAKE_MODEL = path.join(HERE, 'make-tiny-gguf.mjs');
export const CACHE_DIR = process.env.ANTHROXY_REAL_CACHE || path.join(os.tmpdir(), 'anthroxy-real');

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** The llama-server binary from LLAMA_SERVER, or null with the reason (unset, or not runnable). */
export function llamaServerBin() {
  const bin = process.env.LLAMA_SERVER;
  if (!bin) return { bin: null, reason: 'LLAMA_SERVER is not set (path of a llama-server built from llama.cpp); skipping the real llama-server tier' };
  try {
    fs.accessSync(bin, fs.constants.X_OK);
  } catch {
    return { bin: null, reason: `LLAMA_SERVER=${bin} is not an executable file; skipping the real llama-server tier` };
  }
  return { bin, reason: null };
}

/** Path of the tiny model, generating it (deterministically, once) if it is not there yet. */
export function tinyModel() {
  if (process.env.LLAMA_MODEL) return path.resolve(process.env.LLAMA_MODEL);
  const file = path.join(CACHE_DIR, 'tiny.gguf');
  const stamp = file + '.src-mtime';
  const srcMtime = String(fs.statSync(MAKE_MODEL).mtimeMs);
  let fresh = false;
  try { fresh = fs.existsSync(file) && fs.readFileSync(stamp, 'utf8') === srcMtime; } catch { /* make it */ }
  if (!fresh) {
    fs.mkdirSync(CACHE_DIR, { recursive: true });
    const tmp = `${file}.${process.pid}.tmp`;
    execFileSync(process.execPath, [MAKE_MODEL, tmp], { stdio: ['ignore', 'ignore', 'inherit'] });
    fs.renameSync(tmp, file);
    fs.writeFileSync(stamp, srcMtime);
  }
  return file;
}

/** A port that was free on 127.0.0.1 a moment ago. */
export async function freePort() {
  const s = net.createServer();
  await new Promise((resolve, reject) => { s.once('error', reject); s.listen(0, '127.0.0.1', resolve); });
  const { port } = s.address();
  await new Promise((r) => s.close(r));
  return port;
}

// Servers still running; killed when the process exits, whatever happened.
const live = new Set();
process.on('exit', () => {
  for (const p of live) {
    try { p.kill('SIGKILL'); } catch { /* gone */ }
  }
});

async function healthy(url) {
  try {
    const r = await fetch(`${url}/health`, { signal: AbortSignal.timeout(1000) });
    await r.arrayBuffer();
    return r.status === 200;
  } catch {
    return false;
  }
}

/**
 * Starts `$LLAMA_SERVER -m tiny.gguf --alias tiny --host 127.0.0.1 --port P -c ctx -np np
 * [--jinja|--no-jinja] -t threads --no-webui ...extraArgs` and waits for GET /health to answer
 * 200 (the model is loaded). The server runs in the model's directory with a relative -m, so
 * nothing it reports holds a machine path.
 *
 * Returns { url, port, proc, args, log(), tail(n), stop() }, or null (reason logged with
 * console.log) when LLAMA_SERVER is unset or not executable. Throws if the server exits or is
 * not healthy within timeoutMs.
 *
 * Note: the window that counts is per slot, ctx / np (`/props` default_generation_settings.n_ctx).
 * Prompt caching is on by default in llama-server (`--cache-prompt`); a repeated prompt reports
 * usage.prompt_tokens_details.cached_tokens = prompt_tokens - 1.
 */
export async function startLlama({
  ctx = 8192, np = 1, jinja = true, extraArgs = [], alias = 'tiny', threads = 2,
  model = null, timeoutMs = 60000, quiet = true,
} = {}) {
  const { bin, reason } = llamaServerBin();
  if (!bin) {
    console.log(`# ${reason}`);
    return null;
  }
  const modelPath = model ? path.resolve(model) : tinyModel();
  let lastError = null;
  for (let attempt = 0; attempt < 3; attempt++) { // the free port may be taken in between
    const port = await freePort();
    const args = [
      '-m', path.basename(modelPath), '--alias', alias,
      '--host', '127.0.0.1', '--port', String(port),
      '-c', String(ctx), '-np', String(np),
      jinja ? '--jinja' : '--no-jinja',
      '-t', String(threads), '--no-webui',
      ...extraArgs,
    ];
    const proc = spawn(bin, args, {
      cwd: path.dirname(modelPath),
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let log = '';
    proc.stdout.on('data', (d) => { log += d; });
    proc.stderr.on('data', (d) => { log += d; });
    live.add(proc);
    let exitInfo = null;
    const exited = new Promise((resolve) => proc.on('exit', (code, signal) => {
      live.delete(proc);
      exitInfo = { code, signal };
      resolve(exitInfo);
    }));
    proc.on('error', (e) => { log += `\nspawn error: ${e.message}\n`; });
    const url = `http://127.0.0.1:${port}`;
    const tail = (n = 40) => log.split('\n').slice(-n).join('\n');
    const t0 = Date.now();
    let ok = false;
    while (!exitInfo && Date.now() - t0 < timeoutMs) {
      if (await healthy(url)) { ok = true; break; }
      await sleep(100);
    }
    const server = {
      url, port, proc, args, exited,
      log: () => log,
      tail,
      /** SIGTERM, then SIGKILL after timeoutMs; resolves to { code, signal }. */
      async stop(stopTimeoutMs = 10000) {
        if (proc.exitCode !== null || proc.signalCode !== null) return exited;
        proc.kill('SIGTERM');
        const t = setTimeout(() => proc.kill('SIGKILL'), stopTimeoutMs);
        const r = await exited;
        clearTimeout(t);
        return r;
      },
    };
    if (ok) {
      if (!quiet) console.log(`# llama-server on ${url}: ${bin} ${args.join(' ')}`);
      return server;
    }
    await server.stop();
    lastError = new Error(exitInfo
      ? `llama-server exited (code ${exitInfo.code}, signal ${exitInfo.signal}) before /health was 200:\n${tail()}`
      : `llama-server /health was not 200 within ${timeoutMs} ms:\n${tail()}`);
    if (!/bind|address already in use/i.test(log)) break;
  }
  throw lastError;
}
