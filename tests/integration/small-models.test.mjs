// small-models.test.mjs - the opt-in policies for small local models (issue 11), each end to
// end: the real binary with a chain that turns all of them on (with a model profile), the
// real SDK and Claude Code as clients, and the scripted mock playing a model that stumbles:
// it repeats a tool call, writes arguments off the schema, thinks for the whole max_tokens,
// leaks <|im_start|> into its text. Each test asserts what the mock received (the policy's
// decision made upstream), what the client got, and the decision's log line; the last test
// reads every decision's counter back from /v1/experiments.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { useProxy, request, HERE, ROOT, oaiText, until, claudeBin, claudeEnv } from './helpers.mjs';

const polDir = fs.mkdtempSync(path.join(os.tmpdir(), 'anthroxy-small-'));
const tmpRoot = fs.mkdtempSync(path.join(os.tmpdir(), 'anthroxy-small-cc-'));
after(() => {
  fs.rmSync(polDir, { recursive: true, force: true });
  fs.rmSync(tmpRoot, { recursive: true, force: true });
});
for (const f of fs.readdirSync(path.join(ROOT, 'policies'))) {
  if (f.endsWith('.lua')) fs.copyFileSync(path.join(ROOT, 'policies', f), path.join(polDir, f));
}
// Every policy of the issue on, one line each; tool_turn_caps through a profile of the mock's
// model (a Qwen3-Coder), with another profile that must not apply.
fs.writeFileSync(path.join(polDir, 'chain.lua'), `
local profiles = {
  ["qwen3%-coder"] = { tool_turn_caps = { max_tokens = 3000, temperature = 0.15 } },
  ["llama"] = { tool_turn_caps = { max_tokens = 1000, temperature = 0.9 } },
}
return {
  { "loop_breaker" },
  { "tool_retry", budget = 2 },
  { "contamination_reset", faults = 3, keep_turns = 2 },
  { "tool_narrowing", max_tools = 6, always = "Read,Write,Edit,Bash" },
  { "thinking_control", mode = "tool_turns" },
  { "max_tokens", floor = 16384, margin = 0.15 },
  { "tool_turn_caps", profiles = profiles },
}
`);

const MODEL_ID = 'Qwen3-Coder-30B-A3B-Instruct-Q4_K_M';
const env = useProxy({
  name: 'small-models', mock: { nCtx: 200000, model: MODEL_ID },
  args: ['--policies', path.join(polDir, 'chain.lua')],
});
const MODEL = 'claude-sonnet-4-5';

const tool = (name, description, properties = {}, required = []) => ({
  name, description, input_schema: { type: 'object', properties, required, additionalProperties: false },
});
const READ = tool('Read', 'Read a file from the local filesystem',
  { file_path: { type: 'string' }, offset: { type: 'integer' } }, ['file_path']);
const BASH = tool('Bash', 'Run a shell command', { command: { type: 'string' } }, ['command']);

const lastOf = (body) => body.messages[body.messages.length - 1];
const allText = (body) => body.messages.map((m) => oaiText(m.content)).join('\n');
const toolMsgs = (body) => body.messages.filter((m) => m.role === 'tool');

// Replies chosen by a marker anywhere in the conversation (not only its last message: in an
// agent loop the last message is a tool result), function of the recorded request or object.
const replies = new Map();
function on(marker, reply) {
  replies.set(marker, reply);
  env.mock.script((req) => {
    const text = allText(req.body);
    for (const [m, r] of replies) {
      if (text.includes(m)) { req.marker = m; return typeof r === 'function' ? r(req) : r; }
    }
    return { text: 'ok' }; // Claude Code's side requests (titles, summaries)
  });
}

/** POST /v1/messages with raw HTTP (headers such as x-session-id are ours to choose). */
async function post(body, headers = {}) {
  const r = await request(env.proxy, { method: 'POST', path: '/v1/messages', headers, body: { model: MODEL, max_tokens: 20000, ...body } });
  assert.equal(r.status, 200, r.text);
  return r.json;
}

/** Resolves with the proxy's log once it contains `needle` (the decision line). */
async function logLine(needle) {
  const ok = await until(() => env.proxy.log().includes(needle), 3000);
  assert.ok(ok, `log line "${needle}" missing`);
}

