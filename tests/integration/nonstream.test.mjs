// nonstream.test.mjs - the SDK's messages.create and countTokens through anthroxy against the
// mock llama-server: what the client gets back, and the exact OpenAI request the mock received.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { useProxy, oaiText } from './helpers.mjs';

const env = useProxy({ name: 'nonstream', mock: { models: ['tiny', 'other-model'] } });
const MODEL = 'claude-sonnet-4-5';

const WEATHER = {
  name: 'get_weather',
  description: 'Get the current weather for a city',
  input_schema: {
    type: 'object',
    properties: { city: { type: 'string' }, unit: { type: 'string', enum: ['c', 'f'] } },
    required: ['city'],
  },
};
const ADD = {
  name: 'add',
  description: 'Add two integers',
  input_schema: { type: 'object', properties: { a: { type: 'integer' }, b: { type: 'integer' } }, required: ['a', 'b'] },
};
const EMPTY = { name: 'noop', description: 'Takes nothing', input_schema: { type: 'object', properties: {} } };

// A 2x2 PNG.
const PNG_B64 = 'iVBORw0KGgoAAAANSUhEUgAAAAIAAAACCAIAAAD91JpzAAAAFklEQVR4nGP8z8DAwMDAxMDAwMDAAAANHQEDasKb6QAAAABJRU5ErkJggg==';

/** The recorded chat request whose last message contains `needle`. */
const chatWith = (needle) => env.mock.waitFor((r) => r.path === '/v1/chat/completions' && r.lastText.includes(needle));
/** Messages without the leading system message(s) the proxy or its policies add. */
const nonSystem = (body) => body.messages.filter((m) => m.role !== 'system');

test('text round trip: content, ids, stop_reason, model names both ways', env.wrap(async () => {
  env.on('Say hello', { text: 'Hello, world!' });
  const r = await env.client.messages.create({
    model: MODEL, max_tokens: 100, system: 'Be terse.', messages: [{ role: 'user', content: 'Say hello' }],
  });
  assert.deepEqual(r.content, [{ type: 'text', text: 'Hello, world!' }]);
  assert.equal(r.type, 'message');
  assert.equal(r.role, 'assistant');
  assert.equal(r.stop_reason, 'end_turn');
  assert.match(r.id, /^msg_/);
  assert.equal(r.model, MODEL, 'the client gets back the model name it asked for');
  const up = (await chatWith('Say hello')).body;
  assert.equal(up.model, 'tiny', 'upstream gets the first id the upstream lists');
  assert.equal(up.messages[0].role, 'system');
  assert.ok(oaiText(up.messages[0].content).includes('Be terse.'));
  const last = up.messages[up.messages.length - 1];
  assert.equal(last.role, 'user');
  assert.equal(oaiText(last.content), 'Say hello');
  assert.ok(!up.stream, 'non-streaming upstream request');
  const max = up.max_completion_tokens ?? up.max_tokens;
  assert.ok(max >= 1 && max <= 100, `max_tokens ${max}: no floor for a plain question without tools`);
}));

test('usage: input_tokens = prompt - cached, cache_read_input_tokens = cached', env.wrap(async () => {
  env.on('usage please', { text: 'counted', cached: 17 });
  const r = await env.client.messages.create({ model: MODEL, max_tokens: 50, messages: [{ role: 'user', content: 'usage please' }] });
  const rec = await chatWith('usage please');
  assert.ok(rec.usage.prompt_tokens > 17);
  assert.equal(r.usage.input_tokens, rec.usage.prompt_tokens - 17);
  assert.equal(r.usage.cache_read_input_tokens, 17);
  assert.equal(r.usage.output_tokens, rec.usage.completion_tokens);
}));

test('sampling fields pass through; metadata.user_id is not forwarded by default', env.wrap(async () => {
  env.on('sampling fields', { text: 'ok' });
  await env.client.messages.create({
    model: MODEL, max_tokens: 50, temperature: 0.3, top_p: 0.9, top_k: 20,
    metadata: { user_id: 'user-123' }, messages: [{ role: 'user', content: 'sampling fields' }],
  });
  const up = (await chatWith('sampling fields')).body;
  assert.equal(up.temperature, 0.3);
  assert.equal(up.top_p, 0.9);
  assert.equal(up.top_k, 20);
  assert.equal(up.user, undefined, 'user_id (device and account ids) stays with the proxy');
}));

