// logjson.test.mjs - --log-format json: every line anthroxy writes is one JSON object, also when
// a client puts a newline, quotes, control bytes or ill-formed UTF-8 in its model name; the
// summary line carries the same fields as the text one; the request id goes upstream as
// x-request-id and back to the client as request-id, and joins the two logs.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startProxy, waitUpstreamProbed, request, sdkClient, userMsg, until } from './helpers.mjs';
import { startMock } from './mock-llama.mjs';

const SUMMARY_FIELDS = ['model', 'upstream_model', 'session', 'messages', 'tools', 'stream', 'status',
  'first_byte_ms', 'total_ms', 'est_prompt', 'prompt', 'cached', 'output'];

function jsonLines(log) {
  const lines = log.split('\n').filter((l) => l !== '');
  return lines.map((l) => {
    let o;
    assert.doesNotThrow(() => { o = JSON.parse(l); }, `not JSON: ${l}`);
    assert.equal(typeof o, 'object');
    assert.match(o.time, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
    assert.ok(['DEBUG', 'INFO', 'WARN', 'ERROR'].includes(o.level), l);
    assert.equal(typeof o.msg, 'string');
    return o;
  });
}

test('every line parses; the summary has its fields; the request id joins both sides', async () => {
  const mock = await startMock({});
  const proxy = await startProxy({ upstream: mock.base, args: ['--log-format', 'json'] });
  try {
    await waitUpstreamProbed(proxy);
    const client = sdkClient(proxy);
    const { data: msg, response } = await client.messages.create({
      model: 'claude-sonnet-4-5', max_tokens: 16, messages: [userMsg('json log')],
    }).withResponse();
    assert.equal(msg.type, 'message');
    const rid = response.headers.get('request-id');
    assert.match(rid, /^req_[A-Za-z0-9]{24}$/);
    assert.equal(mock.lastChat().headers['x-request-id'], rid, 'the same id went upstream');

    // a model name no log line may break: newline, quotes, backslash, control and bad bytes
    const evil = Buffer.concat([Buffer.from('{"model":"line1\\nline2\\"q\\\\ \\u0001'), Buffer.from([0xff, 0xfe]),
      Buffer.from(' \u00e9","max_tokens":8,"messages":[{"role":"user","content":"x"}]}')]);
    const r = await request(proxy, { method: 'POST', path: '/v1/messages', body: evil });
    assert.equal(r.status, 200, r.text);
    const r2 = await request(proxy, { method: 'POST', path: '/v1/messages', body: '{"model": "a\\nb", "messages": 5}' });
    assert.equal(r2.status, 400);

    const lines = await until(() => {
      const ls = jsonLines(proxy.log());
      return ls.filter((o) => o.msg === 'messages').length >= 3 ? ls : null;
    }, 3000);
    assert.ok(lines, 'three summary lines');
    const sums = lines.filter((o) => o.msg === 'messages');
    for (const s of sums) for (const k of SUMMARY_FIELDS) assert.ok(k in s, `summary field ${k}`);
    const first = sums.find((o) => o.request_id === rid);
    assert.ok(first, 'the summary carries the request id');
    assert.equal(first.model, 'claude-sonnet-4-5');
    assert.equal(first.status, 200);
    assert.equal(first.stream, 0);
    assert.equal(typeof first.total_ms, 'number');
    assert.equal(first.prompt, msg.usage.input_tokens + (msg.usage.cache_read_input_tokens || 0));
    assert.equal(first.output, msg.usage.output_tokens);
    const weird = sums.find((o) => o.model.startsWith('line1'));
    assert.ok(weird, 'the odd model name is logged');
    assert.equal(weird.model, 'line1\nline2"q\\ \u0001\ufffd\ufffd \u00e9');
    const bad = sums.find((o) => o.status === 400);
    assert.equal(bad.model, 'a\nb');
    // the start-up lines (configuration, policies, listening) are JSON too
    assert.ok(lines.some((o) => /^anthroxy .* listening on http:\/\/127\.0\.0\.1:\d+/.test(o.msg)));
  } finally {
    const exit = await proxy.stop();
    await mock.close();
    assert.equal(exit.code, 0);
  }
  // the shutdown lines too
  jsonLines(proxy.log());
});

test('an unknown --log-format is refused with a clear message', async () => {
  await assert.rejects(startProxy({ upstream: 'http://127.0.0.1:9/v1', args: ['--log-format', 'xml'] }),
    /log-format: invalid value "xml": expected text or json/);
});