// ---- loop_breaker --------------------------------------------------------------------------

/** A conversation where the model called Read(a.txt) n times and got the same text each time. */
function readLoop(marker, n) {
  const messages = [{ role: 'user', content: `${marker}: fix the bug in a.txt` }];
  for (let i = 1; i <= n; i++) {
    messages.push({ role: 'assistant', content: [{ type: 'tool_use', id: `toolu_r${i}`, name: 'Read', input: { file_path: 'a.txt' } }] });
    messages.push({ role: 'user', content: [{ type: 'tool_result', tool_use_id: `toolu_r${i}`, content: 'line 1: x = 1' }] });
  }
  return messages;
}

test('loop_breaker: three repeats get a note, five finish the turn without tools', env.wrap(async () => {
  on('LOOP-SDK', { text: 'I keep reading a.txt and it does not change; how should I go on?' });
  await post({ tools: [READ, BASH], messages: readLoop('LOOP-SDK', 2) });
  let up = env.mock.lastChat().body;
  assert.ok(!allText(up).includes('[anthroxy: loop detected]'), 'two repeats: no note');
  assert.equal(up.tools.length, 2);

  await post({ tools: [READ, BASH], messages: readLoop('LOOP-SDK', 3) });
  up = env.mock.lastChat().body;
  assert.match(oaiText(lastOf(up).content), /\[anthroxy: loop detected\] You have made this same tool call 3 times/);
  assert.equal(up.tools.length, 2, 'a note only: the tools stay');
  await logLine('loop_breaker: note to the model: 3 identical calls');

  const answer = await post({ tools: [READ, BASH], tool_choice: { type: 'any' }, messages: readLoop('LOOP-SDK', 5) });
  up = env.mock.lastChat().body;
  assert.equal(up.tools, undefined, 'finishing: no tools upstream');
  assert.equal(up.tool_choice, undefined);
  assert.ok(up.max_tokens <= 512, `a short answer: max_tokens ${up.max_tokens}`);
  assert.match(allText(up), /tell the user that you were repeating this call/);
  assert.equal(answer.stop_reason, 'end_turn');
  assert.deepEqual(answer.content.map((b) => b.type), ['text'], 'the client gets text for the user');
  await logLine('loop_breaker: finish the turn: 5 identical calls');
}));

// ---- tool_narrowing ------------------------------------------------------------------------

const MANY = [READ, BASH, tool('Write', 'Write a file', { file_path: { type: 'string' }, content: { type: 'string' } }),
  tool('Edit', 'Edit a file', { file_path: { type: 'string' } })];
for (let i = 0; i < 26; i++) MANY.push(tool(`mcp__svc${i}__op`, `Operation number ${i} of service ${i}`));
MANY.push(tool('mcp__github__create_issue', 'Open an issue in a GitHub repository', { title: { type: 'string' } }));

test('tool_narrowing: 31 tools offered, the relevant few sent; widened when the model asks for a dropped one', env.wrap(async () => {
  on('NARROW-1', { text: 'ok' });
  await post({ tools: MANY, messages: [{ role: 'user', content: 'NARROW-1: open a github issue about the crash' }] });
  let names = env.mock.lastChat().body.tools.map((t) => t.function.name);
  assert.deepEqual(names, ['Read', 'Bash', 'Write', 'Edit', 'mcp__github__create_issue']);
  await logLine('tool_narrowing: sent 5 of 31 tools');

  on('NARROW-2', { text: 'ok' });
  await post({
    tools: MANY, messages: [
      { role: 'user', content: 'do the usual thing' },
      { role: 'assistant', content: '<tool_call>{"name": "mcp__svc7__op", "arguments": {}}</tool_call>' },
      { role: 'user', content: 'NARROW-2: well?' },
    ],
  });
  names = env.mock.lastChat().body.tools.map((t) => t.function.name);
  assert.equal(names.length, 31, 'widened to every tool');
  await logLine('tool_narrowing: widened to all 31 tools (the model asked for mcp__svc7__op');
}));

// ---- thinking_control ----------------------------------------------------------------------

