// state-redis.test.mjs - --state redis://: two anthroxy instances share their sessions through
// a real redis-server, behind a real HAProxy (round-robin, loopback). One session is driven
// through HAProxy, each turn on the other instance: the session's monitor (turns, calibration,
// last input tokens) and its experiment arm follow it; the instance holding the latest turn is
// killed and the survivor carries on from it; Redis killed mid-run: requests still succeed and
// /health says disconnected; Redis back: reconnected, and the state is written again. The real
// Claude Code through HAProxy: its session counted whole on both instances. A Redis with a
// password: AUTH from the URL, a wrong one in /health, neither ever logged.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { startProxy, request, until, sleep, claudeBin, claudeEnv } from './helpers.mjs';
import { startMock } from './mock-llama.mjs';

function have(cmd) {
  return spawnSync('sh', ['-c', `command -v ${cmd}`]).status === 0;
}

// Debian's redis-server and haproxy, installed by scripts/setup.sh when missing.
function ensurePackages() {
  if (have('redis-server') && have('haproxy')) return null;
  const r = spawnSync('bash', ['-c', 'source ../../scripts/setup.sh && ax_setup_packages redis-server haproxy'],
    { stdio: 'ignore', timeout: 300000 });
  if (have('redis-server') && have('haproxy')) return null;
  return `redis-server and haproxy cannot be installed (setup.sh exit ${r.status})`;
}

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

function portOpen(port) {
  return new Promise((resolve) => {
    const c = net.connect({ host: '127.0.0.1', port }, () => { c.destroy(); resolve(true); });
    c.on('error', () => resolve(false));
  });
}

// A child process with its output kept, killed when the test process exits.
const children = new Set();
process.on('exit', () => { for (const c of children) { try { c.kill('SIGKILL'); } catch { /* gone */ } } });
function startChild(cmd, args) {
  const proc = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let log = '';
  proc.stdout.on('data', (d) => { log += d; });
  proc.stderr.on('data', (d) => { log += d; });
  children.add(proc);
  const exited = new Promise((resolve) => proc.on('exit', (code, signal) => { children.delete(proc); resolve({ code, signal }); }));
  return { proc, exited, log: () => log };
}

async function startRedis(port, extra = []) {
  const r = startChild('redis-server', ['--port', String(port), '--bind', '127.0.0.1',
    '--save', '', '--appendonly', 'no', '--protected-mode', 'yes', ...extra]);
  assert.ok(await until(() => /Ready to accept connections/.test(r.log()), 10000, 20), r.log());
  return r;
}

async function startHaproxy(dir, port, backends) {
  const cfg = path.join(dir, 'haproxy.cfg');
  fs.writeFileSync(cfg, [
    'global',
    '  maxconn 256',
    'defaults',
    '  mode http',
    '  timeout connect 1s',
    '  timeout client 30s',
    '  timeout server 30s',
    '  retries 3',
    '  option redispatch 1',
    'frontend fe',
    `  bind 127.0.0.1:${port}`,
    '  default_backend anthroxy',
    'backend anthroxy',
    '  balance roundrobin',
    '  option httpchk GET /health',
    ...backends.map((p, i) => `  server a${i} 127.0.0.1:${p} check inter 200 fall 1 rise 2`),
    '',
  ].join('\n'));
  const h = startChild('haproxy', ['-db', '-f', cfg]);
  assert.ok(await until(() => portOpen(port), 10000, 20), h.log());
  return h;
}

const turn = (target, session, i, headers = {}) => request(target, {
  method: 'POST', path: '/v1/messages',
  headers: { 'x-claude-code-session-id': session, ...headers },
  body: {
    model: 'claude-sonnet-4-5', max_tokens: 20,
    messages: [{ role: 'user', content: `turn ${i}: ${'some words of the conversation '.repeat(20 + 10 * i)}` }],
  },
});

const context = async (p, session) => {
  const c = await request(p, { path: `/v1/context?session=${session}` });
  assert.equal(c.status, 200, c.text);
  return c.json;
};

