// mock.test.mjs - keeps the mock llama-server honest: its answers must have the shapes the
// real server gave in tests/fixtures/llama-server/ (key order included), and its prompt
// rendering must reproduce the recorded /apply-template outputs byte for byte.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { startMock, renderPrompt, FIXTURES } from './mock-llama.mjs';

const fx = (name) => JSON.parse(fs.readFileSync(path.join(FIXTURES, 'llama-server', name), 'utf8'));

/** The structure of a JSON value: key order and types, first element of arrays. */
function shape(v) {
  if (v === null) return 'null';
  if (Array.isArray(v)) return v.length ? [shape(v[0])] : [];
  if (typeof v === 'object') return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, shape(x)]));
  return typeof v;
}
const keys = (o) => Object.keys(o);

async function post(mock, p, body, raw) {
  const r = await fetch(mock.url + p, {
    method: 'POST', headers: { 'content-type': 'application/json' },
    body: raw ?? JSON.stringify(body),
  });
  return { status: r.status, type: r.headers.get('content-type'), text: await r.text() };
}

function sseEvents(text) {
  assert.ok(text.endsWith('\n\n'), 'SSE ends with a blank line');
  return text.split('\n\n').filter(Boolean).map((frame) => {
    assert.match(frame, /^data: /, 'only data: lines, no event: lines');
    const d = frame.slice(6);
    return d === '[DONE]' ? d : JSON.parse(d);
  });
}

let mock;
before(async () => { mock = await startMock({ nCtx: 2048 }); });
after(async () => { await mock.close(); });

test('apply-template reproduces the recorded prompts exactly', () => {
  for (const f of ['apply_template.json', 'apply_template_tools.json', 'apply_template_tool_result.json',
    'apply_template_kwargs.json']) {
    const d = fx(f);
    assert.equal(renderPrompt(d.request.body.messages, d.request.body.tools), d.body.prompt, f);
  }
});

test('GET endpoints have the recorded shapes', async () => {
  for (const [p, f] of [['/health', 'health.json'], ['/v1/health', 'v1_health.json'], ['/v1/models', 'v1_models.json']]) {
    const r = await fetch(mock.url + p);
    assert.equal(r.status, 200);
    assert.equal(r.headers.get('content-type'), 'application/json; charset=utf-8');
    assert.deepEqual(shape(await r.json()), shape(fx(f).body), p);
  }
  const props = await (await fetch(mock.url + '/props')).json();
  assert.deepEqual(keys(props), keys(fx('props.json').body));
  assert.equal(props.default_generation_settings.n_ctx, 2048);
  const slots = await (await fetch(mock.url + '/slots')).json();
  assert.equal(slots.length, 2);
  assert.equal(slots[0].n_ctx, 2048);
  const models = await (await fetch(mock.url + '/v1/models')).json();
  assert.equal(models.data[0].id, 'tiny');
});

test('non-streaming text answer has the recorded shape', async () => {
  const d = fx('chat_nonstream.json');
  const r = await post(mock, '/v1/chat/completions', d.request.body);
  assert.equal(r.status, 200);
  assert.equal(r.type, 'application/json; charset=utf-8');
  const b = JSON.parse(r.text);
  assert.deepEqual(shape(b), shape(d.body));
  assert.match(b.id, /^chatcmpl-[A-Za-z0-9]{32}$/);
  assert.equal(b.model, 'tiny');
  assert.equal(b.usage.prompt_tokens, mock.promptTokens(d.request.body));
});

test('non-streaming tool call has the recorded shape', async () => {
  const d = fx('tools_required_nonstream.json');
  mock.script(() => ({ toolCalls: [{ name: 'add', arguments: { a: 2, b: 2 } }] }));
  try {
    const b = JSON.parse((await post(mock, '/v1/chat/completions', d.request.body)).text);
    assert.deepEqual(shape(b), shape(d.body));
    const m = b.choices[0].message;
    assert.equal(m.content, '');
    assert.equal(b.choices[0].finish_reason, 'tool_calls');
    assert.match(m.tool_calls[0].id, /^[A-Za-z0-9]{32}$/);
    assert.deepEqual(JSON.parse(m.tool_calls[0].function.arguments), { a: 2, b: 2 });
  } finally {
    mock.script(null);
  }
});