test('thinking_control: off on tool-result turns (enable_thinking, reasoning_budget_tokens)', env.wrap(async () => {
  on('THINK-TOOL', { text: 'done' });
  await post({
    tools: [READ], thinking: { type: 'enabled', budget_tokens: 4000 },
    messages: [
      { role: 'user', content: 'THINK-TOOL: read a.txt' },
      { role: 'assistant', content: [{ type: 'tool_use', id: 'toolu_t1', name: 'Read', input: { file_path: 'a.txt' } }] },
      { role: 'user', content: [{ type: 'tool_result', tool_use_id: 'toolu_t1', content: 'x' }] },
    ],
  });
  const up = env.mock.chats().filter((c) => allText(c.body).includes('THINK-TOOL')).pop().body;
  assert.deepEqual(up.chat_template_kwargs, { enable_thinking: false });
  assert.equal(up.reasoning_budget_tokens, 0);
  on('THINK-FIRST', { text: 'hello' });
  await post({ thinking: { type: 'enabled', budget_tokens: 4000 }, messages: [{ role: 'user', content: 'THINK-FIRST: design a cache' }] });
  const first = env.mock.lastChat().body;
  assert.deepEqual(first.chat_template_kwargs, { enable_thinking: true }, 'a first turn keeps thinking');
  assert.equal(first.reasoning_budget_tokens, undefined);
}));

test('thinking_control: a streamed answer that only thinks until max_tokens -> the next request goes without thinking', env.wrap(async () => {
  const session = { 'x-session-id': 'runaway-session-1' };
  on('RUNAWAY', (req) => (req.body.chat_template_kwargs?.enable_thinking === false
    ? { text: 'A short answer without thinking.' }
    : { reasoning: 'hmm '.repeat(400), text: '' }));
  const ask = (text, extra = {}) => ({ model: MODEL, max_tokens: 60, messages: [{ role: 'user', content: text }], ...extra });
  const stream = await request(env.proxy, { method: 'POST', path: '/v1/messages', headers: session, body: ask('RUNAWAY: explain monads', { stream: true }) });
  assert.equal(stream.status, 200);
  assert.match(stream.text, /"stop_reason":"max_tokens"/);
  assert.match(stream.text, /"thinking_delta"/);
  assert.ok(!stream.text.includes('"text_delta"'), 'no text in the runaway answer');
  assert.equal(env.mock.lastChat().body.chat_template_kwargs, undefined, 'thinking left alone on a first turn');
  await logLine('thinking_control: the answer spent max_tokens thinking and said nothing (1 in a row)');

  const r = await request(env.proxy, { method: 'POST', path: '/v1/messages', headers: session, body: ask('RUNAWAY: explain monads') });
  assert.equal(r.status, 200, r.text);
  const up = env.mock.lastChat().body;
  assert.deepEqual(up.chat_template_kwargs, { enable_thinking: false });
  assert.equal(up.reasoning_budget_tokens, 0);
  assert.equal(r.json.content.find((b) => b.type === 'text').text, 'A short answer without thinking.');
  await logLine('thinking_control: thinking off (retry: the last answer spent max_tokens thinking)');

  // That answer was a good one: the session's count is back to 0, thinking is the model's again.
  const again = await request(env.proxy, { method: 'POST', path: '/v1/messages', headers: session, body: ask('RUNAWAY: once more') });
  assert.equal(again.status, 200);
  assert.equal(env.mock.lastChat().body.chat_template_kwargs, undefined);
  // Another session is not affected by this one's runaway.
  await request(env.proxy, { method: 'POST', path: '/v1/messages', headers: { 'x-session-id': 'runaway-session-2' }, body: ask('RUNAWAY: other') });
  assert.equal(env.mock.lastChat().body.chat_template_kwargs, undefined);
}));

// ---- contamination_reset -------------------------------------------------------------------

