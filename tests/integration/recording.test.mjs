// recording.test.mjs - `--record DIR`: a multi-turn Claude Code session through the proxy
// against the mock, with a forwarder in front that keeps the client's bytes. The recording
// holds one line per exchange, no secret, costs about the last request (not the sum of all),
// and rebuilds every client request and every upstream request byte for byte.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { startProxy, waitUpstreamProbed, startRecorder, request, until } from './helpers.mjs';
import { startMock } from './mock-llama.mjs';
import { runClaude, scriptEdits, writeTodo, readRecordings } from './record-helpers.mjs';

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
