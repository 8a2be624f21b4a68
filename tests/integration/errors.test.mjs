// errors.test.mjs - bad input and upstream failures answer in Anthropic's error shape with the
// right status, and the proxy keeps serving: every case is followed by a good request.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import fs from 'node:fs';
import path from 'node:path';
import { useProxy, startProxy, request, assertAnthropicError, until, FIXTURES_DIR } from './helpers.mjs';

const env = useProxy({ name: 'errors', mock: { nCtx: 32768 } });
const small = useProxy({ name: 'errors-small-body', args: ['--max-body-bytes', '2048'] });

async function freePort() {
  const s = net.createServer();
  await new Promise((r) => s.listen(0, '127.0.0.1', r));
  const { port } = s.address();
  await new Promise((r) => s.close(r));
  return port;
}
const MODEL = 'claude-sonnet-4-5';
const good = (text = 'still fine?') => ({ model: MODEL, max_tokens: 50, messages: [{ role: 'user', content: text }] });

async function post(e, body, headers = {}) {
  return request(e.proxy, { method: 'POST', path: '/v1/messages', body, headers });
}

/** A good request right after: the proxy still serves. */
async function stillServes(e = env) {
  e.on('still fine?', { text: 'yes' });
  const r = await post(e, good());
  assert.equal(r.status, 200, `good request after the error: ${r.text}`);
  assert.equal(r.json.content[0].text, 'yes');
}

test('invalid JSON -> 400 invalid_request_error', env.wrap(async () => {
  const r = await post(env, '{"model": "x", "messages": [');
  assertAnthropicError(r, 400, 'invalid_request_error');
  await stillServes();
}));

test('trailing garbage after the JSON -> 400', env.wrap(async () => {
  const r = await post(env, JSON.stringify(good()) + ' garbage');
  assertAnthropicError(r, 400, 'invalid_request_error');
  await stillServes();
}));

test('missing or empty messages -> 400 naming messages', env.wrap(async () => {
  assertAnthropicError(await post(env, { model: MODEL, max_tokens: 10 }), 400, 'invalid_request_error', /messages/);
  assertAnthropicError(await post(env, { model: MODEL, max_tokens: 10, messages: [] }), 400, 'invalid_request_error', /messages/);
  await stillServes();
}));

test('wrong field types -> 400 naming the field', env.wrap(async () => {
  const cases = [
    [{ ...good(), max_tokens: 'many' }, /max_tokens/],
    [{ ...good(), messages: 'hi' }, /messages/],
    [{ ...good(), messages: [{ role: 42, content: 'x' }] }, /role/],
    [{ ...good(), messages: [{ role: 'user', content: 7 }] }, /content/],
    [{ ...good(), tools: {} }, /tools/],
    [{ ...good(), stream: 'yes' }, /stream/],
    [{ ...good(), temperature: 'hot' }, /temperature/],
  ];
  for (const [body, re] of cases) {
    assertAnthropicError(await post(env, body), 400, 'invalid_request_error', re);
  }
  await stillServes();
}));

test('unknown fields are tolerated', env.wrap(async () => {
  env.on('unknown fields', { text: 'tolerated' });
  const r = await post(env, {
    ...good('unknown fields'), context_management: { edits: [] }, output_config: { effort: 'high' }, some_future_field: { x: 1 },
  });
  assert.equal(r.status, 200, r.text);
  assert.equal(r.json.content[0].text, 'tolerated');
}));

test('body over --max-body-bytes -> 413 request_too_large', small.wrap(async () => {
  const r = await post(small, { ...good(), messages: [{ role: 'user', content: 'x'.repeat(5000) }] });
  assertAnthropicError(r, 413, 'request_too_large');
  small.on('still fine?', { text: 'yes' });
  const ok = await post(small, good());
  assert.equal(ok.status, 200, ok.text);
}));

