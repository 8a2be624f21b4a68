// policies.test.mjs - the Lua policy engine seen from outside (issue 5): hot reload of an edited
// policy, a broken edit keeping the old version, per-session monitors, compaction steering,
// and pruning (proactive, and after the upstream reports an overflow) keeping tool pairs whole.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { useProxy, request, until, sleep, ROOT, oaiText, assertAnthropicError } from './helpers.mjs';

const polDir = fs.mkdtempSync(path.join(os.tmpdir(), 'anthroxy-policies-'));
for (const f of fs.readdirSync(path.join(ROOT, 'policies'))) {
  if (f.endsWith('.lua')) fs.copyFileSync(path.join(ROOT, 'policies', f), path.join(polDir, f));
}
after(() => fs.rmSync(polDir, { recursive: true, force: true }));

// A chain of one test policy that misbehaves on request, by the last message's text.
const chaosDir = fs.mkdtempSync(path.join(os.tmpdir(), 'anthroxy-chaos-'));
after(() => fs.rmSync(chaosDir, { recursive: true, force: true }));
fs.writeFileSync(path.join(chaosDir, 'chain.lua'), 'return { { "chaos" }, { "chaos_err" } }\n');
// The second on_upstream_error reads its err argument after the first one slept.
fs.writeFileSync(path.join(chaosDir, 'chaos_err.lua'), `
local M = { name = "chaos_err" }
function M.on_upstream_error(req, ctx, err)
  if err.upstream_status == 500 then
    req.system = "after the sleep: " .. tostring(err.type) .. " " .. tostring(err.upstream_status)
    return true
  end
end
return M
`);
fs.writeFileSync(path.join(chaosDir, 'chaos.lua'), `
local ax = require "anthroxy"
local M = { name = "chaos" }
local function last_text(req)
  local c = req.messages[#req.messages].content
  if type(c) == "string" then return c end
  local t = c[1] and c[1].text
  return type(t) == "string" and t or ""
end
function M.on_request(req, ctx)
  local t = last_text(req)
  if t:find("SLEEP", 1, true) then ax.sleep(800); req.system = "slept" end
  if t:find("PCALL-LOOP", 1, true) then
    req.system = "looping"
    while true do pcall(function() while true do end end) end
  end
  if t:find("LOOP", 1, true) then req.system = "looping"; while true do end end
  if t:find("HALFWAY", 1, true) then
    req.system = "half applied"; req.temperature = 0.123; error("boom halfway")
  end
  if t:find("REJECT", 1, true) then ax.fail(403, "permission_error", "denied by policy") end
end
function M.on_upstream_error(req, ctx, err)
  if last_text(req):find("UPERR", 1, true) then ax.sleep(100) end
end
return M
`);
const chaos = useProxy({ name: 'policies-chaos', args: ['--policies', path.join(chaosDir, 'chain.lua'), '--lua-instr-budget', '2000000'] });

const N_CTX = 16384;
const env = useProxy({ name: 'policies', mock: { nCtx: N_CTX }, args: ['--policies', path.join(polDir, 'default.lua')] });
const MODEL = 'claude-sonnet-4-5';
const TOOL = { name: 'lookup', description: 'Look something up', input_schema: { type: 'object', properties: { q: { type: 'string' } } } };
const SUPP = path.join(polDir, 'agentic_supplement.lua');
const ORIGINAL = fs.readFileSync(path.join(ROOT, 'policies', 'agentic_supplement.lua'), 'utf8');
const PHRASE = 'Work by acting, not by narrating';

/** Saves like an editor: write a temporary file, then rename it over the original. */
function saveByRename(file, text) {
  const tmp = file + '.swp~';
  fs.writeFileSync(tmp, text);
  fs.renameSync(tmp, file);
}

let seq = 0;
/** Sends a request with tools; returns the system text the mock received. */
async function systemSeen(extra = {}) {
  const phrase = `policy probe ${++seq}`;
  env.on(phrase, { text: 'ok' });
  const r = await request(env.proxy, {
    method: 'POST', path: '/v1/messages', headers: extra.headers || {},
    body: { model: MODEL, max_tokens: 50, system: 'Base system.', tools: [TOOL], messages: [{ role: 'user', content: phrase }] },
  });
  assert.equal(r.status, 200, r.text);
  const rec = await env.mock.waitFor((q) => q.lastText === phrase);
  return rec.body.messages.filter((m) => m.role === 'system').map((m) => oaiText(m.content)).join('\n');
}