test('images: base64 becomes an image_url part with a data: URL', env.wrap(async () => {
  env.on('describe the picture', { text: 'a tiny square' });
  const r = await env.client.messages.create({
    model: MODEL, max_tokens: 50,
    messages: [{
      role: 'user', content: [
        { type: 'image', source: { type: 'base64', media_type: 'image/png', data: PNG_B64 } },
        { type: 'text', text: 'describe the picture' },
      ],
    }],
  });
  assert.equal(r.content[0].text, 'a tiny square');
  const up = (await chatWith('describe the picture')).body;
  const parts = up.messages[up.messages.length - 1].content;
  assert.ok(Array.isArray(parts), 'content parts');
  const img = parts.find((p) => p.type === 'image_url');
  assert.ok(img, JSON.stringify(parts));
  assert.equal(img.image_url.url, `data:image/png;base64,${PNG_B64}`);
  const txt = parts.find((p) => p.type === 'text');
  assert.equal(txt.text, 'describe the picture');
  assert.ok(parts.indexOf(img) < parts.indexOf(txt), 'order kept');
}));

test('tools: function tools upstream, tool_use back with parsed input', env.wrap(async () => {
  env.on('weather in Paris', { toolCalls: [{ name: 'get_weather', arguments: { city: 'Paris', unit: 'c' } }] });
  const r = await env.client.messages.create({
    model: MODEL, max_tokens: 200, tools: [WEATHER, EMPTY],
    messages: [{ role: 'user', content: 'What is the weather in Paris?' }],
  });
  assert.equal(r.stop_reason, 'tool_use');
  const tu = r.content.filter((b) => b.type === 'tool_use');
  assert.equal(tu.length, 1);
  assert.equal(tu[0].name, 'get_weather');
  assert.deepEqual(tu[0].input, { city: 'Paris', unit: 'c' });
  assert.match(tu[0].id, /^toolu_/);
  assert.ok(!r.content.some((b) => b.type === 'text' && b.text === ''), 'no empty text block');
  const up = (await chatWith('weather in Paris')).body;
  assert.deepEqual(up.tools[0], {
    type: 'function', function: { name: 'get_weather', description: WEATHER.description, parameters: WEATHER.input_schema },
  });
  assert.deepEqual(up.tools[1].function.parameters, { type: 'object', properties: {} }, 'empty properties stay an object');
}));

test('parallel tool calls come back as two tool_use blocks in order', env.wrap(async () => {
  env.on('two things at once', {
    toolCalls: [{ name: 'get_weather', arguments: { city: 'Oslo' } }, { name: 'add', arguments: { a: 1, b: 2 } }],
  });
  const r = await env.client.messages.create({
    model: MODEL, max_tokens: 200, tools: [WEATHER, ADD], messages: [{ role: 'user', content: 'two things at once' }],
  });
  const tu = r.content.filter((b) => b.type === 'tool_use');
  assert.deepEqual(tu.map((b) => b.name), ['get_weather', 'add']);
  assert.deepEqual(tu[1].input, { a: 1, b: 2 });
  assert.notEqual(tu[0].id, tu[1].id);
}));

