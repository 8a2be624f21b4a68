// metrics.test.mjs - GET /metrics: the figures match what was sent (after N requests the
// counters say N, the tokens are the mock's usage summed), promtool accepts the output, and the
// endpoint is behind the inbound key when keys are set (Prometheus' bearer token works).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { useProxy, request, userMsg, startProxy, waitUpstreamProbed, sdkClient, FIXTURES_DIR } from './helpers.mjs';
import { startMock } from './mock-llama.mjs';

const env = useProxy({ mock: { cached: 3, nCtx: 16384 } });
const sdkClientFor = (proxy, session) => sdkClient(proxy, { defaultHeaders: { 'x-claude-code-session-id': session } });

/** Parses the text format into [{ name, labels: {..}, value }]; asserts each line's shape. */
function parse(text) {
  const out = [];
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    assert.ok(m, `not a sample line: ${JSON.stringify(line)}`);
    const labels = {};
    if (m[2]) {
      for (const lm of m[2].matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) {
        labels[lm[1]] = lm[2].replace(/\\n/g, '\n').replace(/\\(.)/g, '$1');
      }
    }
    out.push({ name: m[1], labels, value: Number(m[3]) });
  }
  return out;
}

/** The sum of the samples of `name` whose labels include `want`. */
function sum(samples, name, want = {}) {
  return samples.filter((s) => s.name === name && Object.entries(want).every(([k, v]) => s.labels[k] === v))
    .reduce((a, s) => a + s.value, 0);
}

async function scrape(proxy, headers = {}) {
  const r = await request(proxy, { path: '/metrics', headers });
  assert.equal(r.status, 200, r.text);
  assert.match(r.headers['content-type'], /^text\/plain; version=0\.0\.4/);
  return r;
}

function promtool(text) {
  const r = spawnSync('promtool', ['check', 'metrics'], { input: text, encoding: 'utf8' });
  assert.ok(!r.error, `promtool missing (Debian package prometheus): ${r.error && r.error.message}`);
  return r;
}

test('after N requests the counters say N, and the tokens add up', env.wrap(async () => {
  const before = parse((await scrape(env.proxy)).text);
  const N = 5;
  let inTok = 0, outTok = 0;
  for (let i = 0; i < N; i++) {
    const params = { model: 'claude-sonnet-4-5', max_tokens: 64, messages: [userMsg(`metrics request ${i}`)] };
    const msg = i % 2 === 1 ? await env.client.messages.stream(params).finalMessage()
      : await env.client.messages.create(params);
    inTok += msg.usage.input_tokens + (msg.usage.cache_read_input_tokens || 0);
    outTok += msg.usage.output_tokens;
  }
  await env.client.messages.countTokens({ model: 'claude-sonnet-4-5', messages: [userMsg('count me')] });
  const after = parse((await scrape(env.proxy)).text);
  const ok = { route: 'messages', status: '200', model: 'claude-sonnet-4-5', upstream: 'default', arm: 'default' };
  assert.equal(sum(after, 'anthroxy_requests_total', ok) - sum(before, 'anthroxy_requests_total', ok), N);
  assert.equal(sum(after, 'anthroxy_requests_total', { route: 'count_tokens', status: '200' }) -
               sum(before, 'anthroxy_requests_total', { route: 'count_tokens', status: '200' }), 1);
  const dCount = (n, w = {}) => sum(after, n, w) - sum(before, n, w);
  assert.equal(dCount('anthroxy_request_duration_seconds_count', { route: 'messages' }), N);
  assert.equal(dCount('anthroxy_upstream_latency_seconds_count'), N);
  assert.equal(dCount('anthroxy_time_to_first_token_seconds_count'), 2, 'two of the five streamed');
  assert.equal(dCount('anthroxy_request_duration_seconds_bucket', { route: 'messages', le: '+Inf' }), N);
  // the SDK's input_tokens are the prompt minus the cached part, as Anthropic reports them
  assert.equal(dCount('anthroxy_input_tokens_total'), inTok);
  assert.equal(dCount('anthroxy_output_tokens_total'), outTok);
  assert.equal(dCount('anthroxy_cached_tokens_total'), 3 * N);
  assert.ok(sum(after, 'anthroxy_sessions') >= 1);
  assert.equal(sum(after, 'anthroxy_upstream_state', { upstream: 'default', state: 'ok' }), 1);
  assert.equal(sum(after, 'anthroxy_upstream_state', { upstream: 'default', state: 'down' }), 0);
  // the allocator's figure, as /health reads it (0 under ASan, whose allocator glibc cannot see)
  const heap = after.filter((x) => x.name === 'anthroxy_heap_in_use_bytes');
  assert.equal(heap.length, 1);
  const health = await request(env.proxy, { path: '/health' });
  assert.ok(Math.abs(heap[0].value - health.json.heap_in_use_bytes) < 16 << 20,
    `${heap[0].value} vs /health's ${health.json.heap_in_use_bytes}`);
  assert.equal(sum(after, 'anthroxy_open_streams'), 0);
  assert.equal(sum(after, 'anthroxy_policy_generation'), 1);
  // the scrape itself counts as a request of route "metrics"
  assert.equal(dCount('anthroxy_requests_total', { route: 'metrics', status: '200' }), 1);
}));