/** Finds any number equal to n anywhere in a JSON value. */
function containsNumber(v, n) {
  if (v === n) return true;
  if (v && typeof v === 'object') return Object.values(v).some((x) => containsNumber(x, n));
  return false;
}

before(() => { assert.ok(ORIGINAL.includes(PHRASE), 'the shipped supplement text this test edits'); });

test('hot reload: an edited policy file takes effect on the next request', env.wrap(async () => {
  assert.ok((await systemSeen()).includes(PHRASE), 'shipped text in force');
  saveByRename(SUPP, ORIGINAL.replace(PHRASE, 'HOT-RELOADED-MARKER: act'));
  const seen = await until(async () => (await systemSeen()).includes('HOT-RELOADED-MARKER'), 3000, 100);
  assert.ok(seen, 'the edit reached the upstream request within 3 s');
  assert.ok(!(await systemSeen()).includes(PHRASE));
}));

test('hot reload: a syntax error keeps the old version, and /health shows the error', env.wrap(async () => {
  saveByRename(SUPP, ORIGINAL.replace(PHRASE, 'SECOND-MARKER: act'));
  assert.ok(await until(async () => (await systemSeen()).includes('SECOND-MARKER'), 3000, 100), 'good edit loaded');
  saveByRename(SUPP, ORIGINAL.replace('local M = {', 'local M = {{ this is not lua'));
  const errSeen = await until(async () => {
    const h = await request(env.proxy, { path: '/health' });
    return /agentic_supplement\.lua/.test(JSON.stringify(h.json?.policies ?? h.json ?? {}));
  }, 3000, 100);
  assert.ok(errSeen, 'the reload error (naming the file) is in /health');
  const sys = await systemSeen();
  assert.ok(sys.includes('SECOND-MARKER'), 'the last good version stays in force');
  saveByRename(SUPP, ORIGINAL);
  assert.ok(await until(async () => (await systemSeen()).includes(PHRASE), 3000, 100), 'fixed file loads again');
}));

test('SIGHUP reloads the policies', env.wrap(async () => {
  // Written in place (no rename), then SIGHUP: the signal path works whatever the watcher saw.
  fs.writeFileSync(SUPP, ORIGINAL.replace(PHRASE, 'SIGHUP-MARKER: act'));
  env.proxy.proc.kill('SIGHUP');
  assert.ok(await until(async () => (await systemSeen()).includes('SIGHUP-MARKER'), 3000, 100));
  saveByRename(SUPP, ORIGINAL);
  assert.ok(await until(async () => (await systemSeen()).includes(PHRASE), 3000, 100));
}));

test('per-session monitors are kept apart', env.wrap(async () => {
  const send = async (session, size, how) => {
    const phrase = `session ${session} talks`;
    env.on(phrase, { text: 'noted' });
    const headers = how === 'header' ? { 'x-claude-code-session-id': session } : {};
    const body = { model: MODEL, max_tokens: 50, messages: [{ role: 'user', content: `${phrase} ${'pad '.repeat(size)}` }] };
    if (how === 'metadata') body.metadata = { user_id: JSON.stringify({ device_id: 'd', account_uuid: '', session_id: session }) };
    const r = await request(env.proxy, { method: 'POST', path: '/v1/messages', headers, body });
    assert.equal(r.status, 200, r.text);
    return (await env.mock.waitFor((q) => q.lastText.startsWith(phrase))).usage.prompt_tokens;
  };
  const a = await send('sess-aaaa', 10, 'header');
  const b = await send('sess-bbbb', 2000, 'header');
  const c = await send('sess-cccc', 500, 'metadata');
  const ctxA = await request(env.proxy, { path: '/v1/context?session=sess-aaaa' });
  const ctxB = await request(env.proxy, { path: '/v1/context?session=sess-bbbb' });
  const ctxC = await request(env.proxy, { path: '/v1/context?session=sess-cccc' });
  for (const r of [ctxA, ctxB, ctxC]) assert.equal(r.status, 200, r.text);
  assert.notDeepEqual(ctxA.json, ctxB.json);
  assert.ok(containsNumber(ctxA.json, a), `session A shows its ${a} tokens: ${ctxA.text}`);
  assert.ok(containsNumber(ctxB.json, b), `session B shows its ${b} tokens: ${ctxB.text}`);
  assert.ok(!containsNumber(ctxA.json, b), 'A does not show B\'s figure');
  assert.ok(containsNumber(ctxC.json, c), `session from metadata.user_id: ${ctxC.text}`);
  const all = await request(env.proxy, { path: '/v1/context' });
  assert.equal(all.status, 200);
  for (const s of ['sess-aaaa', 'sess-bbbb', 'sess-cccc']) assert.ok(all.text.includes(s), `summary lists ${s}`);
}));