test('contamination_reset: a model leaking <|im_start|> has its history cut after three faults', env.wrap(async () => {
  on('CONTAM-TASK', (req) => {
    const k = toolMsgs(req.body).length;
    return { text: `Step ${k}.<|im_start|>assistant`, toolCalls: [{ name: 'Read', arguments: { file_path: `f${k}.txt` } }] };
  });
  const messages = [{ role: 'user', content: 'CONTAM-TASK: read the files one by one' }];
  const seen = [];
  for (let turn = 0; turn < 4; turn++) {
    const a = await post({ tools: [READ], messages });
    seen.push(env.mock.lastChat().body);
    const uses = a.content.filter((b) => b.type === 'tool_use');
    assert.equal(uses.length, 1, JSON.stringify(a.content));
    assert.ok(a.content.some((b) => b.type === 'text' && b.text.includes('<|im_start|>')), 'the leak reaches the client');
    messages.push({ role: 'assistant', content: a.content });
    messages.push({ role: 'user', content: [{ type: 'tool_result', tool_use_id: uses[0].id, content: `contents of file ${turn}` }] });
  }
  // Requests 1-3 carried 0, 1, 2 leaked turns: unchanged. The 4th carries 3: cut.
  for (let i = 0; i < 3; i++) assert.ok(!allText(seen[i]).includes('[anthroxy: history reset]'), `request ${i + 1} not cut`);
  const cut = seen[3];
  assert.ok(allText(cut).includes('[anthroxy: history reset]'), 'marker in the cut request');
  assert.ok(!allText(cut).includes('<|im_start|>'), 'leaked tokens scrubbed from what is kept');
  assert.equal(toolMsgs(cut).length, 2, 'the task and the last two turns');
  assert.ok(oaiText(cut.messages.find((m) => m.role === 'user').content).startsWith('CONTAM-TASK'), 'the task stays first');
  await logLine('contamination_reset: reset: removed 2 messages, kept the task and 2 turns');
}));

// ---- tool_turn_caps and profiles -----------------------------------------------------------

test('tool_turn_caps: the Qwen3-Coder profile caps max_tokens and temperature on tool turns only', env.wrap(async () => {
  on('CAPS-', { text: 'ok' });
  await post({ tools: [READ], temperature: 0.7, messages: [{ role: 'user', content: 'CAPS-1: read a.txt' }] });
  let up = env.mock.lastChat().body;
  assert.equal(up.temperature, 0.7, 'not a tool turn');
  assert.ok(up.max_tokens > 3000);
  await post({
    tools: [READ], temperature: 0.7, messages: [
      { role: 'user', content: 'read a.txt' },
      { role: 'assistant', content: [{ type: 'tool_use', id: 'toolu_c1', name: 'Read', input: { file_path: 'a.txt' } }] },
      { role: 'user', content: [{ type: 'tool_result', tool_use_id: 'toolu_c1', content: 'CAPS-2 x' }] },
    ],
  });
  up = env.mock.lastChat().body;
  assert.equal(up.max_tokens, 3000, 'the qwen3%-coder profile, not the default 8192 nor llama\'s 1000');
  assert.equal(up.temperature, 0.15);
  await logLine(`tool_turn_caps: tool turn, max_tokens 20000 -> 3000, temperature 0.7 -> 0.15 (model ${MODEL_ID}, profile qwen3%-coder)`);
}));

// ---- tool_retry ----------------------------------------------------------------------------

test('tool_retry: a call off the schema, rejected by the client, is retried at low temperature with the errors', env.wrap(async () => {
  on('RETRY-SDK', { text: 'fixed' });
  await post({
    tools: [READ], temperature: 0.7, messages: [
      { role: 'user', content: 'RETRY-SDK: read a.txt' },
      { role: 'assistant', content: [{ type: 'tool_use', id: 'toolu_b1', name: 'Read', input: { path: 'a.txt', offset: '3' } }] },
      { role: 'user', content: [{ type: 'tool_result', tool_use_id: 'toolu_b1', is_error: true, content: '<tool_use_error>InputValidationError: Read failed</tool_use_error>' }] },
    ],
  });
  const up = env.mock.lastChat().body;
  assert.equal(up.temperature, 0.1);
  const note = oaiText(toolMsgs(up)[0].content);
  assert.match(note, /\[anthroxy: tool_retry\] The arguments of this Read call do not match its input_schema/);
  assert.match(note, /missing required property "file_path"/);
  assert.match(note, /offset must be an integer, not "3"/);
  await logLine('tool_retry: retrying Read at temperature 0.1');
}));

