// helpers.mjs - start the real anthroxy binary against the mock llama-server, talk to it with
// the real SDK or raw HTTP, and stop it (asserting a graceful exit).
//
//   const env = useProxy({ mock: { nCtx: 8192 }, args: ['--ping-interval', '0.2'] });
//   test('x', env.wrap(async () => { await env.client.messages.create(...); env.mock.lastChat() }));
//
// ANTHROXY_BIN names the binary (ctest sets it). A failing test's error carries the tail of the
// proxy's stderr; the whole log is kept in tests/integration/.tmp-logs/ when a test fails.
import { before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import net from 'node:net';
import http from 'node:http';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import Anthropic from '@anthropic-ai/sdk';
import { startMock } from './mock-llama.mjs';

export const HERE = path.dirname(fileURLToPath(import.meta.url));
export const ROOT = path.resolve(HERE, '..', '..');
export const LOG_DIR = path.join(HERE, '.tmp-logs');
export const FIXTURES_DIR = path.join(ROOT, 'tests', 'fixtures');

export function anthroxyBin() {
  const bin = process.env.ANTHROXY_BIN;
  if (!bin) throw new Error('ANTHROXY_BIN is not set (path of the built anthroxy binary)');
  return bin;
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// Proxies still running; killed when the test process exits, whatever happened.
const live = new Set();
process.on('exit', () => {
  for (const p of live) {
    try { p.kill('SIGKILL'); } catch { /* gone */ }
  }
});

/** Polls cond() until it is truthy or timeoutMs passes; returns its last value. */
export async function until(cond, timeoutMs = 2000, stepMs = 10) {
  const t0 = Date.now();
  for (;;) {
    const v = await cond();
    if (v || Date.now() - t0 >= timeoutMs) return v;
    await sleep(stepMs);
  }
}

/**
 * Starts `$ANTHROXY_BIN --port 0 --upstream <upstream> --log-level debug ...args` and waits for
 * its `listening on http://HOST:PORT` line (talked to on 127.0.0.1 whatever HOST is). Returns { url, port, proc, log(), tail(n), stop() }.
 */
export async function startProxy({ upstream, args = [], env = {}, timeoutMs = 15000 } = {}) {
  const argv = ['--port', '0', '--log-level', 'debug'];
  if (upstream) argv.push('--upstream', upstream);
  argv.push(...args);
  const proc = spawn(anthroxyBin(), argv, {
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let log = '';
  proc.stdout.on('data', (d) => { log += d; });
  proc.stderr.on('data', (d) => { log += d; });
  live.add(proc);
  const exited = new Promise((resolve) => proc.on('exit', (code, signal) => {
    live.delete(proc);
    resolve({ code, signal });
  }));
  const port = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`anthroxy did not start within ${timeoutMs} ms:\n${log}`)), timeoutMs);
    const check = () => {
      const m = /listening on http:\/\/(?:\[[^\]\s]*\]|[^:\s]+):(\d+)/.exec(log);
      if (m) { clearTimeout(timer); resolve(Number(m[1])); }
    };
    proc.stderr.on('data', check);
    proc.stdout.on('data', check);
    proc.on('error', (e) => { clearTimeout(timer); reject(e); });
    exited.then(({ code, signal }) => {
      clearTimeout(timer);
      reject(new Error(`anthroxy exited (code ${code}, signal ${signal}) before listening:\n${log}`));
    });
  });
  const proxy = {
    port,
    url: `http://127.0.0.1:${port}`,
    proc,
    exited,
    log: () => log,
    tail: (n = 60) => log.split('\n').slice(-n).join('\n'),
    /** SIGTERM, then waits for the exit; returns { code, signal }. */
    async stop(timeoutMs = 15000) {
      if (proc.exitCode !== null || proc.signalCode !== null) return exited;
      proc.kill('SIGTERM');
      const t = setTimeout(() => proc.kill('SIGKILL'), timeoutMs);
      const r = await exited;
      clearTimeout(t);
      return r;
    },
  };
  return proxy;
}

/** Waits (up to timeoutMs) until /health says the start-up probes of the upstream are done, so
 * tests do not race them (the upstream model and window are learnt after listening starts). */
export async function waitUpstreamProbed(proxy, timeoutMs = 3000) {
  return until(async () => {
    try {
      const h = await request(proxy, { path: '/health' });
      return h.json && h.json.upstream && h.json.upstream.state === 'ok' && h.json.upstream.model;
    } catch {
      return false;
    }
  }, timeoutMs, 20);
}

export function sdkClient(proxy, opts = {}) {
  return new Anthropic({ baseURL: proxy.url, apiKey: 'test', maxRetries: 0, timeout: 30000, ...opts });
}

function saveLog(name, text) {
  try {
    fs.mkdirSync(LOG_DIR, { recursive: true });
    const f = path.join(LOG_DIR, name.replace(/[^A-Za-z0-9_.-]+/g, '_') + '.log');
    fs.writeFileSync(f, text);
    return f;
  } catch {
    return null;
  }
}