test('compaction steering: Claude Code sees scaled input_tokens, other clients the real ones', env.wrap(async () => {
  const CC = 'claude-cli/2.1.197 (external, sdk-cli)';
  env.on('steer me', { text: 'ok' });
  const body = { model: MODEL, max_tokens: 50, messages: [{ role: 'user', content: `steer me ${'x'.repeat(4000)}` }] };
  const plain = await request(env.proxy, { method: 'POST', path: '/v1/messages', body, headers: { 'user-agent': 'my-sdk/1.0' } });
  const real = env.mock.lastChat().usage.prompt_tokens;
  assert.equal(plain.json.usage.input_tokens, real);
  const cc = await request(env.proxy, { method: 'POST', path: '/v1/messages', body, headers: { 'user-agent': CC } });
  assert.equal(cc.status, 200, cc.text);
  assert.ok(cc.json.usage.input_tokens > real * 1.5,
    `scaled for Claude Code (200k assumed vs ${N_CTX}): ${cc.json.usage.input_tokens} vs real ${real}`);
  const ct = await request(env.proxy, { method: 'POST', path: '/v1/messages/count_tokens', body, headers: { 'user-agent': CC } });
  const ctPlain = await request(env.proxy, { method: 'POST', path: '/v1/messages/count_tokens', body, headers: { 'user-agent': 'x/1' } });
  assert.ok(ct.json.input_tokens > ctPlain.json.input_tokens * 1.5, `count_tokens scaled: ${ct.text} vs ${ctPlain.text}`);
}));

// The client window the steering assumes hangs on the context-1m beta: 2.1.197 announced it
// (500k assumed), 2.1.332 does not (200k). Both captures' own headers, side by side.
test('compaction steering: one client window (CLAUDE_CODE_AUTO_COMPACT_WINDOW), the context-1m beta changes nothing',
  env.wrap(async () => {
    const hdr = (v) => {
      const f = v === '2.1.197' ? 'request-headers.json' : `${v}/request-headers.json`;
      const h = JSON.parse(fs.readFileSync(path.join(ROOT, 'tests', 'fixtures', 'claude-code', f), 'utf8')).headers;
      return { 'user-agent': h['user-agent'], 'anthropic-beta': h['anthropic-beta'] };
    };
    const [old, cur] = [hdr('2.1.197'), hdr('2.1.332')];
    assert.ok(old['anthropic-beta'].includes('context-1m'), '2.1.197 announces context-1m');
    assert.ok(!cur['anthropic-beta'].includes('context-1m'), '2.1.332 does not announce context-1m');
    env.on('beta window', { text: 'ok' });
    const body = { model: MODEL, max_tokens: 50, messages: [{ role: 'user', content: `beta window ${'y'.repeat(4000)}` }] };
    const a = await request(env.proxy, { method: 'POST', path: '/v1/messages', body, headers: old });
    const b = await request(env.proxy, { method: 'POST', path: '/v1/messages', body, headers: cur });
    assert.equal(a.status, 200, a.text);
    assert.equal(b.status, 200, b.text);
    const real = env.mock.lastChat().usage.prompt_tokens;
    assert.ok(b.json.usage.input_tokens > real, `2.1.332 steered: ${b.json.usage.input_tokens} vs real ${real}`);
    // The README's CLAUDE_CODE_AUTO_COMPACT_WINDOW wins over the beta in the client: same scale.
    assert.ok(Math.abs(a.json.usage.input_tokens - b.json.usage.input_tokens) <= 2,
      `the same client window: ${a.json.usage.input_tokens} vs ${b.json.usage.input_tokens}`);
  }));

