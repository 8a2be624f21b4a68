// context-editing.test.mjs - Anthropic's context editing (context_management.edits, beta
// context-management-2025-06-27) through the SDK's client.beta.messages against the default
// chain and the mock: what reaches the upstream is the edited conversation, the answer carries
// context_management.applied_edits (JSON and the stream's message_delta), count_tokens counts
// the edited request and reports the original, and bad edits are 400s naming the field.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { useProxy, request, assertAnthropicError } from './helpers.mjs';

const env = useProxy({ name: 'context-editing', mock: { nCtx: 200000 } });
const BETA = ['context-management-2025-06-27'];
const PLACEHOLDER = '[tool result cleared by context editing to save context]';

/** A task, then n Read turns whose results are `size` characters each. */
function loop(n, size, { thinking = false } = {}) {
  const messages = [{ role: 'user', content: 'Fix the failing test' }];
  for (let k = 1; k <= n; k++) {
    const blocks = [];
    if (thinking) blocks.push({ type: 'thinking', thinking: 'let me think '.repeat(40), signature: 'sig' });
    blocks.push({ type: 'text', text: `step ${k}` });
    blocks.push({ type: 'tool_use', id: `toolu_${k}`, name: 'Read', input: { path: `f${k}.c` } });
    messages.push({ role: 'assistant', content: blocks });
    messages.push({ role: 'user', content: [{ type: 'tool_result', tool_use_id: `toolu_${k}`, content: `out ${k} `.repeat(size / 6) }] });
  }
  messages.push({ role: 'assistant', content: 'Done reading.' }, { role: 'user', content: 'EDIT-ME now summarise' });
  return messages;
}
const tools = [{ name: 'Read', description: 'read a file', input_schema: { type: 'object', properties: { path: { type: 'string' } } } }];

const clearToolUses = { type: 'clear_tool_uses_20250919', trigger: { type: 'input_tokens', value: 2000 }, keep: { type: 'tool_uses', value: 3 } };

test('clear_tool_uses: old results become the placeholder upstream; applied_edits reports it', env.wrap(async () => {
  env.mock.reset();
  const msg = await env.client.beta.messages.create({
    model: 'claude-sonnet-4-5', max_tokens: 100, betas: BETA, tools,
    messages: loop(12, 3000), context_management: { edits: [clearToolUses] },
  });
  assert.equal(msg.type, 'message');
  assert.ok(msg.context_management, 'context_management in the answer');
  const [a] = msg.context_management.applied_edits;
  assert.equal(a.type, 'clear_tool_uses_20250919');
  assert.equal(a.cleared_tool_uses, 5); // 12 - keep 3 = 9, in steps of 5
  assert.ok(a.cleared_input_tokens > 2000, `cleared_input_tokens ${a.cleared_input_tokens}`);
  const sent = env.mock.chats().at(-1).body;
  const toolMsgs = sent.messages.filter((m) => m.role === 'tool');
  assert.equal(toolMsgs.length, 12, 'every tool result still paired with its call');
  assert.deepEqual(toolMsgs.map((m) => m.content === PLACEHOLDER || m.content?.[0]?.text === PLACEHOLDER),
    [true, true, true, true, true, false, false, false, false, false, false, false]);
  assert.equal(sent.context_management, undefined, 'context_management never goes upstream');
}));

