// state_redis.mjs - what --state redis:// adds to a request's latency (issue 12's figure: the
// added p50 under 0.1 ms). One run, one binary, two proxies in front of the same mock: one
// without --state, one with --state pointing at a local redis-server (Debian's, on a free
// loopback port, no persistence). N small sequential non-streaming requests of one session
// each way, interleaved (A, B, A, B...) so that drift in the machine's load hits both alike,
// each on a kept-alive connection; client-side wall time per request, p50 and p95 each way.
//
//   ANTHROXY_BIN=build/anthroxy node tests/bench/state_redis.mjs [N=2000]
//
// Prints figures; passes or fails nothing (exits 1 only when it cannot run).
import http from 'node:http';
import net from 'node:net';
import { spawn } from 'node:child_process';
import { startMock } from '../integration/mock-llama.mjs';
import { startProxy, request, until } from '../integration/helpers.mjs';

const N = Number(process.argv[2] || 2000);

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => { const { port } = s.address(); s.close(() => resolve(port)); });
  });
}

function post(agent, port, body) {
  return new Promise((resolve, reject) => {
    const t0 = process.hrtime.bigint();
    const req = http.request({
      host: '127.0.0.1', port, method: 'POST', path: '/v1/messages', agent,
      headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body), 'x-session-id': 'bench-session' },
    }, (res) => {
      res.resume();
      res.on('end', () => {
        if (res.statusCode !== 200) reject(new Error(`status ${res.statusCode}`));
        else resolve(Number(process.hrtime.bigint() - t0) / 1e6);
      });
    });
    req.on('error', reject);
    req.end(body);
  });
}

const pct = (xs, p) => { const s = [...xs].sort((a, b) => a - b); return s[Math.min(s.length - 1, Math.floor(p * s.length))]; };

const redisPort = await freePort();
const redis = spawn('redis-server', ['--port', String(redisPort), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'],
  { stdio: ['ignore', 'pipe', 'pipe'] });
process.on('exit', () => { try { redis.kill('SIGKILL'); } catch { /* gone */ } }); // even on a failed start
let rlog = '';
redis.stdout.on('data', (d) => { rlog += d; });
redis.on('error', (e) => { console.error(`redis-server: ${e.message}`); process.exit(1); });
if (!await until(() => /Ready to accept connections/.test(rlog), 10000, 20)) { console.error(rlog); process.exit(1); }

const mock = await startMock({ models: ['tiny'] });
const common = ['--log-level', 'INFO']; // the listening line is INFO
const plain = await startProxy({ upstream: mock.base, args: common });
const shared = await startProxy({ upstream: mock.base, args: [...common, '--state', `redis://127.0.0.1:${redisPort}/0`] });
try {
  await until(async () => (await request(shared, { path: '/health' })).json.state.connected, 5000, 20);
  const body = JSON.stringify({ model: 'claude-sonnet-4-5', max_tokens: 16, messages: [{ role: 'user', content: 'hello there' }] });
  const agents = [new http.Agent({ keepAlive: true, maxSockets: 1 }), new http.Agent({ keepAlive: true, maxSockets: 1 })];
  const targets = [plain, shared];
  const times = [[], []];
  for (let i = 0; i < 200; i++) for (let k = 0; k < 2; k++) await post(agents[k], targets[k].port, body); // warm-up
  for (let i = 0; i < N; i++) {
    for (let k = 0; k < 2; k++) {
      const kk = (i & 1) ? 1 - k : k; // alternate who goes first
      times[kk].push(await post(agents[kk], targets[kk].port, body));
    }
  }
  const st = (await request(shared, { path: '/health' })).json.state;
  const f = (x) => x.toFixed(3);
  const [p50a, p95a, p50b, p95b] = [pct(times[0], 0.5), pct(times[0], 0.95), pct(times[1], 0.5), pct(times[1], 0.95)];
  console.log(`requests: ${N} each way, sequential, kept-alive, one session`);
  console.log(`without --state: p50 ${f(p50a)} ms  p95 ${f(p95a)} ms`);
  console.log(`with --state:    p50 ${f(p50b)} ms  p95 ${f(p95b)} ms`);
  console.log(`added:           p50 ${f(p50b - p50a)} ms  p95 ${f(p95b - p95a)} ms`);
  console.log(`redis: hits ${st.hits}, misses ${st.misses}, timeouts ${st.timeouts}, writes ${st.writes}, errors ${st.errors}`);
  for (const a of agents) a.destroy();
} finally {
  await plain.stop();
  await shared.stop();
  await mock.close();
  redis.kill('SIGTERM');
}