// One after hook for every useProxy of the file: node:test skips the remaining after hooks
// once one throws, which would leave servers open and the test process hanging.
const envs = [];
async function stopAll() {
  const problems = [];
  for (const env of envs) {
    if (env.proxy) {
      const exit = await env.proxy.stop();
      if (env.failed || exit.code !== 0) {
        const f = saveLog(env.name, env.proxy.log());
        if (f) console.error(`anthroxy log saved to ${f}`);
      }
      if (exit.signal !== null) problems.push(`${env.name}: anthroxy died by signal ${exit.signal}:\n${env.proxy.tail()}`);
      else if (exit.code !== 0) problems.push(`${env.name}: anthroxy exit code ${exit.code} after SIGTERM (graceful shutdown):\n${env.proxy.tail()}`);
    }
    if (env.mock) await env.mock.close();
  }
  assert.deepEqual(problems, [], problems.join('\n'));
}

/**
 * Registers before/after hooks that start a mock and a proxy for the file's tests.
 * opts: mock (startMock options), args (extra proxy flags), env, name (for the saved log).
 * The after hook stops the proxy with SIGTERM and asserts it exits 0.
 */
export function useProxy(opts = {}) {
  const env = {
    name: opts.name || path.basename(process.argv[1] || 'proxy', '.test.mjs'),
    mock: null,
    proxy: null,
    client: null,
    failed: false,
    replies: new Map(),
    /** Scripts the mock: a request whose last message contains `needle` gets `reply`
     * (an object for startMock's script, or a function of the recorded request). */
    on(needle, reply) { env.replies.set(needle, reply); },
    /** Wraps a test body: on failure the error message gets the proxy's stderr tail. */
    wrap(fn) {
      return async (t) => {
        try {
          await fn(t);
        } catch (e) {
          env.failed = true;
          if (env.proxy) {
            const msg = `\n--- anthroxy log (last 40 lines) ---\n${env.proxy.tail(40)}`;
            try { e.message += msg; } catch { /* frozen */ }
          }
          throw e;
        }
      };
    },
  };
  before(async () => {
    env.mock = await startMock(opts.mock || {});
    env.mock.script((req) => {
      for (const [needle, reply] of env.replies) {
        if (req.lastText.includes(needle)) return typeof reply === 'function' ? reply(req) : reply;
      }
      return null;
    });
    env.proxy = await startProxy({ upstream: env.mock.base, args: opts.args || [], env: opts.env || {} });
    await waitUpstreamProbed(env.proxy);
    env.client = sdkClient(env.proxy);
  });
  envs.push(env);
  if (envs.length === 1) after(stopAll);
  return env;
}

/**
 * One HTTP request with node:http (no SDK): returns { status, headers, text, json }.
 * body: string/Buffer sent as is, or an object sent as JSON.
 */
export function request(proxy, { method = 'GET', path: p = '/', headers = {}, body, agent = false } = {}) {
  return new Promise((resolve, reject) => {
    const data = body === undefined ? undefined
      : (typeof body === 'string' || Buffer.isBuffer(body)) ? body : JSON.stringify(body);
    const h = { ...headers };
    if (data !== undefined && !Object.keys(h).some((k) => k.toLowerCase() === 'content-type')) {
      h['content-type'] = 'application/json';
    }
    const req = http.request({ host: '127.0.0.1', port: proxy.port, method, path: p, headers: h, agent }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        let json;
        try { json = text ? JSON.parse(text) : undefined; } catch { json = undefined; }
        resolve({ status: res.statusCode, headers: res.headers, text, json });
      });
      res.on('error', reject);
    });
    req.on('error', reject);
    if (data !== undefined) req.end(data); else req.end();
  });
}

/** Writes raw bytes on a fresh TCP connection and collects everything until the peer closes
 * or `until(text)` says enough. Returns the text received. */
export function rawExchange(proxy, chunks, { until: stop, timeoutMs = 5000, gapMs = 0 } = {}) {
  return new Promise((resolve, reject) => {
    const sock = net.connect(proxy.port, '127.0.0.1');
    let got = '';
    const timer = setTimeout(() => { sock.destroy(); resolve(got); }, timeoutMs);
    sock.on('data', (d) => {
      got += d.toString('utf8');
      if (stop && stop(got)) { clearTimeout(timer); sock.destroy(); resolve(got); }
    });
    sock.on('end', () => { clearTimeout(timer); resolve(got); });
    sock.on('error', (e) => { clearTimeout(timer); if (got) resolve(got); else reject(e); });
    sock.on('connect', async () => {
      for (const c of [].concat(chunks)) {
        sock.write(c);
        if (gapMs) await sleep(gapMs);
      }
    });
  });
}

