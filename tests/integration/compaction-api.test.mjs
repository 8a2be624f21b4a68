// compaction-api.test.mjs - Anthropic's server-side compaction (compact_20260112) emulated by
// policies/compaction.lua with the upstream model, driven by the SDK's client.beta.messages:
// past the trigger one summary call goes upstream, the answer opens with a compaction block
// (JSON and stream), pause_after_compaction answers with the block alone and stop_reason
// "compaction", a failed summary gives content null, and the block round-trips: sent back,
// it replaces everything before it.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { useProxy } from './helpers.mjs';

const env = useProxy({ name: 'compaction-api', mock: { nCtx: 200000 } });
const BETA = ['compact-2026-01-12', 'context-management-2025-06-27'];
const SUMMARY = 'The user wants the parser ported; files f1..f6 were read.';

env.on('Write the summary now.', (req) => (req.lastText.includes('FAIL-SUMMARY') ? { status: 500 } : { text: SUMMARY }));
env.on('CONTINUE-ME', { text: 'Continuing with the port.' });

function history(n, marker = '') {
  const messages = [{ role: 'user', content: `Port the parser to Rust ${marker}` }];
  for (let k = 1; k <= n; k++) {
    messages.push({ role: 'assistant', content: [{ type: 'text', text: `step ${k}` }, { type: 'tool_use', id: `toolu_${k}`, name: 'Read', input: { path: `f${k}` } }] });
    messages.push({ role: 'user', content: [{ type: 'tool_result', tool_use_id: `toolu_${k}`, content: `contents of f${k} `.repeat(200) }] });
  }
  messages.push({ role: 'assistant', content: 'Read them all.' }, { role: 'user', content: 'CONTINUE-ME please' });
  return messages;
}
const tools = [{ name: 'Read', input_schema: { type: 'object', properties: { path: { type: 'string' } } } }];
const edit = (extra = {}) => ({ edits: [{ type: 'compact_20260112', trigger: { type: 'input_tokens', value: 2000 }, ...extra }] });
const summaryCalls = () => env.mock.chats().filter((r) => r.lastText.includes('Write the summary now.'));

test('past the trigger: one summary call, a compaction block first, the answer over the summary', env.wrap(async () => {
  env.mock.reset();
  const msg = await env.client.beta.messages.create({
    model: 'claude-sonnet-4-5', max_tokens: 200, betas: BETA, tools, messages: history(6),
    context_management: edit({ instructions: 'Mention every file name.' }),
  });
  assert.equal(summaryCalls().length, 1);
  const call = summaryCalls()[0].body;
  assert.match(call.messages[0].content, /compacting the transcript/);
  assert.match(call.messages[0].content, /Additional instructions:\nMention every file name\./);
  assert.equal(call.stream, false);
  assert.deepEqual(msg.content[0], { type: 'compaction', content: SUMMARY, encrypted_content: null });
  assert.equal(msg.content[1].type, 'text');
  assert.equal(msg.stop_reason, 'end_turn');
  // usage.iterations: the summary call's cost, then the answer's (the top-level figures)
  const [ci, mi] = msg.usage.iterations;
  assert.equal(ci.type, 'compaction');
  assert.ok(ci.input_tokens > 0 && ci.output_tokens > 0, JSON.stringify(ci));
  assert.equal(mi.type, 'message');
  assert.equal(mi.input_tokens, msg.usage.input_tokens);
  assert.equal(mi.output_tokens, msg.usage.output_tokens);
  const main = env.mock.chats().find((r) => r.lastText.includes('CONTINUE-ME'));
  const userTexts = main.body.messages.filter((m) => m.role === 'user').map((m) => JSON.stringify(m.content));
  assert.ok(userTexts[0].includes(SUMMARY), 'the summary opens the compacted conversation');
  assert.ok(!JSON.stringify(main.body.messages).includes('contents of f1'), 'the old tool results are gone');
}));

test('streaming: the compaction block is block 0, as the SDK accumulates it', env.wrap(async () => {
  const stream = env.client.beta.messages.stream({
    model: 'claude-sonnet-4-5', max_tokens: 200, betas: BETA, tools, messages: history(6), context_management: edit(),
  });
  const msg = await stream.finalMessage();
  assert.equal(msg.content[0].type, 'compaction');
  assert.equal(msg.content[0].content, SUMMARY);
  assert.equal(msg.content[1].type, 'text');
  assert.equal(msg.content[1].text, 'Continuing with the port.');
  assert.deepEqual(msg.usage.iterations.map((i) => i.type), ['compaction', 'message']);
  assert.equal(msg.usage.iterations[1].output_tokens, msg.usage.output_tokens);
}));