// ---- Claude Code end to end ----------------------------------------------------------------

/** `claude -p task` in a fresh HOME and cwd, as a user runs it. */
async function runClaude(task, cwd, { timeoutMs = 150000, extraEnv = {} } = {}) {
  const home = fs.mkdtempSync(path.join(tmpRoot, 'home-'));
  const child = spawn(claudeBin(), ['-p', task, '--output-format', 'json', '--permission-mode', 'acceptEdits',
    '--allowedTools', 'Write,Read,Edit', '--max-turns', '14'], {
    cwd,
    stdio: ['ignore', 'pipe', 'pipe'],
    env: claudeEnv(home, env.proxy.url, extraEnv),
  });
  let out = '';
  let err = '';
  child.stdout.on('data', (d) => { out += d; });
  child.stderr.on('data', (d) => { err += d; });
  const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
  const code = await new Promise((resolve) => child.on('exit', (c, s) => resolve(c ?? s)));
  clearTimeout(timer);
  let json = null;
  try { json = JSON.parse(out.trim().split('\n').pop()); } catch { /* reported by the caller */ }
  return { code, out, err, json };
}
const explain = (r) => `claude exit ${r.code}\nstdout: ${r.out.slice(-1500)}\nstderr: ${r.err.slice(-1500)}`;

test('Claude Code: a model that reads the same file forever is stopped by loop_breaker and tells the user', { timeout: 200000 }, env.wrap(async () => {
  const cwd = fs.mkdtempSync(path.join(tmpRoot, 'work-'));
  const file = path.join(cwd, 'data.txt');
  fs.writeFileSync(file, 'value = 42\n');
  const FINAL = 'I was stuck re-reading data.txt without progress. How would you like me to continue?';
  const seen = [];
  on('LOOP-CC', (req) => {
    seen.push(req.body);
    if (!req.body.tools || req.body.tools.length === 0) return { text: FINAL };
    if (toolMsgs(req.body).length >= 12) return { text: 'the loop was never broken' };
    return { toolCalls: [{ name: 'Read', arguments: { file_path: file } }] };
  });
  const r = await runClaude('LOOP-CC: what is the value in data.txt?', cwd);
  assert.equal(r.code, 0, explain(r));
  assert.equal(r.json?.result, FINAL, explain(r));
  const finish = seen.find((b) => !b.tools);
  assert.ok(finish, 'a request went upstream without tools');
  assert.match(allText(finish), /\[anthroxy: loop detected\]/);
  // contamination_reset cuts the looping history too, so count the model's turns instead.
  const n = seen.filter((b) => b.tools).length;
  assert.equal(n, 5, 'finished after finish_at (5) identical reads, the reminders Claude Code sends as system messages notwithstanding');
  assert.equal(seen.indexOf(finish), n, 'the turn after the last read was the finishing one');
  // Claude Code sent its 12 tools: tool_narrowing sent 6 until the loop made it widen.
  const counts = seen.map((b) => (b.tools ? b.tools.length : 0));
  assert.deepEqual(counts.slice(0, 3), [6, 6, 6], counts.join(','));
  // widened to all 12 (the log line below); the one Claude Code defers (defer_loading) stays
  // out upstream until a tool_reference loads it (docs/translation.md)
  assert.ok(Math.max(...counts) > 6, `widened while looping: ${counts.join(',')}`);
  await logLine('tool_narrowing: widened to all 12 tools (the same tool call repeats)');
  await logLine('loop_breaker: finish the turn');
}));