test('multi-turn tool use: one assistant message with all tool_calls, tool results in order, ids paired',
  env.wrap(async () => {
    env.on('first turn of multi', {
      text: 'Let me check both.',
      toolCalls: [{ name: 'get_weather', arguments: { city: 'Rome' } }, { name: 'add', arguments: { a: 2, b: 3 } }],
    });
    env.on('and then thanks', { text: 'Rome is sunny and 2+3=5.' });
    const first = [{ role: 'user', content: 'first turn of multi' }];
    const r1 = await env.client.messages.create({ model: MODEL, max_tokens: 300, tools: [WEATHER, ADD], messages: first });
    const tu = r1.content.filter((b) => b.type === 'tool_use');
    assert.equal(tu.length, 2);
    assert.equal(r1.content[0].type, 'text');
    assert.equal(r1.content[0].text, 'Let me check both.');
    const r2 = await env.client.messages.create({
      model: MODEL, max_tokens: 300, tools: [WEATHER, ADD],
      messages: [
        ...first,
        { role: 'assistant', content: r1.content },
        {
          role: 'user', content: [
            { type: 'tool_result', tool_use_id: tu[0].id, content: 'sunny, 24 C' },
            { type: 'tool_result', tool_use_id: tu[1].id, content: [{ type: 'text', text: '5' }] },
            { type: 'text', text: 'and then thanks' },
          ],
        },
      ],
    });
    assert.equal(r2.content[0].text, 'Rome is sunny and 2+3=5.');
    const up = (await chatWith('and then thanks')).body;
    const msgs = nonSystem(up);
    assert.deepEqual(msgs.map((m) => m.role), ['user', 'assistant', 'tool', 'tool', 'user']);
    const asst = msgs[1];
    assert.equal(oaiText(asst.content), 'Let me check both.');
    assert.equal(asst.tool_calls.length, 2);
    assert.deepEqual(asst.tool_calls.map((c) => c.function.name), ['get_weather', 'add']);
    assert.deepEqual(JSON.parse(asst.tool_calls[0].function.arguments), { city: 'Rome' });
    assert.equal(msgs[2].tool_call_id, asst.tool_calls[0].id);
    assert.equal(msgs[3].tool_call_id, asst.tool_calls[1].id);
    assert.equal(oaiText(msgs[2].content), 'sunny, 24 C');
    assert.equal(oaiText(msgs[3].content), '5');
    assert.equal(oaiText(msgs[4].content), 'and then thanks');
  }));

test('upstream tool-call ids are preserved round trip', env.wrap(async () => {
  const ID = 'Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z';
  env.on('keep my id', { toolCalls: [{ id: ID, name: 'add', arguments: { a: 1, b: 1 } }] });
  env.on('result for id', { text: 'two' });
  const first = [{ role: 'user', content: 'keep my id' }];
  const r1 = await env.client.messages.create({ model: MODEL, max_tokens: 100, tools: [ADD], messages: first });
  const tu = r1.content.find((b) => b.type === 'tool_use');
  assert.ok(tu.id.includes(ID), `tool_use id ${tu.id} carries the upstream id`);
  await env.client.messages.create({
    model: MODEL, max_tokens: 100, tools: [ADD],
    messages: [...first, { role: 'assistant', content: r1.content },
      { role: 'user', content: [{ type: 'tool_result', tool_use_id: tu.id, content: '2' }, { type: 'text', text: 'result for id' }] }],
  });
  const msgs = nonSystem((await chatWith('result for id')).body);
  assert.equal(msgs[1].tool_calls[0].id, ID);
  assert.equal(msgs[2].tool_call_id, ID);
}));

test('tool_result is_error and image content reach the upstream', env.wrap(async () => {
  env.on('after failing tool', { text: 'noted' });
  await env.client.messages.create({
    model: MODEL, max_tokens: 100, tools: [ADD],
    messages: [
      { role: 'user', content: 'add please' },
      { role: 'assistant', content: [{ type: 'tool_use', id: 'toolu_01', name: 'add', input: { a: 1 } }] },
      { role: 'user', content: [{ type: 'tool_result', tool_use_id: 'toolu_01', is_error: true, content: 'missing b' },
        { type: 'text', text: 'after failing tool' }] },
    ],
  });
  const msgs = nonSystem((await chatWith('after failing tool')).body);
  const tool = msgs.find((m) => m.role === 'tool');
  assert.ok(oaiText(tool.content).includes('missing b'));
  assert.equal(tool.tool_call_id, msgs[1].tool_calls[0].id);
}));

