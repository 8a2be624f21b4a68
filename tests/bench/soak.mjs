// soak.mjs - N minutes of mixed load against the mock llama-server, sampling the proxy's RSS
// every minute: streams, non-streaming requests, upstream errors, client aborts and SIGHUP
// reloads, at a fixed concurrency. Prints each sample and the drift (the largest sample after
// the warm-up against the first one after it, in %). Not run by ctest.
//
//   ANTHROXY_BIN=build/anthroxy node tests/bench/soak.mjs [minutes=60] [concurrency=16]
//   (run from anywhere; it needs tests/integration/node_modules for the mock's helpers)
import fs from 'node:fs';
import http from 'node:http';
import { startMock } from '../integration/mock-llama.mjs';
import { startProxy, waitUpstreamProbed } from '../integration/helpers.mjs';

const minutes = Number(process.argv[2] || 60);
const conc = Number(process.argv[3] || 16);
const SAMPLE_MS = Number(process.env.SOAK_SAMPLE_MS || 60000);
const WARMUP = 1; // samples left out of the drift

const mock = await startMock({});
mock.script((q) => {
  const t = q.lastText;
  if (t.startsWith('ERR')) return { status: 500, body: { error: { code: 500, message: 'soak', type: 'server_error' } } };
  if (t.startsWith('LONG')) return { text: 'lorem ipsum dolor sit amet '.repeat(80), pieceSize: 12 };
  return { text: 'a short answer for the soak' };
});
// info: the start-up line helpers wait for is INFO
const proxy = await startProxy({ upstream: mock.base, args: ['--log-level', 'info'] });
await waitUpstreamProbed(proxy);

function rssKb(pid) {
  const m = /VmRSS:\s+(\d+)/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  return Number(m[1]);
}

const counts = { ok: 0, err: 0, aborted: 0, failed: 0, reloads: 0 };
const agent = new http.Agent({ keepAlive: true, maxSockets: conc });

function one(i) {
  const kind = i % 10; // 0-4 streams, 5-7 non-streaming, 8 upstream error, 9 client abort
  const stream = kind < 5 || kind === 9;
  const text = kind === 8 ? `ERR ${i}` : (kind % 2 ? `LONG ${i}` : `short ${i}`);
  const data = JSON.stringify({ model: 'claude-sonnet-4-5', max_tokens: 2000, stream,
    messages: [{ role: 'user', content: text }] });
  return new Promise((resolve) => {
    const req = http.request({ host: '127.0.0.1', port: proxy.port, method: 'POST', path: '/v1/messages', agent,
      headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(data) } }, (res) => {
      let n = 0;
      res.on('data', (c) => {
        n += c.length;
        if (kind === 9 && n > 200) { req.destroy(); counts.aborted++; resolve(); }
      });
      res.on('end', () => { if (res.statusCode === 200) counts.ok++; else counts.err++; resolve(); });
      res.on('error', () => resolve());
    });
    req.on('error', () => { if (kind !== 9) counts.failed++; resolve(); });
    req.end(data);
  });
}

const end = Date.now() + minutes * 60000;
let next = 0;
async function worker() {
  while (Date.now() < end) await one(next++);
}
const reload = setInterval(() => { proxy.proc.kill('SIGHUP'); counts.reloads++; }, 15000);
const samples = [];
const sample = () => {
  const kb = rssKb(proxy.proc.pid);
  samples.push(kb);
  mock.reset(); // the mock's record of requests would grow for ever
  console.log(`t=${String(samples.length - 1).padStart(3)} min  rss ${(kb / 1024).toFixed(1)} MB  requests ${next}  ` +
    `ok ${counts.ok} err ${counts.err} aborted ${counts.aborted} failed ${counts.failed} reloads ${counts.reloads}`);
};
sample();
const timer = setInterval(sample, SAMPLE_MS);
await Promise.all(Array.from({ length: conc }, worker));
clearInterval(timer);
clearInterval(reload);
sample();
const after = samples.slice(WARMUP);
const base = after[0];
const max = Math.max(...after);
console.log(`drift: max ${(max / 1024).toFixed(1)} MB vs ${(base / 1024).toFixed(1)} MB after warm-up: ` +
  `${(((max - base) / base) * 100).toFixed(1)} %  (${samples.length} samples, ${next} requests)`);
agent.destroy();
const exit = await proxy.stop();
await mock.close();
if (exit.code !== 0 || counts.failed > 0) {
  console.error(`soak: proxy exit ${JSON.stringify(exit)}, ${counts.failed} failed requests`);
  process.exit(1);
}