test('stream with include_usage has the recorded chunk sequence', async () => {
  const d = fx('chat_stream_usage.json');
  const r = await post(mock, '/v1/chat/completions', d.request.body);
  assert.equal(r.type, 'text/event-stream');
  const ev = sseEvents(r.text);
  const rec = d.events.map((e) => e.data);
  assert.deepEqual(shape(ev[0]), shape(rec[0]));
  assert.deepEqual(ev[0].choices[0].delta, { role: 'assistant', content: null });
  assert.deepEqual(shape(ev[1]), shape(rec[1]));
  const fin = ev[ev.length - 3];
  assert.deepEqual(shape(fin), shape(rec[rec.length - 3]));
  assert.deepEqual(fin.choices[0].delta, {});
  assert.deepEqual(shape(ev[ev.length - 2]), shape(rec[rec.length - 2]));
  assert.deepEqual(ev[ev.length - 2].choices, []);
  assert.equal(ev[ev.length - 1], '[DONE]');
  const text = ev.slice(1, -3).map((c) => c.choices[0].delta.content).join('');
  assert.equal(text, 'Hello from the mock.');
  assert.equal(ev[ev.length - 2].usage.completion_tokens, ev.length - 4);
});

test('stream without include_usage carries no usage', async () => {
  const d = fx('chat_stream_no_usage.json');
  const ev = sseEvents((await post(mock, '/v1/chat/completions', d.request.body)).text);
  const rec = d.events.map((e) => e.data);
  assert.equal(ev[ev.length - 1], '[DONE]');
  assert.deepEqual(shape(ev[ev.length - 2]), shape(rec[rec.length - 2]));
  assert.ok(ev.every((c) => c === '[DONE]' || c.usage === undefined));
});

test('streamed tool call: first delta carries id, name and "{"', async () => {
  const d = fx('tools_required_stream.json');
  mock.script(() => ({ toolCalls: [{ name: 'add', arguments: '{"a":2,"b":2}' }, { name: 'get_weather', arguments: { city: 'Paris' } }] }));
  try {
    const ev = sseEvents((await post(mock, '/v1/chat/completions', d.request.body)).text);
    const rec = d.events.map((e) => e.data);
    assert.deepEqual(shape(ev[1]), shape(rec[1]));
    assert.deepEqual(shape(ev[2]), shape(rec[2]));
    const first = ev[1].choices[0].delta.tool_calls[0];
    assert.equal(first.function.arguments, '{');
    assert.equal(first.function.name, 'add');
    const byIndex = {};
    for (const c of ev.slice(1, -3)) {
      for (const tc of c.choices[0].delta.tool_calls) byIndex[tc.index] = (byIndex[tc.index] ?? '') + tc.function.arguments;
    }
    assert.deepEqual(JSON.parse(byIndex[0]), { a: 2, b: 2 });
    assert.deepEqual(JSON.parse(byIndex[1]), { city: 'Paris' });
    assert.equal(ev[ev.length - 3].choices[0].finish_reason, 'tool_calls');
  } finally {
    mock.script(null);
  }
});