test('tool_choice: auto, any, none, tool (named: only that tool, required), disable_parallel_tool_use',
  env.wrap(async () => {
    const cases = [
      [{ type: 'auto' }, (b) => assert.ok(b.tool_choice === undefined || b.tool_choice === 'auto', `auto: ${JSON.stringify(b.tool_choice)}`)],
      [{ type: 'any' }, (b) => assert.equal(b.tool_choice, 'required')],
      [{ type: 'none' }, (b) => assert.equal(b.tool_choice, 'none')],
      [{ type: 'tool', name: 'add' }, (b) => {
        assert.equal(b.tool_choice, 'required');
        assert.deepEqual(b.tools.map((t) => t.function.name), ['add']);
      }],
      [{ type: 'auto', disable_parallel_tool_use: true }, (b) => assert.equal(b.parallel_tool_calls, false)],
    ];
    let i = 0;
    for (const [choice, check] of cases) {
      const phrase = `tool choice case ${i++}`;
      env.on(phrase, { text: 'fine' });
      await env.client.messages.create({
        model: MODEL, max_tokens: 100, tools: [WEATHER, ADD], tool_choice: choice,
        messages: [{ role: 'user', content: phrase }],
      });
      check((await chatWith(phrase)).body);
    }
  }));

test('stop sequences: sent as stop, the text is cut there', env.wrap(async () => {
  env.on('count to three', { text: 'one two STOP three' });
  const r = await env.client.messages.create({
    model: MODEL, max_tokens: 100, stop_sequences: ['STOP'], messages: [{ role: 'user', content: 'count to three' }],
  });
  const up = (await chatWith('count to three')).body;
  assert.deepEqual([].concat(up.stop), ['STOP']);
  assert.equal(r.content[0].text, 'one two ');
  assert.ok(['end_turn', 'stop_sequence'].includes(r.stop_reason), r.stop_reason);
  if (r.stop_reason === 'stop_sequence') assert.equal(r.stop_sequence, 'STOP');
}));

test('max_tokens reached -> stop_reason max_tokens', env.wrap(async () => {
  env.on('long story', { text: 'once upon a time there was a proxy that translated everything' });
  const r = await env.client.messages.create({ model: MODEL, max_tokens: 3, messages: [{ role: 'user', content: 'long story' }] });
  assert.equal(r.stop_reason, 'max_tokens');
  assert.equal(r.content[0].text, 'once upon');
  assert.equal(r.usage.output_tokens, 3);
}));

test('thinking: reasoning_content becomes a thinking block first; replayed history is never garbage',
  env.wrap(async () => {
    env.on('think about 6x7', { reasoning: 'Six times seven is forty-two.', text: '42' });
    env.on('and now?', { text: 'still 42' });
    const first = [{ role: 'user', content: 'think about 6x7' }];
    const r1 = await env.client.messages.create({
      model: MODEL, max_tokens: 2048, thinking: { type: 'enabled', budget_tokens: 1024 }, messages: first,
    });
    const up1 = (await chatWith('think about 6x7')).body;
    assert.equal(up1.chat_template_kwargs?.enable_thinking, true, 'the reasoning switch llama-server and vLLM read');
    assert.equal(up1.max_tokens ?? up1.max_completion_tokens, 16384, 'max_tokens raised to the floor when thinking');
    assert.equal(r1.content[0].type, 'thinking');
    assert.equal(r1.content[0].thinking, 'Six times seven is forty-two.');
    assert.equal(typeof r1.content[0].signature, 'string');
    assert.deepEqual(r1.content[1], { type: 'text', text: '42' });
    await env.client.messages.create({
      model: MODEL, max_tokens: 2048, thinking: { type: 'enabled', budget_tokens: 1024 },
      messages: [...first, { role: 'assistant', content: r1.content }, { role: 'user', content: 'and now?' }],
    });
    const msgs = nonSystem((await chatWith('and now?')).body);
    const asst = msgs[1];
    assert.equal(asst.role, 'assistant');
    assert.equal(oaiText(asst.content), '42', 'the thinking is not in the content');
    if (asst.reasoning_content !== undefined) assert.equal(asst.reasoning_content, 'Six times seven is forty-two.');
    assert.ok(!JSON.stringify(msgs).includes('"signature"'), 'no raw thinking block upstream');
  }));

