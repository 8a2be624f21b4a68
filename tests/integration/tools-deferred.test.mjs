// tools-deferred.test.mjs - deferred tools and mid-conversation tool changes (betas
// advanced-tool-use-2025-11-20, mid-conversation-tool-changes-2026-07-01) through the SDK's
// client.beta.messages: a defer_loading tool reaches the upstream only once a tool_reference
// names it, tool_addition / tool_removal blocks change the tools the upstream gets, what cannot
// be expressed is a 400 naming the field, and the tokens saved on Claude Code 2.1.332's
// recorded request are measured (count_tokens, which counts the translated request).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { useProxy, request, assertAnthropicError, FIXTURES_DIR } from './helpers.mjs';

const env = useProxy({ name: 'tools-deferred', mock: { nCtx: 200000 } });
const BETAS = ['advanced-tool-use-2025-11-20', 'mid-conversation-tool-changes-2026-07-01'];
const tool = (name, extra = {}) => ({ name, description: `the ${name} tool`, input_schema: { type: 'object', properties: { q: { type: 'string' } } }, ...extra });
const sentTools = () => (env.mock.chats().at(-1).body.tools || []).map((t) => t.function.name);

test('a defer_loading tool is not offered until a tool_reference names it', env.wrap(async () => {
  const tools = [tool('Read'), tool('ToolSearch'), tool('Deploy', { defer_loading: true }), tool('Rollback', { defer_loading: true })];
  await env.client.beta.messages.create({ model: 'claude-sonnet-4-5', max_tokens: 50, betas: BETAS, tools, messages: [{ role: 'user', content: 'ship it' }] });
  assert.deepEqual(sentTools(), ['Read', 'ToolSearch']);
  await env.client.beta.messages.create({
    model: 'claude-sonnet-4-5', max_tokens: 50, betas: BETAS, tools,
    messages: [
      { role: 'user', content: 'ship it' },
      { role: 'assistant', content: [{ type: 'tool_use', id: 'toolu_s1', name: 'ToolSearch', input: { q: 'deploy' } }] },
      { role: 'user', content: [{ type: 'tool_result', tool_use_id: 'toolu_s1', content: [{ type: 'tool_reference', tool_name: 'Deploy' }] }] },
    ],
  });
  assert.deepEqual(sentTools(), ['Read', 'ToolSearch', 'Deploy']);
  const toolMsg = env.mock.chats().at(-1).body.messages.find((m) => m.role === 'tool');
  assert.equal(toolMsg.content, 'Tool loaded: Deploy');
}));

test('tool_addition and tool_removal: the upstream gets the set in effect at the end', env.wrap(async () => {
  const tools = [tool('Read'), tool('Bash'), tool('Later', { defer_loading: true })];
  await env.client.beta.messages.create({
    model: 'claude-sonnet-4-5', max_tokens: 50, betas: BETAS, tools,
    messages: [
      { role: 'user', content: 'list files' },
      { role: 'assistant', content: [{ type: 'tool_use', id: 'toolu_b1', name: 'Bash', input: { q: 'ls' } }] },
      { role: 'user', content: [
        { type: 'tool_result', tool_use_id: 'toolu_b1', content: 'a.c b.c' },
        { type: 'tool_removal', tool: { type: 'tool_reference', name: 'Bash' } },
        { type: 'tool_addition', tool: { type: 'tool_reference', name: 'Later' } },
        { type: 'tool_addition', tool: { type: 'tool_definition', definition: tool('Fresh') } },
        { type: 'text', text: 'go on without Bash' },
      ] },
    ],
  });
  assert.deepEqual(sentTools(), ['Read', 'Later', 'Fresh']);
  const sent = env.mock.chats().at(-1).body.messages;
  assert.equal(sent.find((m) => m.role === 'assistant').tool_calls[0].function.name, 'Bash', 'history with a removed tool still renders');
  assert.equal(sent.at(-1).content, 'go on without Bash');
}));

