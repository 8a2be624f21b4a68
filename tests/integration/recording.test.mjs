// recording.test.mjs - `--record DIR`: a multi-turn Claude Code session through the proxy
// against the mock, with a forwarder in front that keeps the client's bytes. The recording
// holds one line per exchange, no secret, costs about the last request (not the sum of all),
// and rebuilds every client request and every upstream request byte for byte.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { startProxy, waitUpstreamProbed, startRecorder, request, until, sleep } from './helpers.mjs';
import { startMock } from './mock-llama.mjs';
import { runClaude, scriptEdits, writeTodo, readRecordings, fnv1a } from './record-helpers.mjs';

const SECRET = 'sk-ant-recording-test-0123456789';
const tmpRoot = fs.mkdtempSync(path.join(os.tmpdir(), 'anthroxy-rec-'));
const recDir = path.join(tmpRoot, 'rec');
let mock;
let proxy;
let fwd;

before(async () => {
  mock = await startMock({ nCtx: 200000, prefixCache: true });
  proxy = await startProxy({ upstream: mock.base, args: ['--record', recDir] });
  await waitUpstreamProbed(proxy);
  fwd = await startRecorder(proxy);
});

after(async () => {
  if (fwd) await fwd.close();
  if (proxy) {
    const exit = await proxy.stop();
    assert.equal(exit.code, 0, `graceful exit:\n${proxy.tail()}`);
  }
  if (mock) await mock.close();
  fs.rmSync(tmpRoot, { recursive: true, force: true });
});

test('a Claude Code session is recorded compactly and rebuilds byte for byte', { timeout: 240000 }, async () => {
  const cwd = fs.mkdtempSync(path.join(tmpRoot, 'work-'));
  const file = path.join(cwd, 'todo.txt');
  const nEdits = 4;
  writeTodo(file, nEdits);
  const seen = scriptEdits(mock, 'todo.txt', file, nEdits);
  const r = await runClaude('In todo.txt mark every line done, one edit at a time.', {
    cwd, tmpRoot, baseUrl: fwd.url, apiKey: SECRET,
  });
  assert.equal(r.code, 0, `claude: ${r.out.slice(-1500)}\n${r.err.slice(-1500)}\n${proxy.tail(30)}`);
  assert.equal(r.json?.result, `Done: ${nEdits} edits.`);
  assert.equal(seen.length, nEdits * 2 + 1, 'a read and an edit per line, then the answer');

  const sent = fwd.requests.filter((q) => q.method === 'POST' && /^\/v1\/messages(\?|$)/.test(q.path));
  // The line is written once the exchange is over: wait for the last one to reach the disk.
  await until(() => fs.existsSync(recDir) &&
    readRecordings(recDir).reduce((n, f) => n + f.records.length, 0) >= sent.length, 5000, 50);
  const files = readRecordings(recDir);
  const records = files.flatMap((f) => f.records);

  // One line per exchange, in the order the client sent them, each naming its request.
  assert.equal(records.length, sent.length, 'one record per /v1/messages exchange');
  const main = files.find((f) => f.records.some((x) => x.body.toString('utf8').includes('todo.txt')));
  assert.ok(main, 'the session file');
  assert.equal(files.length, 1, 'Claude Code names one session for all its requests');
  for (const x of records) {
    assert.match(x.request_id, /^req_/);
    assert.equal(x.arm, null);
    assert.ok(x.generation >= 1);
    assert.equal(x.context_window, 200000);
    assert.equal(x.upstream_status, 200);
    assert.equal(x.error, null);
    assert.ok(x.ttfb_ms >= 0 && x.total_ms >= x.ttfb_ms, `timings ${x.ttfb_ms} ${x.total_ms}`);
    assert.ok(x.usage && x.usage.prompt_tokens > 0, 'usage recorded');
    assert.ok(x.timings && typeof x.timings.prompt_ms === 'number', "llama-server's timings kept");
    assert.equal(x.response.type, 'message', 'the answer as the client got it');
  }
  // The mock's prompt cache reports cached tokens once the conversation grows.
  assert.ok(main.records.some((x) => x.usage.cached_tokens > 0), 'cached_tokens recorded');
  const toolAnswers = main.records.filter((x) => x.response.stop_reason === 'tool_use');
  assert.equal(toolAnswers.length, nEdits * 2, 'streamed tool calls assembled into the message');
  assert.ok(toolAnswers.every((x) => x.response.content.some((b) => b.type === 'tool_use' && b.input.file_path === file)));

  // No secret anywhere, headers otherwise kept.
  for (const f of files) {
    assert.ok(!f.text.includes(SECRET), 'the API key is not recorded');
    for (const x of f.records) {
      assert.equal(x.headers['x-api-key'], undefined);
      assert.equal(x.headers.authorization, undefined);
      assert.match(x.headers['user-agent'], /claude/i);
    }
  }

  // Every client request rebuilt byte for byte, in order.
  const rebuilt = records.map((x) => x.body);
  assert.ok(rebuilt.every(Boolean), 'every delta applies');
  assert.deepEqual(rebuilt.map((b) => b.toString('utf8')), sent.map((q) => q.raw), 'client requests byte for byte');
  // Every upstream request exactly as the mock received it.
  const upstream = mock.chats().map((q) => q.raw);
  assert.deepEqual(records.map((x) => x.upstreamBody.toString('utf8')), upstream, 'upstream requests byte for byte');

  // Deltas, not copies: the session costs about its last request, far below the sum of all.
  const mainSent = sent.filter((q) => q.raw.includes('todo.txt'));
  const last = Buffer.byteLength(mainSent[mainSent.length - 1].raw);
  const sum = sent.reduce((n, q) => n + Buffer.byteLength(q.raw), 0);
  const lastUp = Buffer.byteLength(upstream[upstream.length - 1]);
  const size = files.reduce((n, f) => n + f.size, 0);
  console.log(`recording: ${records.length} exchanges, ${size} bytes; last request ${last} bytes ` +
    `(upstream ${lastUp}), all requests ${sum} bytes: ${(size / last).toFixed(2)}x the last, ` +
    `${(100 * size / sum).toFixed(1)}% of the sum`);
  assert.ok(main.records.filter((x) => x.request.snapshot !== undefined).length <= 2, 'deltas after the first turns');
  assert.ok(size < 1.5 * (last + lastUp) && size < 0.5 * sum,
    `recording ${size} bytes vs last request ${last} + ${lastUp} and sum ${sum}`);
});