test('the stream reports applied_edits in message_delta, as the SDK accumulates it', env.wrap(async () => {
  const stream = env.client.beta.messages.stream({
    model: 'claude-sonnet-4-5', max_tokens: 100, betas: BETA, tools,
    messages: loop(3, 200, { thinking: true }).concat(),
    context_management: { edits: [{ type: 'clear_thinking_20251015', keep: { type: 'thinking_turns', value: 1 } }] },
  });
  const deltas = [];
  stream.on('streamEvent', (e) => { if (e.type === 'message_delta') deltas.push(e); });
  const msg = await stream.finalMessage();
  assert.equal(deltas.length, 1);
  assert.deepEqual(deltas[0].context_management.applied_edits.map((a) => [a.type, a.cleared_thinking_turns]),
    [['clear_thinking_20251015', 2]]);
  assert.ok(deltas[0].context_management.applied_edits[0].cleared_input_tokens > 0);
  assert.deepEqual(msg.context_management, deltas[0].context_management);
  const sent = env.mock.chats().at(-1).body;
  const withReasoning = sent.messages.filter((m) => m.role === 'assistant' && m.reasoning_content);
  assert.equal(withReasoning.length, 1, 'only the last turn keeps its thinking upstream');
}));

test('below the trigger: nothing cleared, applied_edits is []', env.wrap(async () => {
  const msg = await env.client.beta.messages.create({
    model: 'claude-sonnet-4-5', max_tokens: 100, betas: BETA, tools,
    messages: loop(2, 100), context_management: { edits: [clearToolUses] },
  });
  assert.deepEqual(msg.context_management, { applied_edits: [] });
  const sent = env.mock.chats().at(-1).body;
  assert.ok(sent.messages.filter((m) => m.role === 'tool').every((m) => !JSON.stringify(m.content).includes(PLACEHOLDER)));
}));

test('without context_management the answer has none', env.wrap(async () => {
  const msg = await env.client.beta.messages.create({
    model: 'claude-sonnet-4-5', max_tokens: 100, messages: [{ role: 'user', content: 'hi' }],
  });
  assert.equal(msg.context_management, undefined);
}));

test('count_tokens with context_management counts the edited request', env.wrap(async () => {
  const body = { model: 'claude-sonnet-4-5', betas: BETA, tools, messages: loop(12, 3000) };
  const plain = await env.client.beta.messages.countTokens(body);
  const edited = await env.client.beta.messages.countTokens({ ...body, context_management: { edits: [clearToolUses] } });
  assert.ok(edited.input_tokens < plain.input_tokens - 2000, `${edited.input_tokens} vs ${plain.input_tokens}`);
  assert.ok(edited.context_management.original_input_tokens > edited.input_tokens);
  assert.equal(plain.context_management, undefined);
  console.log(`# clear_tool_uses on 12 Read turns of 3 KB: ${plain.input_tokens} -> ${edited.input_tokens} input tokens (count_tokens, mock tokenizer)`);
}));

test('a forged applied_edits from the client is not echoed', env.wrap(async () => {
  const r = await request(env.proxy, {
    method: 'POST', path: '/v1/messages', headers: { 'content-type': 'application/json', 'anthropic-version': '2023-06-01' },
    body: { model: 'm', max_tokens: 10, messages: [{ role: 'user', content: 'hi' }],
      context_management: { edits: [], applied_edits: [{ type: 'clear_tool_uses_20250919', cleared_tool_uses: 99, cleared_input_tokens: 1 }] } },
  });
  assert.equal(r.status, 200);
  assert.deepEqual(r.json.context_management, { applied_edits: [] });
}));

test('bad edits are a 400 naming the field', env.wrap(async () => {
  for (const [edit, re] of [
    [{ type: 'clear_everything' }, /context_management\.edits\.0\.type: unknown edit type 'clear_everything'/],
    [{ type: 'clear_tool_uses_20250919', keep: 3 }, /context_management\.edits\.0\.keep/],
    [{ type: 'clear_tool_uses_20250919', clear_tool_inputs: 'yes' }, /edits\.0\.clear_tool_inputs/],
  ]) {
    const r = await request(env.proxy, {
      method: 'POST', path: '/v1/messages', headers: { 'content-type': 'application/json' },
      body: { model: 'm', max_tokens: 10, messages: [{ role: 'user', content: 'hi' }], context_management: { edits: [edit] } },
    });
    assertAnthropicError(r, 400, 'invalid_request_error', re);
  }
}));