test('errors are counted by status, and a client-chosen model name cannot break the format', env.wrap(async () => {
  const weird = 'evil"model\\\nname\u0001\u00e9';
  const r = await request(env.proxy, {
    method: 'POST', path: '/v1/messages', body: { model: weird, max_tokens: 5, messages: [] },
  });
  assert.equal(r.status, 400);
  const res = await scrape(env.proxy);
  const s = parse(res.text);
  const hit = s.find((x) => x.name === 'anthroxy_requests_total' && x.labels.status === '400' &&
                            x.labels.route === 'messages');
  assert.ok(hit, 'the 400 is counted');
  assert.equal(hit.labels.model, 'evil"model\\\nname?\u00e9');
  const pt = promtool(res.text);
  assert.equal(pt.status, 0, `promtool check metrics:\n${pt.stdout}${pt.stderr}`);
}));

test('promtool accepts the whole output', env.wrap(async () => {
  const res = await scrape(env.proxy);
  const pt = promtool(res.text);
  assert.equal(pt.status, 0, `promtool check metrics:\n${pt.stdout}${pt.stderr}`);
  for (const fam of ['anthroxy_requests_total', 'anthroxy_request_duration_seconds', 'anthroxy_time_to_first_token_seconds',
    'anthroxy_upstream_latency_seconds', 'anthroxy_input_tokens_total', 'anthroxy_output_tokens_total',
    'anthroxy_cached_tokens_total', 'anthroxy_prunes_total', 'anthroxy_context_overflows_total',
    'anthroxy_retries_total', 'anthroxy_failovers_total', 'anthroxy_policy_errors_total',
    'anthroxy_policy_budget_hits_total', 'anthroxy_open_connections', 'anthroxy_open_streams',
    'anthroxy_sessions', 'anthroxy_heap_in_use_bytes', 'anthroxy_upstream_state']) {
    assert.match(res.text, new RegExp(`^# TYPE ${fam} `, 'm'), fam);
  }
}));

test('with inbound keys, /metrics needs one; a bearer token works', async () => {
  const mock = await startMock({});
  const proxy = await startProxy({ upstream: mock.base, args: ['--api-key', 'scrape-key-123'] });
  try {
    await waitUpstreamProbed(proxy);
    const no = await request(proxy, { path: '/metrics' });
    assert.equal(no.status, 401);
    assert.equal(no.json.error.type, 'authentication_error');
    const bad = await request(proxy, { path: '/metrics', headers: { authorization: 'Bearer wrong' } });
    assert.equal(bad.status, 401);
    const yes = await scrape(proxy, { authorization: 'Bearer scrape-key-123' });
    const s = parse(yes.text);
    assert.equal(sum(s, 'anthroxy_requests_total', { route: 'metrics', status: '401' }), 2);
  } finally {
    const exit = await proxy.stop();
    await mock.close();
    assert.equal(exit.code, 0);
  }
});

test('an overflow the upstream reports is counted, with its 400', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'anthroxy-nop-'));
  fs.writeFileSync(path.join(dir, 'none.lua'), 'return {}\n');
  const mock = await startMock({ nCtx: 8192 });
  const proxy = await startProxy({ upstream: mock.base, args: ['--policies', path.join(dir, 'none.lua')] });
  try {
    await waitUpstreamProbed(proxy);
    const firstTurn = JSON.parse(fs.readFileSync(path.join(FIXTURES_DIR, 'claude-code', 'first-turn.json'), 'utf8'));
    const r = await request(proxy, { method: 'POST', path: '/v1/messages', body: { ...firstTurn, stream: false } });
    assert.equal(r.status, 400);
    assert.match(r.json.error.message, /^prompt is too long/);
    const s = parse((await scrape(proxy)).text);
    assert.equal(sum(s, 'anthroxy_context_overflows_total'), 1);
    assert.equal(sum(s, 'anthroxy_requests_total', { route: 'messages', status: '400', model: firstTurn.model }), 1);
    assert.equal(sum(s, 'anthroxy_prunes_total'), 0, 'no pruning policy in this chain');
    assert.equal(sum(s, 'anthroxy_upstream_latency_seconds_count'), 1, 'it did reach the upstream');
  } finally {
    const exit = await proxy.stop();
    await mock.close();
    fs.rmSync(dir, { recursive: true, force: true });
    assert.equal(exit.code, 0);
  }
});

test('a request the pruning policy cut is counted once', env.wrap(async () => {
  const before = parse((await scrape(env.proxy)).text);
  const messages = [];
  for (let i = 0; i < 16; i++) {
    messages.push(userMsg(`question ${i}: ` + `word${i} `.repeat(900)));
    messages.push({ role: 'assistant', content: `answer ${i}` });
  }
  messages.push(userMsg('and now?'));
  const client = sdkClientFor(env.proxy, 'metrics-prune-session');
  const msg = await client.messages.create({ model: 'claude-sonnet-4-5', max_tokens: 64, messages });
  assert.equal(msg.type, 'message');
  const sent = env.mock.lastChat().body.messages.length;
  assert.ok(sent < messages.length, `pruned: ${sent} of ${messages.length} messages sent`);
  const after = parse((await scrape(env.proxy)).text);
  assert.equal(sum(after, 'anthroxy_prunes_total') - sum(before, 'anthroxy_prunes_total'), 1);
}));