test('what the upstream cannot express is a 400 naming the field', env.wrap(async () => {
  const cases = [
    [{ tools: [tool('Read'), { type: 'tool_search_tool_bm25_20251119', name: 'tool_search_tool_bm25' }], messages: [{ role: 'user', content: 'x' }] },
      /tools\.1\.type: 'tool_search_tool_bm25_20251119' is Anthropic's server-side tool search/],
    [{ tools: [tool('Read')], messages: [{ role: 'user', content: [{ type: 'tool_addition', tool: { type: 'tool_reference', name: 'Nope' } }, { type: 'text', text: 'x' }] }] },
      /messages\.0\.content\.0\.tool\.name: no tool named 'Nope' in tools/],
    [{ tools: [tool('Read')], messages: [{ role: 'user', content: [{ type: 'tool_addition', tool: { type: 'mcp_toolset_reference', server_name: 's' } }, { type: 'text', text: 'x' }] }] },
      /messages\.0\.content\.0\.tool\.type: 'mcp_toolset_reference'/],
    [{ messages: [{ role: 'user', content: [{ type: 'hologram', data: 1 }] }] }, /messages\.0\.content\.0\.type: unknown block type 'hologram'/],
    [{ messages: [{ role: 'user', content: [{ type: 'container_upload', file_id: 'f' }] }] }, /messages\.0\.content\.0\.type: 'container_upload'/],
  ];
  for (const [body, re] of cases) {
    const r = await request(env.proxy, {
      method: 'POST', path: '/v1/messages', headers: { 'content-type': 'application/json' },
      body: { model: 'm', max_tokens: 10, ...body },
    });
    assertAnthropicError(r, 400, 'invalid_request_error', re);
  }
  // through the SDK the same refusal is a BadRequestError, never a 500
  await assert.rejects(env.client.beta.messages.create({ model: 'm', max_tokens: 10, betas: BETAS, messages: [{ role: 'user', content: [{ type: 'hologram' }] }] }),
    (e) => e.status === 400 && /unknown block type 'hologram'/.test(e.message));
}));

test('server-side blocks in the history pass as notes, a tool search result loads its tools', env.wrap(async () => {
  const tools = [tool('Read'), tool('Deploy', { defer_loading: true })];
  await env.client.beta.messages.create({
    model: 'claude-sonnet-4-5', max_tokens: 50, betas: BETAS, tools,
    messages: [
      { role: 'user', content: 'look it up' },
      { role: 'assistant', content: [
        { type: 'server_tool_use', id: 'srvtoolu_1', name: 'web_search', input: { query: 'q' } },
        { type: 'web_search_tool_result', tool_use_id: 'srvtoolu_1', content: [{ type: 'web_search_result', title: 'T', url: 'https://e.x', encrypted_content: 'E' }] },
        { type: 'tool_search_tool_result', tool_use_id: 'srvtoolu_2', content: { type: 'tool_search_tool_search_result', tool_references: [{ type: 'tool_reference', tool_name: 'Deploy' }] } },
        { type: 'text', text: 'Found.' },
      ] },
      { role: 'user', content: 'thanks' },
    ],
  });
  assert.deepEqual(sentTools(), ['Read', 'Deploy']);
  const a = env.mock.chats().at(-1).body.messages.find((m) => m.role === 'assistant');
  assert.match(a.content, /\[web_search_tool_result: .*https:\/\/e\.x/);
  assert.match(a.content, /Found\.$/);
}));

const CORE = new Set(['Bash', 'Read', 'Edit', 'Write', 'ToolSearch']);

test('tokens per request before and after deferring, on the recorded Claude Code requests', env.wrap(async () => {
  const count = async (body) => (await env.client.beta.messages.countTokens(body)).input_tokens;
  const strip = (t) => { const { defer_loading, ...rest } = t; return rest; };
  const rows = [];
  for (const rel of ['claude-code/2.1.332/first-turn.json', 'claude-code/first-turn.json', 'claude-code/after-tool-call.json']) {
    const req = JSON.parse(fs.readFileSync(path.join(FIXTURES_DIR, rel), 'utf8'));
    const base = { model: req.model, system: req.system, messages: req.messages };
    const all = await count({ ...base, tools: req.tools.map(strip) });
    const asSent = await count({ ...base, tools: req.tools });
    // what deferring gives when every tool but the core ones waits for a ToolSearch
    const deferredAll = await count({ ...base, tools: req.tools.map((t) => (CORE.has(t.name) ? strip(t) : { ...t, defer_loading: true })) });
    rows.push({ rel, tools: req.tools.length, all, asSent, deferredAll });
    assert.ok(asSent <= all);
    assert.ok(deferredAll < all, `${rel}: deferring must cut tokens (${deferredAll} vs ${all})`);
  }
  const r332 = rows[0];
  assert.ok(r332.asSent < r332.all, 'Claude Code 2.1.332 defers a tool: it is not sent');
  console.log('# deferred tools, input tokens per request (count_tokens, mock tokenizer):');
  for (const r of rows) console.log(`#   ${r.rel}: ${r.tools} tools, all sent ${r.all}, as recorded ${r.asSent} (-${r.all - r.asSent}), all but core deferred ${r.deferredAll} (-${r.all - r.deferredAll})`);
}));