test('thinking disabled turns the template switch off; no thinking field, no switch', env.wrap(async () => {
  env.on('no thinking please', { text: 'plain' });
  env.on('nothing said about thinking', { text: 'plain' });
  await env.client.messages.create({
    model: MODEL, max_tokens: 100, thinking: { type: 'disabled' }, messages: [{ role: 'user', content: 'no thinking please' }],
  });
  assert.equal((await chatWith('no thinking please')).body.chat_template_kwargs?.enable_thinking, false);
  await env.client.messages.create({ model: MODEL, max_tokens: 100, messages: [{ role: 'user', content: 'nothing said about thinking' }] });
  assert.equal((await chatWith('nothing said about thinking')).body.chat_template_kwargs?.enable_thinking, undefined);
}));

test('client model names: a haiku name comes back as asked, upstream gets the upstream model', env.wrap(async () => {
  env.on('small side request', { text: 'ok' });
  const name = 'claude-3-5-haiku-20241022';
  const r = await env.client.messages.create({ model: name, max_tokens: 20, messages: [{ role: 'user', content: 'small side request' }] });
  assert.equal(r.model, name);
  assert.equal((await chatWith('small side request')).body.model, 'tiny');
}));

test('count_tokens: exact via /apply-template + /tokenize', env.wrap(async () => {
  const body = { model: MODEL, system: 'You count.', tools: [WEATHER], messages: [{ role: 'user', content: 'how many tokens is this?' }] };
  const before = env.mock.requests.length;
  const r = await env.client.messages.countTokens(body);
  const recs = env.mock.requests.slice(before);
  const tmpl = recs.find((q) => q.path === '/apply-template');
  const tok = recs.find((q) => q.path === '/tokenize');
  assert.ok(tmpl && tok, `apply-template and tokenize were asked: ${recs.map((q) => q.path)}`);
  assert.ok(tmpl.body.tools && tmpl.body.tools.length === 1, 'tools are rendered too');
  const n = env.mock.countTokens(tok.body.content);
  assert.equal(r.input_tokens, n, 'the upstream tokenizer\'s count comes back');
  assert.ok(tok.body.content.includes('how many tokens is this?'));
}));

test('count_tokens counts tool results', env.wrap(async () => {
  const base = [
    { role: 'user', content: 'read the file' },
    { role: 'assistant', content: [{ type: 'tool_use', id: 'toolu_09', name: 'get_weather', input: { city: 'x' } }] },
  ];
  const small = await env.client.messages.countTokens({
    model: MODEL, tools: [WEATHER],
    messages: [...base, { role: 'user', content: [{ type: 'tool_result', tool_use_id: 'toolu_09', content: 'short' }] }],
  });
  const big = await env.client.messages.countTokens({
    model: MODEL, tools: [WEATHER],
    messages: [...base, { role: 'user', content: [{ type: 'tool_result', tool_use_id: 'toolu_09', content: 'word '.repeat(4000) }] }],
  });
  // 20000 bytes at the mock's 4 bytes per token: 5000 tokens more.
  assert.ok(big.input_tokens - small.input_tokens >= 4900, `${small.input_tokens} -> ${big.input_tokens}`);
}));

test('a client that disconnects aborts its non-streaming upstream transfer', env.wrap(async () => {
  env.on('slow non-stream', { text: 'late', firstByteDelayMs: 3000 });
  const ac = new AbortController();
  const p = env.client.messages.create({ model: MODEL, max_tokens: 20, messages: [{ role: 'user', content: 'slow non-stream' }] },
    { signal: ac.signal });
  const rec = await chatWith('slow non-stream');
  ac.abort();
  await assert.rejects(p);
  const t0 = Date.now();
  while (!rec.clientClosed && Date.now() - t0 < 1500) await new Promise((res) => setTimeout(res, 10));
  assert.ok(rec.clientClosed, 'the mock saw the proxy close the upstream connection');
}));