/** Splits a raw HTTP/1.1 byte string into responses (Content-Length or chunked bodies). */
export function parseResponses(raw) {
  const out = [];
  let s = raw;
  while (s.length > 0) {
    const he = s.indexOf('\r\n\r\n');
    if (he < 0) break;
    const head = s.slice(0, he).split('\r\n');
    const m = /^HTTP\/1\.1 (\d+)/.exec(head[0]);
    if (!m) break;
    const headers = {};
    for (const line of head.slice(1)) {
      const i = line.indexOf(':');
      headers[line.slice(0, i).trim().toLowerCase()] = line.slice(i + 1).trim();
    }
    let rest = s.slice(he + 4);
    let body = '';
    if (headers['content-length'] !== undefined) {
      // Content-Length counts bytes; the tests send ASCII bodies.
      const n = Number(headers['content-length']);
      body = rest.slice(0, n);
      rest = rest.slice(n);
    } else if ((headers['transfer-encoding'] || '').includes('chunked')) {
      for (;;) {
        const le = rest.indexOf('\r\n');
        const n = parseInt(rest.slice(0, le), 16);
        rest = rest.slice(le + 2);
        if (n === 0) { rest = rest.slice(rest.indexOf('\r\n') + 2); break; }
        body += rest.slice(0, n);
        rest = rest.slice(n + 2);
      }
    } else if (Number(m[1]) === 100 || Number(m[1]) === 204 || Number(m[1]) === 304) {
      body = '';
    }
    out.push({ status: Number(m[1]), headers, body });
    s = rest;
  }
  return out;
}

/** Anthropic error shape check: {"type":"error","error":{"type":..., "message": ...}}. */
export function assertAnthropicError(res, status, type, messageRe) {
  assert.equal(res.status, status, `status (body: ${res.text})`);
  assert.ok(res.json, `JSON body: ${res.text}`);
  assert.equal(res.json.type, 'error', res.text);
  assert.equal(res.json.error.type, type, res.text);
  assert.equal(typeof res.json.error.message, 'string');
  if (messageRe) assert.match(res.json.error.message, messageRe);
}

/** The text of an OpenAI message's content (string or parts). */
export function oaiText(content) {
  if (content == null) return '';
  if (typeof content === 'string') return content;
  return content.filter((p) => p.type === 'text').map((p) => p.text).join('');
}

export const userMsg = (text) => ({ role: 'user', content: text });

/**
 * A recording HTTP forwarder in front of a proxy: every request the client sends (method,
 * path, headers, raw body) is kept in `requests` as it arrived, then relayed unchanged to
 * `target` (a startProxy result) and the answer streamed back. Used to see exactly what
 * Claude Code sends, since the mock only sees the translated upstream request.
 */
export async function startRecorder(target) {
  const requests = [];
  const server = http.createServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      const raw = Buffer.concat(chunks);
      requests.push({ method: req.method, path: req.url, headers: { ...req.headers }, raw: raw.toString('utf8') });
      const up = http.request({ host: '127.0.0.1', port: target.port, method: req.method, path: req.url, headers: req.headers },
        (ures) => { res.writeHead(ures.statusCode, ures.headers); ures.pipe(res); });
      up.on('error', () => res.destroy());
      up.end(raw);
    });
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  const { port } = server.address();
  return {
    requests,
    port,
    url: `http://127.0.0.1:${port}`,
    close: () => new Promise((r) => { server.closeAllConnections?.(); server.close(() => r()); }),
  };
}

/** The betas an `anthropic-beta` header announces, as a sorted list. */
export const betas = (headers) => String(headers['anthropic-beta'] || '').split(',').map((s) => s.trim()).filter(Boolean).sort();

/** The Claude Code binary in tests/integration/node_modules: the native one (the npm package's
 * own, or the platform package's), else the npm wrapper script. */
export function claudeBin() {
  const isElf = (f) => {
    try {
      const fd = fs.openSync(f, 'r');
      const b = Buffer.alloc(4);
      fs.readSync(fd, b, 0, 4, 0);
      fs.closeSync(fd);
      return b.toString('latin1') === '\x7fELF';
    } catch {
      return false;
    }
  };
  const wrapper = path.join(HERE, 'node_modules', '@anthropic-ai', 'claude-code', 'bin', 'claude.exe');
  if (isElf(wrapper)) return wrapper;
  const libc = fs.existsSync('/etc/alpine-release') ? '-musl' : '';
  const native = path.join(HERE, 'node_modules', '@anthropic-ai', `claude-code-linux-${process.arch}${libc}`, 'claude');
  return isElf(native) ? native : path.join(HERE, 'node_modules', '.bin', 'claude');
}

/** The environment a test runs Claude Code in: its own HOME, offline (no telemetry, updates or
 * other traffic), pointed at baseUrl; extra entries are added (or override). */
export function claudeEnv(home, baseUrl, { apiKey = 'dummy', ...extra } = {}) {
  return {
    PATH: process.env.PATH, HOME: home, TMPDIR: os.tmpdir(),
    ANTHROPIC_BASE_URL: baseUrl, ANTHROPIC_API_KEY: apiKey,
    DISABLE_TELEMETRY: '1', DISABLE_ERROR_REPORTING: '1', DISABLE_AUTOUPDATER: '1', DISABLE_BUG_COMMAND: '1',
    CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC: '1', CLAUDE_CODE_DISABLE_NONSTREAMING_FALLBACK: '1',
    CLAUDE_CODE_DISABLE_TERMINAL_TITLE: '1', NO_PROXY: '127.0.0.1,localhost',
    ...extra,
  };
}