test('errors are the recorded bodies', async () => {
  const over = fx('overflow_stream.json');
  const big = { messages: [{ role: 'user', content: 'hello '.repeat(3000) }], stream: true };
  let r = await post(mock, '/v1/chat/completions', big);
  assert.equal(r.status, 400);
  assert.equal(r.type, 'application/json; charset=utf-8', 'plain JSON even for stream:true');
  const b = JSON.parse(r.text);
  assert.deepEqual(shape(b), shape(over.body));
  assert.equal(b.error.n_ctx, 2048);
  assert.equal(b.error.n_prompt_tokens, mock.promptTokens(big));
  assert.equal(b.error.message, `request (${b.error.n_prompt_tokens} tokens) exceeds the available context size (2048 tokens), try increasing it`);

  const bad = fx('error_bad_json.json');
  r = await post(mock, '/v1/chat/completions', null, bad.request.body);
  assert.equal(r.status, 500);
  assert.deepEqual(JSON.parse(r.text), bad.body);

  const unk = fx('error_unknown_path.json');
  r = await post(mock, '/v1/nope', {});
  assert.equal(r.status, 404);
  assert.equal(r.text, JSON.stringify(unk.body));

  const nom = fx('error_no_messages.json');
  r = await post(mock, '/v1/chat/completions', nom.request.body);
  assert.equal(r.status, 400);
  assert.deepEqual(JSON.parse(r.text), nom.body);
});

test('loading answers 503 unavailable_error', async () => {
  mock.setLoading(true);
  try {
    const r = await fetch(mock.url + '/health');
    assert.equal(r.status, 503);
    assert.deepEqual(await r.json(), { error: { code: 503, message: 'Loading model', type: 'unavailable_error' } });
  } finally {
    mock.setLoading(false);
  }
});

test('tokenize and apply-template agree with the reported prompt_tokens', async () => {
  const body = { messages: [{ role: 'user', content: 'count me <|im_end|> please' }] };
  const prompt = JSON.parse((await post(mock, '/apply-template', body)).text).prompt;
  const toks = JSON.parse((await post(mock, '/tokenize', { content: prompt })).text).tokens;
  assert.ok(toks.every((t) => Number.isInteger(t)));
  const ans = JSON.parse((await post(mock, '/v1/chat/completions', body)).text);
  assert.equal(ans.usage.prompt_tokens, toks.length);
  const wp = JSON.parse((await post(mock, '/tokenize', { content: 'ab<|im_end|>', with_pieces: true })).text).tokens;
  assert.deepEqual(wp[wp.length - 1], { id: 307, piece: '<|im_end|>' });
});

test('stop strings and max_tokens cut like llama-server', async () => {
  mock.script(() => ({ text: 'one two STOP three' }));
  try {
    let b = JSON.parse((await post(mock, '/v1/chat/completions', { messages: [{ role: 'user', content: 'x' }], stop: ['STOP'] })).text);
    assert.equal(b.choices[0].message.content, 'one two ');
    assert.equal(b.choices[0].finish_reason, 'stop');
    b = JSON.parse((await post(mock, '/v1/chat/completions', { messages: [{ role: 'user', content: 'x' }], max_tokens: 2 })).text);
    assert.equal(b.choices[0].message.content, 'one tw');
    assert.equal(b.choices[0].finish_reason, 'length');
    assert.equal(b.usage.completion_tokens, 2);
  } finally {
    mock.script(null);
  }
});

test('records requests and sees a client close mid-stream', async () => {
  mock.script((req) => (req.lastText === 'slow' ? { text: 'a'.repeat(300), chunkDelayMs: 20 } : null));
  try {
    const ac = new AbortController();
    const r = await fetch(mock.url + '/v1/chat/completions', {
      method: 'POST', body: JSON.stringify({ messages: [{ role: 'user', content: 'slow' }], stream: true }),
      headers: { 'content-type': 'application/json', 'x-test': '1' }, signal: ac.signal,
    });
    const reader = r.body.getReader();
    await reader.read();
    ac.abort();
    const rec = await mock.waitFor((q) => q.lastText === 'slow');
    assert.equal(rec.headers['x-test'], '1');
    const t0 = Date.now();
    while (!rec.clientClosed && Date.now() - t0 < 2000) await new Promise((res) => setTimeout(res, 10));
    assert.ok(rec.clientClosed, 'mock saw the close');
  } finally {
    mock.script(null);
  }
});