/** A long agent conversation: user task, then n rounds of tool_use + big tool_result. */
function longConversation(n, resultBytes, marker) {
  const msgs = [{ role: 'user', content: `${marker}: the original task` }];
  for (let i = 0; i < n; i++) {
    msgs.push({ role: 'assistant', content: [{ type: 'text', text: `step ${i}` }, { type: 'tool_use', id: `toolu_${marker}_${i}`, name: 'lookup', input: { q: `q${i}` } }] });
    msgs.push({ role: 'user', content: [{ type: 'tool_result', tool_use_id: `toolu_${marker}_${i}`, content: `result ${i} ` + 'r'.repeat(resultBytes) }] });
  }
  msgs.push({ role: 'assistant', content: 'Looked everything up.' });
  msgs.push({ role: 'user', content: `${marker}: now summarise` });
  return msgs;
}

function assertPairedAndFirstKept(body, marker) {
  const msgs = body.messages.filter((m) => m.role !== 'system');
  assert.ok(oaiText(msgs[0].content).includes(`${marker}: the original task`), 'the first user message is kept');
  const called = new Set();
  for (let i = 0; i < msgs.length; i++) {
    const m = msgs[i];
    if (m.role === 'assistant') for (const tc of m.tool_calls || []) called.add(tc.id);
    if (m.role === 'tool') assert.ok(called.has(m.tool_call_id), `tool result ${m.tool_call_id} has its call`);
  }
  const answered = new Set(msgs.filter((m) => m.role === 'tool').map((m) => m.tool_call_id));
  for (const id of called) assert.ok(answered.has(id), `tool call ${id} has its result`);
  assert.ok(oaiText(msgs[msgs.length - 1].content).includes(`${marker}: now summarise`), 'the tail is kept');
}

test('pruning: a conversation over the threshold is cut to fit, tool pairs whole', env.wrap(async () => {
  env.on('PRUNE1: now summarise', { text: 'summary' });
  // 48 rounds of ~1.1 KB results at 4 bytes per token: about 14k tokens, over 0.75 of 16384
  // and under the window itself (so this is the proactive path, not the overflow one).
  const ROUNDS = 48;
  const r = await request(env.proxy, {
    method: 'POST', path: '/v1/messages',
    body: { model: MODEL, max_tokens: 200, tools: [TOOL], messages: longConversation(ROUNDS, 1100, 'PRUNE1') },
  });
  assert.equal(r.status, 200, r.text);
  const rec = await env.mock.waitFor((q) => q.lastText.includes('PRUNE1: now summarise'));
  assert.ok(rec.promptTokens <= 0.75 * N_CTX, `pruned below the threshold: ${rec.promptTokens} tokens`);
  assert.equal(env.mock.chats().filter((q) => q.lastText.includes('PRUNE1: now summarise')).length, 1, 'no overflow retry');
  assertPairedAndFirstKept(rec.body, 'PRUNE1');
}));

test('pruning after an upstream overflow: pruned by the real numbers and retried once, transparently',
  env.wrap(async () => {
    // The upstream claims the prompt is bigger than the proxy estimates (as a real tokenizer may).
    // Its tokenizer counts three times what the mock's own does, so the proxy's estimate
    // (about 8k tokens, under the prune threshold) is far too low and the first try overflows.
    env.on('PRUNE2: now summarise', (req) => ({ text: 'fits now', promptTokens: req.promptTokens * 3 }));
    const r = await request(env.proxy, {
      method: 'POST', path: '/v1/messages',
      body: { model: MODEL, max_tokens: 200, tools: [TOOL], messages: longConversation(40, 700, 'PRUNE2') },
    });
    assert.equal(r.status, 200, r.text);
    assert.equal(r.json.content[0].text, 'fits now');
    const recs = env.mock.chats().filter((q) => q.lastText.includes('PRUNE2: now summarise'));
    assert.equal(recs.length, 2, 'one retry');
    assert.ok(recs[0].promptTokens * 3 >= N_CTX, 'the first try overflowed');
    assertPairedAndFirstKept(recs[1].body, 'PRUNE2');
  }));