test('Claude Code: a Write call missing its content is retried by tool_retry and the file is written', { timeout: 200000 }, env.wrap(async () => {
  const cwd = fs.mkdtempSync(path.join(tmpRoot, 'work-'));
  const target = path.join(cwd, 'out.txt');
  const FINAL = 'Wrote out.txt.';
  const seen = [];
  on('RETRY-CC', (req) => {
    seen.push(req.body);
    const tools = toolMsgs(req.body);
    const last = tools.length ? oaiText(tools[tools.length - 1].content) : '';
    // Claude Code itself maps `path` to `file_path`: a missing `content` it cannot guess.
    if (tools.length === 0) return { toolCalls: [{ name: 'Write', arguments: { file_path: target, text: 'retried\n' } }] };
    if (last.includes('[anthroxy: tool_retry]')) return { toolCalls: [{ name: 'Write', arguments: { file_path: target, content: 'retried\n' } }] };
    return { text: FINAL };
  });
  const r = await runClaude('RETRY-CC: create out.txt containing: retried', cwd);
  assert.equal(r.code, 0, explain(r));
  assert.ok(fs.existsSync(target), explain(r) + '\n' + JSON.stringify(env.mock.chats().slice(-3).map((c) => [c.marker, c.body.messages.slice(-1)])).slice(0, 3000));
  assert.equal(fs.readFileSync(target, 'utf8'), 'retried\n', explain(r));
  assert.equal(r.json?.result, FINAL, explain(r));
  const retry = seen.find((b) => toolMsgs(b).length === 1);
  assert.ok(retry, 'the request after the failed call');
  assert.match(oaiText(toolMsgs(retry)[0].content), /InputValidationError/, 'Claude Code rejected the call');
  assert.match(oaiText(toolMsgs(retry)[0].content), /missing required property "content"/);
  assert.equal(retry.temperature, 0.1);
  await logLine('tool_retry: retrying Write at temperature 0.1');
}));

// ---- the figures ---------------------------------------------------------------------------

test('each policy\'s decisions show in /v1/experiments', env.wrap(async () => {
  const r = await request(env.proxy, { path: '/v1/experiments' });
  assert.equal(r.status, 200, r.text);
  const arm = r.json.arms.find((a) => a.name === 'default');
  const c = arm.counters;
  const atLeast = (pol, name, n) => assert.ok((c[pol]?.[name] ?? 0) >= n, `${pol}.${name} >= ${n}: ${JSON.stringify(c)}`);
  atLeast('loop_breaker', 'note', 1);
  atLeast('loop_breaker', 'finish', 2); // the SDK's conversation and Claude Code's
  atLeast('tool_retry', 'retry', 2);
  atLeast('tool_narrowing', 'narrowed', 2);
  atLeast('tool_narrowing', 'widen', 2);
  atLeast('thinking_control', 'tool_turn', 1);
  atLeast('thinking_control', 'runaway', 1);
  atLeast('thinking_control', 'retry', 1);
  atLeast('contamination_reset', 'reset', 1);
  atLeast('tool_turn_caps', 'max_tokens', 1);
  atLeast('tool_turn_caps', 'temperature', 1);
  assert.equal(c.tool_retry.passed ?? 0, 0, 'no retry was refused in these runs');
}));

test('Claude Code: an answer that thinks through max_tokens is retried without thinking', { timeout: 200000 }, env.wrap(async () => {
  const cwd = fs.mkdtempSync(path.join(tmpRoot, 'work-'));
  const FINAL = 'Monads chain computations that carry context.';
  const seen = [];
  on('CC-MONADS', (req) => {
    seen.push(req.body);
    if (req.body.chat_template_kwargs?.enable_thinking === false) return { text: FINAL };
    return { reasoning: 'hmm '.repeat(13000), text: '' }; // 17,334 pieces: past max_tokens
  });
  const r = await runClaude('CC-MONADS: explain monads in one sentence', cwd,
    { extraEnv: { CLAUDE_CODE_MAX_OUTPUT_TOKENS: '16384' } });
  assert.equal(r.code, 0, explain(r));
  assert.equal(r.json?.result, FINAL, explain(r));
  assert.ok(seen.length >= 2, `a retry went upstream: ${seen.length} requests`);
  assert.notEqual(seen[0].chat_template_kwargs?.enable_thinking, false, 'the first try was left alone');
  const retry = seen[seen.length - 1];
  assert.equal(retry.chat_template_kwargs.enable_thinking, false);
  assert.equal(retry.reasoning_budget_tokens, 0);
  await logLine('thinking_control: the answer spent max_tokens thinking and said nothing');
  await logLine('thinking_control: thinking off (retry:');
}));