const UPSTREAM_CASES = [
  [400, { error: { code: 400, message: 'bad thing', type: 'invalid_request_error' } }, 400, 'invalid_request_error'],
  [401, { error: { code: 401, message: 'Invalid API Key', type: 'authentication_error' } }, 401, 'authentication_error'],
  [403, { error: { code: 403, message: 'forbidden', type: 'permission_error' } }, 403, 'permission_error'],
  [404, { error: { message: 'File Not Found', type: 'not_found_error', code: 404 } }, 404, 'not_found_error'],
  [429, { error: { code: 429, message: 'slow down', type: 'rate_limit_error' } }, 429, 'rate_limit_error'],
  [500, { error: { code: 500, message: 'boom', type: 'server_error' } }, null, 'api_error'],
  // A 503 (llama-server loading) may be reported as overloaded: both make clients retry.
  [503, { error: { code: 503, message: 'Loading model', type: 'unavailable_error' } }, null, /^(api_error|overloaded_error)$/],
];

for (const [status, body, want, type] of UPSTREAM_CASES) {
  test(`upstream ${status} -> ${want ?? '5xx'} ${String(type)}`, env.wrap(async () => {
    const phrase = `upstream says ${status}`;
    env.on(phrase, { status, body, headers: status === 429 ? { 'retry-after': '7' } : {} });
    for (const stream of [false, true]) {
      const r = await post(env, { ...good(phrase), stream });
      if (want) assertAnthropicError(r, want, type);
      else {
        assert.ok(r.status >= 500 && r.status <= 599, `status ${r.status}`);
        if (type instanceof RegExp) {
          assertAnthropicError(r, r.status, r.json?.error?.type);
          assert.match(r.json.error.type, type);
        } else {
          assertAnthropicError(r, r.status, type);
        }
      }
      if (status === 429) assert.equal(r.headers['retry-after'], '7', 'retry-after passed on');
    }
    await stillServes();
  }));
}

test('context overflow -> 400 "prompt is too long: N tokens > M maximum"', env.wrap(async () => {
  // One user message alone over the window: nothing can be pruned away.
  const text = 'overflow '.repeat(16000);
  for (const stream of [false, true]) {
    const t0 = Date.now();
    const r = await post(env, { ...good(text), stream });
    assertAnthropicError(r, 400, 'invalid_request_error', /^prompt is too long: \d+ tokens > \d+ maximum/);
    const [, n, m] = /prompt is too long: (\d+) tokens > (\d+) maximum/.exec(r.json.error.message);
    assert.equal(Number(m), 32768, 'the window');
    assert.ok(Number(n) > 32768);
    assert.ok(Date.now() - t0 < 2000, 'answered before the first-byte hold ends');
  }
  await stillServes();
}));

test('llama-server\'s malformed-JSON 500 -> 400 invalid_request_error', env.wrap(async () => {
  const bad = JSON.parse(fs.readFileSync(path.join(FIXTURES_DIR, 'llama-server', 'error_bad_json.json'), 'utf8'));
  env.on('upstream cannot parse', { status: 500, body: bad.body });
  const r = await post(env, good('upstream cannot parse'));
  assertAnthropicError(r, 400, 'invalid_request_error');
  await stillServes();
}));

// docs/translation.md, "Answers": unparsable arguments are never a silent {}.
const ADD_TOOL = [{ name: 'add', input_schema: { type: 'object', properties: { a: { type: 'integer' } } } }];

test('tool call arguments that are not JSON: a text block naming the call, end_turn', env.wrap(async () => {
  const raw = '{"a": 1, "b": ';
  env.on('broken arguments', { toolCalls: [{ name: 'add', arguments: raw }], finish: 'tool_calls' });
  const r = await post(env, { ...good('broken arguments'), tools: ADD_TOOL });
  assert.equal(r.status, 200, r.text);
  assert.deepEqual(r.json.content, [{ type: 'text', text: `Tool call to add was not made: its arguments are not valid JSON:\n${raw}` }], r.text);
  assert.equal(r.json.stop_reason, 'end_turn', r.text);
  await stillServes();
}));