test('count_tokens is not recorded and a bad request is, with its error', async () => {
  const before = readRecordings(recDir).reduce((n, f) => n + f.records.length, 0);
  const headers = { 'x-session-id': 'bad-session', 'x-api-key': SECRET };
  let res = await request(proxy, { method: 'POST', path: '/v1/messages/count_tokens', headers,
    body: { model: 'claude-x', messages: [{ role: 'user', content: 'hi' }] } });
  assert.equal(res.status, 200);
  res = await request(proxy, { method: 'POST', path: '/v1/messages', headers,
    body: { model: 'claude-x', max_tokens: 10, messages: [{ role: 'user', content: [{ type: 'tool_result' }] }] } });
  assert.equal(res.status, 400);
  const rec = await until(() => readRecordings(recDir).flatMap((f) => f.records).find((x) => x.session === 'bad-session'), 3000, 20);
  assert.ok(rec, 'the failed exchange is recorded');
  assert.equal(rec.error.status, 400);
  assert.equal(rec.error.type, 'invalid_request_error');
  assert.equal(rec.upstream_request, null, 'never sent upstream');
  assert.equal(readRecordings(recDir).reduce((n, f) => n + f.records.length, 0), before + 1, 'count_tokens left no line');
});

/** The file name record.c gives a session: its safe characters and a hash of the key. */
function fileName(key) {
  const safe = key.replace(/[^A-Za-z0-9._-]/g, '_').slice(0, 99);
  const h = BigInt('0x' + fnv1a(Buffer.from(key))) & 0xffffffffn;
  return `${safe}-${h.toString(16).padStart(8, '0')}.jsonl`;
}

const ask = (p, session, text, headers = {}) => request(p, {
  method: 'POST', path: '/v1/messages', headers: { 'x-session-id': session, ...headers },
  body: { model: 'claude-x', max_tokens: 16, messages: [{ role: 'user', content: text }] },
});