const post = (e, text, extra = {}) => request(e.proxy, {
  method: 'POST', path: '/v1/messages', body: { model: MODEL, max_tokens: 20, messages: [{ role: 'user', content: text }], ...extra },
});

test('engine: a policy sleeping in ax.sleep does not hold up 50 other requests', chaos.wrap(async () => {
  chaos.on('SLEEP', { text: 'woke up' });
  chaos.on('quick', { text: 'quick answer' });
  const order = [];
  const slow = post(chaos, 'SLEEP please').then((r) => { order.push('slow'); return r; });
  await sleep(50);
  const quick = await Promise.all(Array.from({ length: 50 }, (_, i) => post(chaos, `quick ${i}`).then((r) => { order.push('quick'); return r; })));
  for (const r of quick) assert.equal(r.status, 200, r.text);
  const s = await slow;
  assert.equal(s.status, 200, s.text);
  assert.equal(order.indexOf('slow'), 50, 'the sleeping request finished last');
  const up = await chaos.mock.waitFor((q) => q.lastText === 'SLEEP please');
  assert.equal(oaiText(up.body.messages[0].content), 'slept', 'its write after the sleep was committed');
}));

test('engine: an infinite loop is stopped by the budget, the request goes on unchanged', chaos.wrap(async () => {
  chaos.on('LOOP', { text: 'survived' });
  for (const text of ['LOOP forever', 'PCALL-LOOP forever']) {
    const r = await post(chaos, text);
    assert.equal(r.status, 200, r.text);
    assert.equal(r.json.content[0].text, 'survived');
    const up = await chaos.mock.waitFor((q) => q.lastText === text);
    assert.ok(!up.body.messages.some((m) => m.role === 'system'), `${text}: no half-applied system`);
  }
  const h = await request(chaos.proxy, { path: '/health' });
  assert.ok((h.json.policies?.budget_kills ?? 0) >= 2, `budget kills counted: ${JSON.stringify(h.json.policies)}`);
}));

test('engine: a policy that errors halfway leaves the request exactly as it was', chaos.wrap(async () => {
  chaos.on('HALFWAY', { text: 'unchanged' });
  const r = await post(chaos, 'HALFWAY there', { temperature: 0.5 });
  assert.equal(r.status, 200, r.text);
  const up = await chaos.mock.waitFor((q) => q.lastText === 'HALFWAY there');
  assert.equal(up.body.temperature, 0.5);
  assert.ok(!up.body.messages.some((m) => m.role === 'system'));
  assert.match(chaos.proxy.log(), /boom halfway/, 'the error is logged');
  assert.match(chaos.proxy.log(), /chaos\.lua:\d+/, 'with file and line');
}));

test('engine: a later on_upstream_error reads its err after an earlier one slept', chaos.wrap(async () => {
  let n = 0;
  chaos.on('UPERR', () => (n++ === 0
    ? { status: 500, body: { error: { code: 500, message: 'flaky', type: 'server_error' } } }
    : { text: 'second try' }));
  const r = await post(chaos, 'UPERR then retry');
  assert.equal(r.status, 200, r.text);
  assert.equal(r.json.content[0].text, 'second try');
  const ups = chaos.mock.chats().filter((q) => q.lastText === 'UPERR then retry');
  assert.equal(ups.length, 2, 'retried once');
  assert.equal(oaiText(ups[1].body.messages[0].content), 'after the sleep: api_error 500');
}));

test('engine: ax.fail rejects the request with the policy\'s error', chaos.wrap(async () => {
  const before = chaos.mock.chats().length;
  const r = await post(chaos, 'REJECT me');
  assertAnthropicError(r, 403, 'permission_error', /denied by policy/);
  assert.equal(chaos.mock.chats().length, before, 'nothing went upstream');
}));