test('tool call arguments that are not JSON beside a valid call: the valid one stays, tool_use', env.wrap(async () => {
  env.on('one broken of two', {
    toolCalls: [{ name: 'add', arguments: { a: 1 }, id: 'goodcall' }, { name: 'add', arguments: '{"a": ' }], finish: 'tool_calls',
  });
  const r = await post(env, { ...good('one broken of two'), tools: ADD_TOOL });
  assert.equal(r.status, 200, r.text);
  const types = r.json.content.map((b) => b.type).sort();
  assert.deepEqual(types, ['text', 'tool_use'], r.text);
  const tu = r.json.content.find((b) => b.type === 'tool_use');
  assert.deepEqual([tu.id, tu.name, tu.input], ['toolu_goodcall', 'add', { a: 1 }], r.text);
  assert.match(r.json.content.find((b) => b.type === 'text').text, /^Tool call to add was not made: its arguments are not valid JSON:\n\{"a": $/);
  assert.equal(r.json.stop_reason, 'tool_use', r.text);
}));

test('tool call arguments cut by max_tokens: the longest well-formed prefix, stop_reason max_tokens', env.wrap(async () => {
  for (const [phrase, raw, input] of [
    ['cut after a value', '{"a":2,"b"', { a: 2 }],
    // The prefix ends after an opening bracket or a complete value (anthroxy_translate.h).
    ['cut inside the first key', '{"a', {}],
    ['no well-formed prefix', 'nul', { _raw_arguments: 'nul' }],
  ]) {
    env.on(phrase, { toolCalls: [{ name: 'add', arguments: raw }], finish: 'length' });
    const r = await post(env, { ...good(phrase), tools: ADD_TOOL });
    assert.equal(r.status, 200, r.text);
    const tu = r.json.content.filter((b) => b.type === 'tool_use');
    assert.equal(tu.length, 1, `${phrase}: ${r.text}`);
    assert.deepEqual(tu[0].input, input, `${phrase}: ${r.text}`);
    assert.equal(r.json.stop_reason, 'max_tokens', `${phrase}: ${r.text}`);
  }
  await stillServes();
}));

test('upstream unreachable -> 529 overloaded_error', env.wrap(async () => {
  const port = await freePort();
  const p = await startProxy({
    upstream: `http://127.0.0.1:${port}/v1`,
    args: ['--connect-retries', '1', '--retry-delay', '0.05', '--connect-timeout', '1', '--upstream-model', 'tiny',
      '--context-window', '8192'],
  });
  try {
    for (const stream of [false, true]) {
      const r = await request(p, { method: 'POST', path: '/v1/messages', body: { ...good(), stream } });
      assertAnthropicError(r, 529, 'overloaded_error');
    }
    // Probes have run (they failed): /health reports the upstream down, the proxy degraded.
    const h = await request(p, { path: '/health' });
    const b = JSON.parse(h.text);
    assert.equal(b.status, 'degraded', h.text.slice(0, 400));
    assert.equal(b.proxy, 'ok');
    assert.equal(b.upstream.state, 'down', h.text.slice(0, 400));
    assert.deepEqual(b.context_window, { value: 8192, source: 'config' });
  } finally {
    const { code } = await p.stop();
    assert.equal(code, 0, p.tail());
  }
  await stillServes();
}));

// A load balancer or `curl -f` reads the status code, not the body: a degraded proxy whose
// upstream is down says so with 503.
test('GET /health answers 503 while the upstream is down', async () => {
  const port = await freePort();
  const p = await startProxy({ upstream: `http://127.0.0.1:${port}/v1`, args: ['--upstream-model', 'tiny'] });
  try {
    const h = await until(async () => {
      const r = await request(p, { path: '/health' });
      return r.json?.upstream?.state === 'down' && r;
    }, 3000, 50);
    assert.ok(h, 'the probe found the upstream down');
    assert.equal(JSON.parse(h.text).status, 'degraded');
    assert.equal(h.status, 503, h.text.slice(0, 300));
  } finally {
    const { code } = await p.stop();
    assert.equal(code, 0, p.tail());
  }
});