test('pause_after_compaction: the block alone, stop_reason "compaction", no answer upstream', env.wrap(async () => {
  env.mock.reset();
  const msg = await env.client.beta.messages.create({
    model: 'claude-sonnet-4-5', max_tokens: 200, betas: BETA, tools, messages: history(6),
    context_management: edit({ pause_after_compaction: true }),
  });
  assert.equal(msg.stop_reason, 'compaction');
  assert.deepEqual(msg.content, [{ type: 'compaction', content: SUMMARY, encrypted_content: null }]);
  assert.equal(env.mock.chats().length, 1, 'only the summary call went upstream');
  assert.deepEqual(msg.usage.iterations.map((i) => i.type), ['compaction']);
  const stream = env.client.beta.messages.stream({
    model: 'claude-sonnet-4-5', max_tokens: 200, betas: BETA, tools, messages: history(6),
    context_management: edit({ pause_after_compaction: true }),
  });
  const smsg = await stream.finalMessage();
  assert.equal(smsg.stop_reason, 'compaction');
  assert.equal(smsg.content.length, 1);
  assert.equal(smsg.content[0].content, SUMMARY);
  assert.deepEqual(smsg.usage.iterations.map((i) => i.type), ['compaction']);
}));

test('a failed summary answers with content null and keeps the conversation', env.wrap(async () => {
  env.mock.reset();
  const msg = await env.client.beta.messages.create({
    model: 'claude-sonnet-4-5', max_tokens: 200, betas: BETA, tools, messages: history(6, 'FAIL-SUMMARY'),
    context_management: edit(),
  });
  assert.deepEqual(msg.content[0], { type: 'compaction', content: null, encrypted_content: null });
  const main = env.mock.chats().find((r) => r.lastText.includes('CONTINUE-ME'));
  assert.ok(JSON.stringify(main.body.messages).includes('contents of f1'), 'nothing was cut');
}));

test('the compaction block round-trips: sent back, it replaces everything before it', env.wrap(async () => {
  const first = await env.client.beta.messages.create({
    model: 'claude-sonnet-4-5', max_tokens: 200, betas: BETA, tools, messages: history(6),
    context_management: edit({ pause_after_compaction: true }),
  });
  env.mock.reset();
  const messages = history(6).slice(0, -1); // the client keeps its full history...
  messages.push({ role: 'assistant', content: first.content }); // ...and the compaction block
  messages.push({ role: 'user', content: 'CONTINUE-ME after compaction' });
  const msg = await env.client.beta.messages.create({
    model: 'claude-sonnet-4-5', max_tokens: 200, betas: BETA, tools, messages, context_management: edit(),
  });
  assert.equal(summaryCalls().length, 0, 'small again: no new summary');
  assert.equal(msg.content[0].type, 'text');
  const sent = env.mock.chats().at(-1).body.messages.filter((m) => m.role !== 'system');
  assert.equal(sent.length, 1);
  assert.ok(JSON.stringify(sent[0].content).includes(SUMMARY));
  assert.ok(JSON.stringify(sent[0].content).includes('CONTINUE-ME after compaction'));
  // a failed block (content null) is a no-op
  const again = await env.client.beta.messages.create({
    model: 'claude-sonnet-4-5', max_tokens: 50, betas: BETA,
    messages: [{ role: 'user', content: 'hello' }, { role: 'assistant', content: [{ type: 'compaction', content: null }, { type: 'text', text: 'hi' }] }, { role: 'user', content: 'CONTINUE-ME' }],
  });
  assert.equal(again.type, 'message');
  assert.equal(env.mock.chats().at(-1).body.messages.filter((m) => m.role !== 'system').length, 3);
}));

test('the compaction parameter: the answer is the compaction block alone, no context_management', env.wrap(async () => {
  env.mock.reset();
  const msg = await env.client.beta.messages.create({
    model: 'claude-sonnet-4-5', max_tokens: 200, betas: ['compact-2026-09-04'], tools, messages: history(2),
    compaction: { type: 'summarize', instructions: 'List the files read.' },
  });
  assert.equal(msg.stop_reason, 'compaction');
  assert.deepEqual(msg.content, [{ type: 'compaction', content: SUMMARY, encrypted_content: null }]);
  assert.equal(msg.context_management, undefined);
  assert.equal(env.mock.chats().length, 1);
  assert.equal(summaryCalls()[0].body.messages[0].content, 'List the files read.');
  assert.ok(summaryCalls()[0].body.messages[1].content.includes('CONTINUE-ME'), 'the whole conversation');
  await assert.rejects(env.client.beta.messages.create({
    model: 'm', max_tokens: 10, messages: history(1), compaction: { type: 'summarize' }, context_management: { edits: [] },
  }), (e) => e.status === 400 && /cannot be combined with context_management/.test(e.message));
}));
