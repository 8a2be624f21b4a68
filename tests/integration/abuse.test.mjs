// abuse.test.mjs - the proxy bounded under abuse (issue 13), each case with the server still
// serving afterwards: past the connection cap (fitted to the descriptor limit) new connections
// are told 503 overloaded_error, never dropped silently, and counted in /health; one client
// address past --max-connections-per-client is told 429; a refused client still sending its
// request reads the answer (a lingering close, not a reset); a trickling non-streaming upstream
// is bounded by --nonstream-timeout, 600 s by default.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { startMock } from './mock-llama.mjs';
import { startProxy, waitUpstreamProbed, request, assertAnthropicError, until, sleep, anthroxyBin, FIXTURES_DIR } from './helpers.mjs';

const MODEL = 'claude-sonnet-4-5';
const msgBody = (text, extra = {}) => ({ model: MODEL, max_tokens: 64, messages: [{ role: 'user', content: text }], ...extra });

function cpuTicks(pid) {
  const f = fs.readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
  return Number(f[11]) + Number(f[12]); // utime + stime
}

/** A raw connection that sends nothing (unless onConnect does): { sock, done }, done resolving
 * with { text, ended } once the peer closes or timeoutMs passes. */
function rawConn(port, { onConnect, timeoutMs = 10000 } = {}) {
  const sock = net.connect(port, '127.0.0.1');
  let text = '';
  let error = null;
  const done = new Promise((resolve) => {
    const t = setTimeout(() => { resolve({ text, ended: false, error }); sock.destroy(); }, timeoutMs);
    const fin = () => { clearTimeout(t); resolve({ text, ended: true, error }); sock.destroy(); };
    sock.on('data', (d) => { text += d.toString('latin1'); });
    sock.on('end', fin);
    sock.on('close', fin);
    sock.on('error', (e) => { error = e.code; });
  });
  sock.on('connect', () => onConnect && onConnect(sock));
  return { sock, done };
}

/** Opens n idle connections and waits until the proxy counts them all (accepted, or refused
 * and closed). Returns the connections and the list of those that ended. */
async function openIdle(p, n) {
  const held = [];
  const ends = [];
  for (let i = 0; i < n; i++) {
    const c = rawConn(p.port, { timeoutMs: 20000 });
    c.done.then((g) => { if (g.ended) ends.push(g); });
    held.push(c);
    await new Promise((r) => c.sock.once('connect', r));
  }
  return { held, ends };
}

/** Runs the anthroxy binary under `ulimit -n nofile` through a wrapper script. */
async function startLowFd(nofile, opts) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'anthroxy-abuse-'));
  const wrapper = path.join(dir, 'anthroxy-lowfd');
  fs.writeFileSync(wrapper, `#!/bin/sh\nulimit -n ${nofile}\nexec "${anthroxyBin()}" "$@"\n`, { mode: 0o755 });
  const saved = process.env.ANTHROXY_BIN;
  process.env.ANTHROXY_BIN = wrapper;
  try {
    const p = await startProxy(opts);
    p.cleanup = () => fs.rmSync(dir, { recursive: true, force: true });
    return p;
  } finally {
    process.env.ANTHROXY_BIN = saved;
  }
}

