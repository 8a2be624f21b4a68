// streams_rss.mjs - memory per concurrent stream: the proxy's RSS with N streams open at once,
// against its RSS when idle, for N = 1, 100, 1000 (issue 4's figure). Each stream is a
// Claude-Code-sized request (tests/fixtures/claude-code/first-turn.json) whose answer the
// mock upstream trickles out slowly, so every stream is mid-flight when RSS is read; clients
// read everything as it comes (a reading client: the write queue stays near empty).
//
//   ulimit -n 65536; ANTHROXY_BIN=build/anthroxy node tests/bench/streams_rss.mjs [N ...]
//
// Connections open in bursts of 50 (a burst of 2,000 at once overflows the listen backlogs
// and the kernel resets some), and each answer lasts longer with more streams, so that all
// are still open when RSS is read. RSS/heap is the figure of issue 13 (aim: at most 1.5).
//
// Prints figures; passes or fails nothing.
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { startMock } from '../integration/mock-llama.mjs';
import { startProxy } from '../integration/helpers.mjs';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const counts = process.argv.slice(2).map(Number).filter((n) => n > 0);
if (counts.length === 0) counts.push(1, 100, 1000);
const body = JSON.parse(fs.readFileSync(path.join(HERE, '..', 'fixtures', 'claude-code', 'first-turn.json'), 'utf8'));
body.stream = true;
const text = JSON.stringify(body);

function rssKiB(pid) {
  const m = /VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) : NaN;
}

function heapInUse(port) {
  return new Promise((resolve) => {
    http.get({ host: '127.0.0.1', port, path: '/health' }, (res) => {
      let d = '';
      res.on('data', (c) => { d += c; });
      res.on('end', () => { try { resolve(JSON.parse(d).heap_in_use_bytes / 1024); } catch { resolve(NaN); } });
    }).on('error', () => resolve(NaN));
  });
}

const agent = new http.Agent({ keepAlive: true, maxSockets: Infinity });
const failures = {};
let lastError = '';
function openStream(port, onFirstDelta) {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port, path: '/v1/messages', method: 'POST', agent,
      headers: { 'content-type': 'application/json', 'x-session-id': 'bench' } }, (res) => {
      let seen = false;
      if (res.statusCode !== 200) {
        failures[res.statusCode] = (failures[res.statusCode] || 0) + 1;
        onFirstDelta();
      }
      res.setEncoding('utf8');
      res.on('data', (d) => {
        if (!seen && d.includes('content_block_delta')) { seen = true; onFirstDelta(); }
        if (!seen && d.includes('event: error')) lastError = d.slice(d.indexOf('event: error'), d.indexOf('event: error') + 300);
      });
      res.on('end', () => {
        if (!seen && res.statusCode === 200) { // an event: error instead of text
          failures['event: error'] = (failures['event: error'] || 0) + 1;
          onFirstDelta();
        }
        resolve();
      });
      res.on('error', reject);
    });
    req.on('error', (e) => { failures[e.code] = (failures[e.code] || 0) + 1; onFirstDelta(); resolve(); });
    req.end(text);
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const max = Math.max(...counts);
const mock = await startMock({ nCtx: 200000 });
// 120 pieces: 6 s each at up to 400 streams, 30 s at 2,000
mock.script(() => ({ text: 'x'.repeat(120), pieceSize: 1, chunkDelayMs: Math.max(50, max / 8) }));
const proxy = await startProxy({ upstream: mock.url, args: ['--max-upstream', String(max + 10), '--log-level', 'INFO'] });
const port = proxy.port;
await Promise.all([openStream(port, () => {})]); // warm up: session, policies, pools
const idle = rssKiB(proxy.proc.pid);
const idleHeap = await heapInUse(port);
console.log(`idle: RSS ${idle} KiB, heap in use ${idleHeap.toFixed(0)} KiB`);
console.log('streams   RSS KiB  RSS/stream KiB  heap/stream KiB  RSS/heap');
for (const n of counts) {
  let started = 0;
  let resolveAll;
  const allStarted = new Promise((r) => { resolveAll = r; });
  const done = [];
  for (let i = 0; i < n; i++) {
    done.push(openStream(port, () => { if (++started === n) resolveAll(); }));
    if (i % 50 === 49) await sleep(250);
  }
  await allStarted;
  await sleep(200); // a trim coalesced behind the last release runs within 100 ms
  const rss = rssKiB(proxy.proc.pid);
  const heap = await heapInUse(port);
  const rssPer = (rss - idle) / n;
  const heapPer = (heap - idleHeap) / n;
  console.log(`${String(n).padStart(7)} ${String(rss).padStart(9)} ${rssPer.toFixed(1).padStart(15)}` +
    ` ${heapPer.toFixed(1).padStart(16)} ${(rssPer / heapPer).toFixed(2).padStart(9)}` +
    (Object.keys(failures).length ? `  (failed: ${JSON.stringify(failures)} ${lastError})` : ''));
  await Promise.all(done);
}
const bad = proxy.log().split('\n').filter((l) => /WARN|ERROR/.test(l));
if (bad.length) console.log(`${bad.length} warnings in the proxy's log, first: ${bad.slice(0, 3).join('\n')}`);
await proxy.stop();
await mock.close();
process.exit(0);