test('caps: a session stops at the per-file cap, the oldest sessions go under the directory cap', async () => {
  const dir = path.join(tmpRoot, 'caps');
  fs.mkdirSync(dir);
  // An old session from an earlier run, the first to go.
  fs.writeFileSync(path.join(dir, 'old-00000000.jsonl'), JSON.stringify({ v: 1, pad: 'x'.repeat(6000) }) + '\n');
  fs.utimesSync(path.join(dir, 'old-00000000.jsonl'), new Date(2020, 0, 1), new Date(2020, 0, 1));
  const p = await startProxy({ upstream: mock.base, args: ['--record', dir, '--record-max-file-bytes', '12000', '--record-max-dir-bytes', '20000'] });
  try {
    await waitUpstreamProbed(p);
    // Unrelated texts, so that each line is a snapshot of a few KB.
    const big = () => crypto.randomBytes(1000).toString('hex');
    for (let i = 0; i < 6; i++) assert.equal((await ask(p, 'capped', big())).status, 200, 'requests go on');
    await until(() => fs.existsSync(path.join(dir, fileName('capped'))) &&
      readRecordings(dir).find((f) => f.file.endsWith(fileName('capped')))?.records.length >= 2, 3000, 20);
    await sleep(200);
    const capped = fs.statSync(path.join(dir, fileName('capped'))).size;
    assert.ok(capped <= 12000, `per-file cap: ${capped} bytes`);
    const lines = readRecordings(dir).find((f) => f.file.endsWith(fileName('capped'))).records;
    assert.ok(lines.length >= 2 && lines.length < 6, `some exchanges recorded, the later ones not: ${lines.length}`);
    assert.ok(lines.every((x) => x.body), 'what is there is whole');
    assert.match(p.log(), /reached the per-file cap/);
    for (let i = 0; i < 4; i++) assert.equal((await ask(p, `other-${i}`, big())).status, 200);
    await until(() => !fs.existsSync(path.join(dir, 'old-00000000.jsonl')), 3000, 20);
    assert.ok(!fs.existsSync(path.join(dir, 'old-00000000.jsonl')), 'the oldest session removed first');
    await sleep(200);
    const total = fs.readdirSync(dir).reduce((n, f) => n + fs.statSync(path.join(dir, f)).size, 0);
    assert.ok(total <= 20000, `directory cap: ${total} bytes`);
    assert.match(p.log(), /removed old-00000000\.jsonl/);
  } finally {
    assert.equal((await p.stop()).code, 0);
  }
});

test('a file that cannot be written loses the recording, never the request', async () => {
  const dir = path.join(tmpRoot, 'broken');
  fs.mkdirSync(dir);
  fs.mkdirSync(path.join(dir, fileName('unwritable'))); // open() fails: EISDIR, as a full disk would fail write()
  const p = await startProxy({ upstream: mock.base, args: ['--record', dir] });
  try {
    await waitUpstreamProbed(p);
    for (let i = 0; i < 3; i++) {
      const r = await ask(p, 'unwritable', `hello ${i}`);
      assert.equal(r.status, 200);
      assert.equal(r.json.type, 'message');
    }
    await until(() => /record: open .*unwritable/.test(p.log()), 3000, 20);
    assert.match(p.log(), /this session's recording loses lines/);
    // Another session records normally.
    assert.equal((await ask(p, 'fine', 'hi')).status, 200);
    const fine = () => readRecordings(dir).find((f) => f.file.endsWith(fileName('fine')))?.records.length;
    await until(() => fine() >= 1, 3000, 20); // the file is opened before its line is written
    assert.equal(fine(), 1);
  } finally {
    assert.equal((await p.stop()).code, 0);
  }
});

test('in an experiment each line names its arm', async () => {
  const dir = path.join(tmpRoot, 'arms');
  const exp = path.join(tmpRoot, 'exp.lua');
  fs.writeFileSync(exp, `return { name = "rec-test", arms = {
    { name = "a", weight = 1, chain = { { "max_tokens", floor = 1024 } } },
    { name = "b", weight = 1, chain = { { "max_tokens", floor = 2048 } } } } }\n`);
  const p = await startProxy({ upstream: mock.base, args: ['--record', dir, '--experiment', exp] });
  try {
    await waitUpstreamProbed(p);
    const r = await request(p, {
      method: 'POST', path: '/v1/messages', headers: { 'x-session-id': 'arm-session', 'x-anthroxy-arm': 'b' },
      body: { model: 'claude-x', max_tokens: 16, messages: [{ role: 'user', content: 'hi' }],
        tools: [{ name: 'Read', description: 'Read a file', input_schema: { type: 'object', properties: { p: { type: 'string' } } } }] },
    });
    assert.equal(r.status, 200, r.text);
    const rec = await until(() => fs.existsSync(dir) && readRecordings(dir).flatMap((f) => f.records)[0], 3000, 20);
    assert.equal(rec.arm, 'b');
    assert.ok(rec.policy_changes.some((c) => c.policy === 'max_tokens' && c.hook === 'on_request' &&
      c.changes.fields.includes('max_tokens')), JSON.stringify(rec.policy_changes));
  } finally {
    assert.equal((await p.stop()).code, 0);
  }
});