test('at the descriptor limit new connections get 503 overloaded_error, counted, and service resumes', async () => {
  const mock = await startMock({});
  // 160 descriptors, 96 kept for the server and 4 for the upstream slots: a cap of 60.
  const p = await startLowFd(160, { upstream: mock.base, args: ['--max-upstream', '4', '--keepalive-timeout', '30'] });
  let held = [];
  try {
    assert.ok(await waitUpstreamProbed(p), p.tail());
    assert.match(p.log(), /max-connections 4096 lowered to 60 to fit the descriptor limit \(ulimit -n 160/);
    const h0 = await request(p, { path: '/health' });
    assert.equal(h0.json.connections_max, 60, h0.text);
    assert.equal(h0.json.connections_refused, 0, h0.text);
    const idle = await openIdle(p, 90);
    held = idle.held;
    assert.ok(await until(() => idle.ends.length >= 30, 10000, 50), `${idle.ends.length} of the 30 past the cap answered`);
    await sleep(200);
    assert.equal(idle.ends.length, 30, 'the 60 under the cap stay open');
    for (const e of idle.ends) {
      assert.match(e.text, /^HTTP\/1\.1 503 Service Unavailable\r\n/, e.text.slice(0, 200));
      assert.match(e.text, /\r\nretry-after: 1\r\n/i);
      const body = JSON.parse(e.text.slice(e.text.indexOf('\r\n\r\n') + 4));
      assert.equal(body.type, 'error');
      assert.equal(body.error.type, 'overloaded_error');
      assert.match(body.error.message, /too many connections \(max_connections 60\)/);
    }
    // A client at the cap that sends its whole request at once reads the answer (no reset),
    // promptly, and the proxy does not spin meanwhile.
    const c0 = cpuTicks(p.proc.pid);
    const r = await request(p, { method: 'POST', path: '/v1/messages', body: msgBody('x'.repeat(200000)) });
    assertAnthropicError(r, 503, 'overloaded_error', /too many connections/);
    assert.equal(r.headers['retry-after'], '1');
    await sleep(1000);
    assert.ok(cpuTicks(p.proc.pid) - c0 < 30, 'the proxy idles at the cap');
    for (const c of held) c.sock.destroy();
    assert.ok(await until(async () => {
      const ok = await request(p, { method: 'POST', path: '/v1/messages', body: msgBody('hi') });
      return ok.status === 200;
    }, 5000, 100), 'served again once connections closed');
    const h = await request(p, { path: '/health' });
    assert.equal(h.json.connections_refused, 31, h.text);
  } finally {
    for (const c of held) c.sock.destroy();
    const exit = await p.stop();
    await mock.close();
    p.cleanup();
    assert.equal(exit.code, 0, p.tail());
  }
});

test('--max-connections: the cap as set, with a 503 for the connection past it', async () => {
  const mock = await startMock({});
  const p = await startProxy({ upstream: mock.base, args: ['--max-connections', '3'] });
  let held = [];
  try {
    assert.ok(await waitUpstreamProbed(p), p.tail());
    const idle = await openIdle(p, 3);
    held = idle.held;
    await sleep(100);
    assert.equal(idle.ends.length, 0, 'three under the cap of 3 stay open');
    const r = await request(p, { method: 'POST', path: '/v1/messages', body: msgBody('hi') });
    assertAnthropicError(r, 503, 'overloaded_error', /max_connections 3/);
    held[0].sock.destroy();
    assert.ok(await until(async () => (await request(p, { method: 'POST', path: '/v1/messages', body: msgBody('hi') })).status === 200, 3000, 50),
      'a slot freed is usable');
  } finally {
    for (const c of held) c.sock.destroy();
    const exit = await p.stop();
    await mock.close();
    assert.equal(exit.code, 0, p.tail());
  }
});

test('--max-connections-per-client: one address past its cap gets 429 rate_limit_error, others are served', async () => {
  const mock = await startMock({});
  const p = await startProxy({ upstream: mock.base, args: ['--max-connections-per-client', '2', '--host', '0.0.0.0'] });
  let held = [];
  try {
    assert.ok(await waitUpstreamProbed(p), p.tail());
    const idle = await openIdle(p, 2);
    held = idle.held;
    await sleep(100);
    assert.equal(idle.ends.length, 0);
    // 127.0.0.1 is at its cap of 2: a third connection from it is refused, and told why.
    const r = await request(p, { method: 'POST', path: '/v1/messages', body: msgBody('hi') });
    assertAnthropicError(r, 429, 'rate_limit_error', /too many connections from this address \(max_connections_per_client 2\)/);
    assert.equal(r.headers['retry-after'], '1');
    // Another address (127.0.0.2, loopback too) is counted apart and served.
    const other = await new Promise((resolve, reject) => {
      const s = net.connect({ port: p.port, host: '127.0.0.2', localAddress: '127.0.0.2' });
      let text = '';
      const body = JSON.stringify(msgBody('from elsewhere'));
      s.on('connect', () => s.write(`POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: ${body.length}\r\n\r\n${body}`));
      s.on('data', (d) => { text += d; });
      s.on('end', () => resolve(text));
      s.on('error', reject);
    });
    assert.match(other, /^HTTP\/1\.1 200 OK\r\n/, other.slice(0, 200));
    // Closing one of the two lets the address in again.
    held[0].sock.destroy();
    assert.ok(await until(async () => (await request(p, { method: 'POST', path: '/v1/messages', body: msgBody('hi') })).status === 200, 3000, 50),
      'served once the address is under its cap');
    const h = await request(p, { path: '/health' });
    assert.ok(h.json.connections_refused >= 1, h.text);
  } finally {
    for (const c of held) c.sock.destroy();
    const exit = await p.stop();
    await mock.close();
    assert.equal(exit.code, 0, p.tail());
  }
});

test('a trickling non-streaming upstream is cut off by --nonstream-timeout (600 s by default): 504', async () => {
  const mock = await startMock({});
  let closed = 0;
  mock.script((req) => (req.lastText.includes('TRICKLE') ? {
    respond: (res) => {
      res.writeHead(200, { 'Content-Type': 'application/json' });
      const t = setInterval(() => res.write(' '), 100); // whitespace before a JSON that never comes
      res.on('close', () => { clearInterval(t); closed++; });
    },
  } : null));
  const dflt = await startProxy({ upstream: mock.base });
  const p = await startProxy({ upstream: mock.base, args: ['--nonstream-timeout', '1', '--read-timeout', '60'] });
  try {
    assert.ok(await waitUpstreamProbed(p), p.tail());
    const h = await request(dflt, { path: '/health' });
    assert.equal(h.json.config['nonstream-timeout'].value, 600, JSON.stringify(h.json.config['nonstream-timeout']));
    const t0 = Date.now();
    const r = await request(p, { method: 'POST', path: '/v1/messages', body: msgBody('TRICKLE') });
    const ms = Date.now() - t0;
    assertAnthropicError(r, 504, 'api_error', /did not finish within 1 s \(nonstream-timeout\)/);
    assert.ok(ms >= 900 && ms < 5000, `answered after ${ms} ms`);
    assert.ok(await until(() => closed === 1, 2000), 'the upstream connection was closed');
    // The server keeps serving, and streams are not bounded by it.
    const ok = await request(p, { method: 'POST', path: '/v1/messages', body: msgBody('hi') });
    assert.equal(ok.status, 200, ok.text);
    mock.script((req) => (req.lastText.includes('SLOWSTREAM') ? { text: 'abcdefghijklmnopqrst', pieceSize: 1, chunkDelayMs: 100 } : null));
    const s = await request(p, { method: 'POST', path: '/v1/messages', body: msgBody('SLOWSTREAM', { stream: true }) });
    assert.equal(s.status, 200);
    assert.match(s.text, /message_stop/, s.text.slice(-300));
    assert.ok(!/event: error/.test(s.text), s.text.slice(-300));
  } finally {
    const e1 = await p.stop();
    const e2 = await dflt.stop();
    await mock.close();
    assert.equal(e1.code, 0, p.tail());
    assert.equal(e2.code, 0, dflt.tail());
  }
});

test('an upstream that answers 200 before reading the request body: the body stays whole until curl has sent it', async () => {
  // A held stream frees its request at the upstream's 200; curl may still be sending it then.
  // Freed too early, the 3 MB printed body (an mmap of its own) is read after it is unmapped.
  const got = [];
  const up = http.createServer((req, res) => {
    if (req.method !== 'POST' || !req.url.endsWith('/chat/completions')) {
      res.writeHead(404, { 'Content-Type': 'application/json' });
      res.end('{"error":{"message":"not found"}}');
      return;
    }
    res.writeHead(200, { 'Content-Type': 'application/json' });
    res.flushHeaders(); // the status before a byte of the body is read
    setTimeout(() => {
      const chunks = [];
      req.on('data', (c) => chunks.push(c));
      req.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        got.push(text);
        let n = -1;
        let stream = true;
        try {
          const j = JSON.parse(text);
          n = j.messages.at(-1).content.length;
          stream = j.stream === true;
        } catch { /* n stays -1 */ }
        if (!stream) {
          res.end(JSON.stringify({ id: 'c', object: 'chat.completion', created: 1, model: 'm',
            choices: [{ index: 0, message: { role: 'assistant', content: `got ${n} chars` }, finish_reason: 'stop' }],
            usage: { prompt_tokens: 5, completion_tokens: 3, total_tokens: 8 } }));
          return;
        }
        const chunk = (delta, finish = null) => `data: ${JSON.stringify({ id: 'c', object: 'chat.completion.chunk', created: 1, model: 'm', choices: [{ index: 0, delta, finish_reason: finish }] })}\n\n`;
        res.write(chunk({ role: 'assistant', content: `got ${n} chars` }));
        res.write(chunk({}, 'stop'));
        res.end('data: [DONE]\n\n');
      });
    }, 300);
  });
  await new Promise((r) => up.listen(0, '127.0.0.1', r));
  const p = await startProxy({ upstream: `http://127.0.0.1:${up.address().port}/v1`, args: ['--upstream-model', 'm', '--first-byte-hold', '0', '--context-window', '100000000'] });
  try {
    const big = 'q'.repeat(3 * 1024 * 1024);
    for (const stream of [true, false]) {
      const r = await request(p, { method: 'POST', path: '/v1/messages', body: msgBody(big, { stream }) });
      assert.equal(r.status, 200, r.text.slice(0, 300));
      assert.match(r.text, new RegExp(`got ${big.length} chars`), r.text.slice(0, 300));
      const sent = JSON.parse(got.at(-1));
      assert.equal(sent.messages.at(-1).content, big, 'the upstream got the body whole');
    }
  } finally {
    const exit = await p.stop();
    await new Promise((r) => { up.closeAllConnections(); up.close(r); });
    assert.equal(exit.code, 0, p.tail());
    assert.equal(exit.signal, null, p.tail());
  }
});