test('two instances behind HAProxy share a session through Redis, and survive losing one, and Redis', async (t) => {
  const why = ensurePackages();
  if (why) { t.skip(why); return; }
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ax-state-redis-'));
  // a two-arm experiment whose arm "pinned" no session gets by hash (weight 0): a session
  // is in it only if the header chose it on its first turn and the instances remember that
  const exp = path.join(dir, 'exp.lua');
  fs.writeFileSync(exp, `return { name = "state-test", arms = {
    { name = "usual", weight = 1, chain = "default.lua" },
    { name = "pinned", weight = 0, chain = "default.lua" } } }\n`);
  const redisPort = await freePort();
  let redis = await startRedis(redisPort);
  const mock = await startMock({ models: ['tiny'] });
  const stateArgs = ['--state', `redis://127.0.0.1:${redisPort}/3`, '--experiment', exp];
  const a = await startProxy({ upstream: mock.base, args: stateArgs });
  const b = await startProxy({ upstream: mock.base, args: stateArgs });
  const hport = await freePort();
  const ha = await startHaproxy(dir, hport, [a.port, b.port]);
  const front = { port: hport };
  const S = 'fleet-session-1';
  try {
    for (const p of [a, b]) {
      assert.ok(await until(() => /state: connected to redis:\/\/127\.0\.0\.1/.test(p.log()), 5000, 20), p.tail());
    }
    // both servers up in HAProxy's eyes before the session starts
    assert.ok(await until(async () => {
      const seen = new Set();
      for (let i = 0; i < 4; i++) {
        const h = await request(front, { path: '/health' });
        if (h.status === 200) seen.add(h.json.worker + ':' + (h.json.state && h.json.state.url));
      }
      return (await request(a, { path: '/health' })).json.state.connected &&
        (await request(b, { path: '/health' })).json.state.connected;
    }, 5000, 50));

    // the session's first turn picks its arm by header; later turns send none
    const N = 8;
    const arms = [];
    for (let i = 1; i <= N; i++) {
      const r = await turn(front, S, i, i === 1 ? { 'x-anthroxy-arm': 'pinned' } : {});
      assert.equal(r.status, 200, r.text);
      arms.push(r.headers['anthroxy-arm']);
    }
    assert.deepEqual(arms, Array(N).fill('pinned'), 'the arm follows the session to both instances');

    // each turn went to the other instance, and each carried on from the one before: the
    // instance of the last turn counts all N, the other N - 1 (alone each would count N / 2)
    // (/v1/context itself reads Redis: both show the session's latest state; which instance
    // served the last turn is in its /health counters)
    const ca = await context(a, S);
    const cb = await context(b, S);
    assert.equal(ca.total_requests, N, JSON.stringify(ca));
    assert.deepEqual(cb, { ...ca, last_seen_ms: cb.last_seen_ms, created_ms: cb.created_ms },
      'both instances show the same session');
    const ha1 = (await request(a, { path: '/health' })).json.state;
    const hb1 = (await request(b, { path: '/health' })).json.state;
    assert.equal(ha1.writes + hb1.writes, N, 'each turn written once');
    assert.ok(Math.abs(ha1.writes - hb1.writes) <= 1, `turns alternate: ${ha1.writes} and ${hb1.writes}`);
    assert.equal(ha1.misses + hb1.misses, 1, 'only the first turn found no state');
    assert.equal(ha1.hits + hb1.hits, N - 1 + 2, 'every later turn, and both reads, found it');
    // the instance that served the last turn: the first turn's for odd N, else the other
    const firstIsA = ha1.misses === 1;
    const [latest, other] = firstIsA === (N % 2 === 1) ? [a, b] : [b, a];
    const latestCtx = ca;
    assert.equal(latestCtx.calibration.samples, N, 'every turn calibrated the one factor');
    assert.notEqual(latestCtx.calibration.factor, 1, 'the mock counts otherwise than our estimate');
    assert.equal(latestCtx.arm, 'pinned');

    // the instance holding the latest state dies; the survivor takes the session over
    latest.proc.kill('SIGKILL');
    await latest.exited;
    const taken = await context(other, S);
    assert.equal(taken.total_requests, N, 'the survivor shows the dead instance\'s last turn');
    assert.equal(taken.calibration.factor, latestCtx.calibration.factor);
    const r = await turn(front, S, N + 1);
    assert.equal(r.status, 200, r.text);
    assert.equal(r.headers['anthroxy-arm'], 'pinned');
    const sc = await context(other, S);
    assert.equal(sc.total_requests, N + 1, JSON.stringify(sc));
    assert.equal(sc.calibration.samples, N + 1);
    assert.equal(sc.arm, 'pinned');
    assert.ok(sc.last_input_tokens > latestCtx.last_input_tokens,
      `the last input grew from turn ${N} (${latestCtx.last_input_tokens}) to ${sc.last_input_tokens}`);
    assert.equal(sc.calibration.last_real_prompt, r.json.usage.input_tokens, JSON.stringify(sc.calibration));
    assert.ok(Math.abs(sc.calibration.factor - latestCtx.calibration.factor) < 0.2,
      `the factor carried on: ${latestCtx.calibration.factor} then ${sc.calibration.factor}`);

    // Redis dies: requests keep succeeding from local state, /health says so
    redis.proc.kill('SIGKILL');
    await redis.exited;
    for (let i = N + 2; i <= N + 4; i++) {
      const t0 = Date.now();
      const rr = await turn(front, S, i);
      assert.equal(rr.status, 200, rr.text);
      assert.ok(Date.now() - t0 < 2000, 'no long wait for a dead Redis');
    }
    const down = await request(other, { path: '/health' });
    assert.equal(down.status, 200, 'the proxy still serves');
    assert.equal(down.json.state.backend, 'redis');
    assert.equal(down.json.state.connected, false, JSON.stringify(down.json.state));
    assert.ok(down.json.state.errors >= 1);
    assert.equal(typeof down.json.state.last_error, 'string');
    assert.equal((await context(other, S)).total_requests, N + 4, 'the local monitor counted on');

    // Redis back (empty): reconnected with backoff, and the next turn is written there again
    redis = await startRedis(redisPort);
    assert.ok(await until(async () => (await request(other, { path: '/health' })).json.state.connected, 8000, 100),
      other.tail());
    const w0 = (await request(other, { path: '/health' })).json.state.writes;
    const rr = await turn(front, S, N + 5);
    assert.equal(rr.status, 200, rr.text);
    assert.ok(await until(async () => (await request(other, { path: '/health' })).json.state.writes > w0, 2000, 20));
    const cli = spawnSync('redis-cli', ['-p', String(redisPort), '-n', '3', 'EXISTS', `anthroxy:session:${S}`]);
    if (cli.status === 0) assert.equal(cli.stdout.toString().trim(), '1', 'the session is in Redis again');
  } finally {
    ha.proc.kill('SIGTERM');
    await ha.exited;
    for (const p of [a, b]) {
      if (p.proc.exitCode === null && p.proc.signalCode === null) {
        const { code, signal } = await p.stop();
        assert.equal(signal, null, p.tail());
        assert.equal(code, 0, p.tail());
      }
    }
    redis.proc.kill('SIGTERM');
    await redis.exited;
    await mock.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('a slow Redis costs a request at most --state-wait, and a bad --state URL is refused', async (t) => {
  const why = ensurePackages();
  if (why) { t.skip(why); return; }
  const redisPort = await freePort();
  const redis = await startRedis(redisPort);
  const mock = await startMock({ models: ['tiny'] });
  const p = await startProxy({ upstream: mock.base, args: ['--state', `redis://127.0.0.1:${redisPort}`, '--state-wait', '0.05'] });
  try {
    assert.ok(await until(async () => (await request(p, { path: '/health' })).json.state.connected, 5000, 20));
    assert.equal((await turn(p, 'slow-1', 1)).status, 200);
    redis.proc.kill('SIGSTOP'); // accepts nothing, answers nothing
    const t0 = Date.now();
    const r = await turn(p, 'slow-1', 2);
    const ms = Date.now() - t0;
    assert.equal(r.status, 200, r.text);
    assert.ok(ms >= 45 && ms < 1000, `waited ${ms} ms for a stopped Redis (wait 50 ms)`);
    // a client gone while its request waits for Redis: the wait's end finds it canceled
    await new Promise((resolve) => {
      const body = JSON.stringify({ model: 'm', max_tokens: 5, messages: [{ role: 'user', content: 'bye' }] });
      const c = net.connect({ host: '127.0.0.1', port: p.port }, () => {
        c.write(`POST /v1/messages HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n` +
          `x-session-id: slow-1\r\ncontent-length: ${body.length}\r\n\r\n${body}`);
        setTimeout(() => { c.destroy(); resolve(); }, 10);
      });
      c.on('error', resolve);
    });
    await sleep(100);
    assert.equal((await turn(p, 'slow-1', 3)).status, 200, 'still serving');
    const h = await request(p, { path: '/health' });
    assert.ok(h.json.state.timeouts >= 2, JSON.stringify(h.json.state));
    assert.ok((await context(p, 'slow-1')).total_requests >= 3, 'the local state served');
    // a stalled connection is dropped and said so
    assert.ok(await until(async () => (await request(p, { path: '/health' })).json.state.connected === false, 5000, 50));
    assert.match((await request(p, { path: '/health' })).json.state.last_error, /no reply|connect/);
  } finally {
    redis.proc.kill('SIGCONT');
    const { code } = await p.stop();
    assert.equal(code, 0, p.tail());
    redis.proc.kill('SIGTERM');
    await redis.exited;
    await mock.close();
  }
  await assert.rejects(startProxy({ args: ['--state', 'http://127.0.0.1:6379'], timeoutMs: 5000 }), /--state.*redis:\/\//);
  await assert.rejects(startProxy({ args: ['--state', 'redis://127.0.0.1:99999/0'], timeoutMs: 5000 }), /--state/);
});

test('Claude Code through HAProxy and two instances: one session, counted whole on both', async (t) => {
  const why = ensurePackages();
  if (why) { t.skip(why); return; }
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ax-state-cc-'));
  const redisPort = await freePort();
  const redis = await startRedis(redisPort);
  const mock = await startMock({ models: ['tiny'], nCtx: 65536, defaultReply: { text: 'Hello from two instances.' } });
  const args = ['--state', `redis://127.0.0.1:${redisPort}/0`];
  const a = await startProxy({ upstream: mock.base, args });
  const b = await startProxy({ upstream: mock.base, args });
  const hport = await freePort();
  const ha = await startHaproxy(dir, hport, [a.port, b.port]);
  try {
    for (const p of [a, b]) {
      assert.ok(await until(async () => (await request(p, { path: '/health' })).json.state.connected, 5000, 20));
    }
    await sleep(600); // both up in HAProxy's checks (rise 2, every 200 ms)
    // two turns: a Write tool call, then the answer (side requests without tools: text)
    const target = path.join(dir, 'hello.txt');
    mock.script((req) => {
      const tools = req.body.tools || [];
      const k = req.body.messages.filter((m) => m.role === 'tool').length;
      if (k === 0 && tools.some((tl) => tl.function && tl.function.name === 'Write')) {
        return { toolCalls: [{ name: 'Write', arguments: { file_path: target, content: 'hi\n' } }] };
      }
      return { text: 'Hello from two instances.' };
    });
    const home = fs.mkdtempSync(path.join(dir, 'home-'));
    const child = spawn(claudeBin(), ['-p', 'Create hello.txt saying hi.', '--output-format', 'json',
      '--permission-mode', 'acceptEdits', '--allowedTools', 'Write', '--max-turns', '4'], {
      cwd: dir, stdio: ['ignore', 'pipe', 'pipe'],
      env: claudeEnv(home, `http://127.0.0.1:${hport}`),
    });
    let out = '';
    let err = '';
    child.stdout.on('data', (d) => { out += d; });
    child.stderr.on('data', (d) => { err += d; });
    const timer = setTimeout(() => child.kill('SIGKILL'), 120000);
    const code = await new Promise((resolve) => child.on('exit', (c, sig) => resolve(c ?? sig)));
    clearTimeout(timer);
    assert.equal(code, 0, `claude: ${err}\n${out}\n${a.tail()}\n${b.tail()}`);
    const res = JSON.parse(out.trim().split('\n').pop());
    assert.match(res.result, /Hello from two instances/);
    assert.equal(fs.readFileSync(target, 'utf8'), 'hi\n');
    // Claude Code's session key, from either instance's list
    const keys = new Set();
    for (const p of [a, b]) {
      for (const it of (await request(p, { path: '/v1/context' })).json.items) keys.add(it.session);
    }
    keys.delete('default');
    assert.equal(keys.size, 1, [...keys].join(', '));
    const [K] = keys;
    const sa = (await request(a, { path: '/health' })).json.state;
    const sb = (await request(b, { path: '/health' })).json.state;
    assert.ok(sa.writes > 0 && sb.writes > 0, `both instances served: ${sa.writes} and ${sb.writes}`);
    const ca = await context(a, K);
    const cb = await context(b, K);
    assert.equal(ca.total_requests, sa.writes + sb.writes, 'every request of the session, on either instance');
    assert.equal(cb.total_requests, ca.total_requests);
    t.diagnostic(`Claude Code's session: ${ca.total_requests} requests, ${sa.writes} on one instance, ${sb.writes} on the other`);
    assert.ok(ca.last_input_tokens > 1000, 'Claude Code\'s prompt was measured');
  } finally {
    ha.proc.kill('SIGTERM');
    await ha.exited;
    for (const p of [a, b]) {
      const { code } = await p.stop();
      assert.equal(code, 0, p.tail());
    }
    redis.proc.kill('SIGTERM');
    await redis.exited;
    await mock.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('a Redis with a password: AUTH from the URL, a wrong one said in /health, never logged', async (t) => {
  const why = ensurePackages();
  if (why) { t.skip(why); return; }
  const redisPort = await freePort();
  const redis = await startRedis(redisPort, ['--requirepass', 'pw-Zq81x']);
  const mock = await startMock({ models: ['tiny'] });
  const bad = await startProxy({ upstream: mock.base, args: ['--state', `redis://:pw-Nope7@127.0.0.1:${redisPort}/1`] });
  const good = await startProxy({ upstream: mock.base, args: ['--state', `redis://default:pw-Zq81x@127.0.0.1:${redisPort}/1`] });
  try {
    assert.ok(await until(async () => (await request(good, { path: '/health' })).json.state.connected, 5000, 20), good.tail());
    assert.equal((await turn(good, 'auth-1', 1)).status, 200);
    assert.ok(await until(async () => (await request(good, { path: '/health' })).json.state.writes === 1, 2000, 20));
    assert.ok(await until(async () => /WRONGPASS|NOAUTH/.test((await request(bad, { path: '/health' })).json.state.last_error || ''), 5000, 50));
    const hb = (await request(bad, { path: '/health' })).json.state;
    assert.equal(hb.connected, false);
    assert.equal(hb.url, `redis://127.0.0.1:${redisPort}/1`, 'no password in /health');
    assert.equal((await turn(bad, 'auth-2', 1)).status, 200, 'served from local state');
    assert.doesNotMatch(bad.log() + good.log(), /pw-Nope7|pw-Zq81x/);
  } finally {
    for (const p of [bad, good]) assert.equal((await p.stop()).code, 0, p.tail());
    redis.proc.kill('SIGTERM');
    await redis.exited;
    await mock.close();
  }
});

test('without --state, /health has no state and nothing waits for Redis', async () => {
  const mock = await startMock({ models: ['tiny'] });
  const p = await startProxy({ upstream: mock.base });
  try {
    const h = await request(p, { path: '/health' });
    assert.equal(h.json.state, undefined);
    assert.equal((await turn(p, 'local-1', 1)).status, 200);
    assert.doesNotMatch(p.log(), /state:/);
  } finally {
    await p.stop();
    await mock.close();
    await sleep(0);
  }
});