function rssKiB(pid) {
  const m = /VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) : NaN;
}

test('held streams cost about their heap in RSS: the request trees are released, the memory trimmed', async (t) => {
  const mock = await startMock({ nCtx: 200000 });
  mock.script(() => ({ text: 'x'.repeat(200), pieceSize: 1, chunkDelayMs: 50 })); // ~10 s each
  const p = await startProxy({ upstream: mock.base, args: ['--max-upstream', '150', '--log-level', 'INFO'] });
  const N = 100;
  const body = JSON.parse(fs.readFileSync(path.join(FIXTURES_DIR, 'claude-code', 'first-turn.json'), 'utf8'));
  body.stream = true;
  const text = JSON.stringify(body); // ~80 KB, as Claude Code sends
  const agent = new http.Agent({ keepAlive: true, maxSockets: Infinity });
  const heapKiB = async () => ((await request(p, { path: '/health' })).json.heap_in_use_bytes ?? 0) / 1024;
  const open = (onDelta) => new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port: p.port, path: '/v1/messages', method: 'POST', agent,
      headers: { 'content-type': 'application/json', 'x-session-id': 'rss' } }, (res) => {
      let seen = false;
      res.setEncoding('utf8');
      res.on('data', (d) => { if (!seen && d.includes('content_block_delta')) { seen = true; onDelta(); } });
      res.on('end', resolve);
    });
    req.on('error', reject);
    req.end(text);
  });
  try {
    assert.ok(await waitUpstreamProbed(p), p.tail());
    if (!(await heapKiB())) {
      t.skip('no allocator figures in this build (sanitizers)');
      return;
    }
    await open(() => {});
    const rss0 = rssKiB(p.proc.pid);
    const heap0 = await heapKiB();
    let started = 0;
    let all;
    const allStarted = new Promise((r) => { all = r; });
    const done = [];
    for (let i = 0; i < N; i++) done.push(open(() => { if (++started === N) all(); }));
    await allStarted;
    await sleep(200); // a trim coalesced behind the last release runs within 100 ms
    const rss = (rssKiB(p.proc.pid) - rss0) / N;
    const heap = ((await heapKiB()) - heap0) / N;
    // On fe35a43: ~290 KiB of RSS per stream for ~57 KiB of heap.
    assert.ok(rss < 1.5 * heap + 16, `RSS ${rss.toFixed(1)} KiB per stream for ${heap.toFixed(1)} KiB of heap`);
    await Promise.all(done);
  } finally {
    agent.destroy();
    const exit = await p.stop();
    await mock.close();
    assert.equal(exit.code, 0, p.tail());
  }
});
