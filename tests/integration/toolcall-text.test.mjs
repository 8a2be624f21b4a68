// toolcall-text.test.mjs - tool calls the model wrote as text (the upstream's own parser missed
// them) reach the Anthropic SDK as tool_use blocks, streaming and not, in every format of
// tests/fixtures/toolcall_text/; then Claude Code end to end, whose Write tool runs on a call
// written in Hermes and in Qwen3-Coder form.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { useProxy, HERE, FIXTURES_DIR, until, claudeBin, claudeEnv } from './helpers.mjs';

const env = useProxy({ name: 'toolcall-text', mock: { nCtx: 200000 } });

// A second proxy whose chain has one on_response policy that logs ctx.tool_calls.
const polDir = fs.mkdtempSync(path.join(os.tmpdir(), 'anthroxy-tct-pol-'));
after(() => fs.rmSync(polDir, { recursive: true, force: true }));
fs.writeFileSync(path.join(polDir, 'chain.lua'), 'return { { "report_tool_calls" } }\n');
fs.writeFileSync(path.join(polDir, 'report_tool_calls.lua'), `
local ax = require "anthroxy"
local M = { name = "report_tool_calls" }
function M.on_response(resp, ctx)
  local tc = ctx.tool_calls
  ax.log.info("seen tool_calls text=%d repaired=%d failures=%d first=%s", tc.text_calls,
              tc.repaired, tc.schema_failures, tostring(tc.first_failure))
end
return M
`);
const withPolicy = useProxy({ name: 'toolcall-text-policy', args: ['--policies', path.join(polDir, 'chain.lua')] });
const MODEL = 'claude-sonnet-4-5';
// A third in front of a llama-server started without --jinja: it refuses any request with tools.
const noJinja = useProxy({ name: 'toolcall-text-nojinja', mock: { nCtx: 200000, noJinja: true } });
const FX_DIR = path.join(FIXTURES_DIR, 'toolcall_text');
const fixture = (name) => JSON.parse(fs.readFileSync(path.join(FX_DIR, `${name}.json`), 'utf8'));

/** The client-visible shape of the fixture's expectation: text blocks and tool_use blocks. */
function expectedBlocks(fx) {
  return fx.expect.map((e) => (e.call !== undefined
    ? { type: 'tool_use', name: e.call, input: e.input }
    : { type: 'text', text: e.text }));
}
const shape = (content) => content.map((b) => (b.type === 'tool_use'
  ? { type: 'tool_use', name: b.name, input: b.input }
  : { type: b.type, text: b.text }));

const FORMATS = ['hermes', 'qwen3_coder', 'qwen3_coder_write', 'glm45', 'mistral_list', 'mistral_args',
  'llama_python_tag', 'llama_bare', 'deepseek_r1', 'deepseek_v31', 'two_calls', 'text_around'];

let seq = 0;
/** Scripts the mock to answer `fx.text` in pieces of pieceSize code points; returns the prompt. */
function script(fx, pieceSize) {
  const marker = `toolcall-text case <${++seq}>`;
  env.on(marker, { text: fx.text, pieceSize });
  return marker;
}

for (const name of FORMATS) {
  test(`${name}: the SDK gets tool_use blocks with typed input (complete answer)`, env.wrap(async () => {
    const fx = fixture(name);
    const marker = script(fx, 3);
    const r = await env.client.messages.create({
      model: MODEL, max_tokens: 2000, tools: fx.tools, messages: [{ role: 'user', content: marker }],
    });
    assert.deepEqual(shape(r.content), expectedBlocks(fx));
    assert.equal(r.stop_reason, 'tool_use');
    for (const b of r.content.filter((x) => x.type === 'tool_use')) assert.match(b.id, /^toolu_/);
  }));

  for (const pieceSize of [1, 4]) {
    test(`${name}: streamed in ${pieceSize}-character deltas, the SDK gets the same blocks`, env.wrap(async () => {
      const fx = fixture(name);
      const marker = script(fx, pieceSize);
      const events = [];
      const stream = env.client.messages.stream({
        model: MODEL, max_tokens: 2000, tools: fx.tools, messages: [{ role: 'user', content: marker }],
      });
      stream.on('streamEvent', (e) => events.push(e));
      const msg = await stream.finalMessage();
      assert.deepEqual(shape(msg.content), expectedBlocks(fx));
      assert.equal(msg.stop_reason, 'tool_use');
      // the grammar: consecutive indexes, one block open at a time, ids toolu_
      let open = -1;
      let next = 0;
      for (const e of events) {
        if (e.type === 'content_block_start') {
          assert.equal(open, -1, 'one open block at a time');
          assert.equal(e.index, next++);
          open = e.index;
          if (e.content_block.type === 'tool_use') assert.match(e.content_block.id, /^toolu_/);
        } else if (e.type === 'content_block_delta') {
          assert.equal(e.index, open);
        } else if (e.type === 'content_block_stop') {
          assert.equal(e.index, open);
          open = -1;
        }
      }
      assert.equal(open, -1);
      // no marker reaches the client as text
      const text = msg.content.filter((b) => b.type === 'text').map((b) => b.text).join('');
      assert.ok(!/<tool_call>|\[TOOL_CALLS\]|<\|python_tag\|>|tool▁call/.test(text), text);
    }));
  }
}

test('Qwen3-Coder string parameters are typed by the schema: "30" for a number is 30', env.wrap(async () => {
  const fx = fixture('qwen3_coder');
  const marker = script(fx, 2);
  const msg = await env.client.messages.stream({
    model: MODEL, max_tokens: 2000, tools: fx.tools, messages: [{ role: 'user', content: marker }],
  }).finalMessage();
  const call = msg.content.find((b) => b.type === 'tool_use');
  assert.ok(call, JSON.stringify(msg.content));
  const props = fx.tools.find((t) => t.name === call.name).input_schema.properties;
  const kinds = new Set();
  for (const [k, v] of Object.entries(call.input)) {
    const ty = props[k].type;
    const got = Array.isArray(v) ? 'array' : v === null ? 'null' : typeof v;
    assert.equal(got, { integer: 'number', number: 'number' }[ty] || ty, `${k}: ${JSON.stringify(v)}`);
    kinds.add(ty);
  }
  // the fixture's call has a number, a boolean, an array and an object, all strings on the wire
  assert.deepEqual([...kinds].sort(), ['array', 'boolean', 'number', 'object', 'string']);
  assert.deepEqual(call.input, { command: 'ls -la', timeout: 30, run_in_background: false, args: ['-a', '-l'], env: { A: '1' } });
}));

for (const name of ['neg_unknown_tool', 'neg_marker_like', 'neg_bare_other_json', 'cut_in_string']) {
  test(`${name}: not a call to an offered tool, so the text arrives unchanged`, env.wrap(async () => {
    const fx = fixture(name);
    for (const stream of [false, true]) {
      const marker = script(fx, 3);
      const req = { model: MODEL, max_tokens: 2000, tools: fx.tools, messages: [{ role: 'user', content: marker }] };
      const msg = stream ? await env.client.messages.stream(req).finalMessage() : await env.client.messages.create(req);
      assert.deepEqual(shape(msg.content), [{ type: 'text', text: fx.text }]);
      assert.equal(msg.stop_reason, 'end_turn');
    }
  }));
}

test('without tools offered, a call written as text stays text', env.wrap(async () => {
  const fx = fixture('hermes');
  for (const stream of [false, true]) {
    const marker = script(fx, 3);
    const req = { model: MODEL, max_tokens: 2000, messages: [{ role: 'user', content: marker }] };
    const msg = stream ? await env.client.messages.stream(req).finalMessage() : await env.client.messages.create(req);
    assert.equal(msg.content.length, 1);
    assert.equal(msg.content[0].type, 'text');
    assert.equal(msg.content[0].text, fx.text);
    assert.equal(msg.stop_reason, 'end_turn');
  }
}));

test('a call failing its schema is passed on, counted and logged', env.wrap(async () => {
  const fx = fixture('check_missing');
  const marker = script(fx, 3);
  const msg = await env.client.messages.stream({
    model: MODEL, max_tokens: 2000, tools: fx.tools, messages: [{ role: 'user', content: marker }],
  }).finalMessage();
  assert.deepEqual(shape(msg.content), expectedBlocks(fx));
  assert.equal(msg.stop_reason, 'tool_use');
  assert.ok(await until(() => /decision tool_calls: text_calls=1 repaired=0 schema_failures=1 \(passed on; first: /
    .test(env.proxy.tail(60)), 3000), 'the expected log line');
}));

test('native tool-call arguments with a trailing comma and Python literals are repaired', env.wrap(async () => {
  const tools = fixture('hermes').tools;
  const bad = '{"command": "ls -la", "run_in_background": False,}';
  for (const stream of [false, true]) {
    const marker = `native repair ${stream}`;
    env.on(marker, { toolCalls: [{ name: 'Bash', arguments: bad }] });
    const req = { model: MODEL, max_tokens: 2000, tools, messages: [{ role: 'user', content: marker }] };
    const msg = stream ? await env.client.messages.stream(req).finalMessage() : await env.client.messages.create(req);
    const call = msg.content.find((b) => b.type === 'tool_use');
    assert.ok(call, JSON.stringify(msg.content));
    assert.deepEqual(call.input, { command: 'ls -la', run_in_background: false });
    assert.equal(msg.stop_reason, 'tool_use');
  }
}));

test('on_response reads the counts in ctx.tool_calls, streaming and not', withPolicy.wrap(async () => {
  const fx = fixture('repair_python'); // one text call, repaired, failing its schema
  for (const stream of [false, true]) {
    const marker = `ctx counts ${stream}`;
    withPolicy.on(marker, { text: fx.text, pieceSize: 3 });
    const req = { model: MODEL, max_tokens: 2000, tools: fx.tools, messages: [{ role: 'user', content: marker }] };
    const msg = stream ? await withPolicy.client.messages.stream(req).finalMessage()
      : await withPolicy.client.messages.create(req);
    assert.deepEqual(shape(msg.content), expectedBlocks(fx));
    const n = stream ? 2 : 1;
    assert.ok(await until(() => (withPolicy.proxy.log().match(/seen tool_calls text=1 repaired=1 failures=1 first=\S+: /g) || [])
      .length === n, 3000), 'the expected log line');
  }
  // an answer without calls: zeros, no first failure
  withPolicy.on('ctx plain', { text: 'just text' });
  await withPolicy.client.messages.create({ model: MODEL, max_tokens: 50, messages: [{ role: 'user', content: 'ctx plain' }] });
  assert.ok(await until(() => /seen tool_calls text=0 repaired=0 failures=0 first=nil/.test(withPolicy.proxy.log()), 3000), 'the expected log line');
}));

// ---- Claude Code end to end ----

const tmpRoot = fs.mkdtempSync(path.join(os.tmpdir(), 'anthroxy-tct-'));
after(() => fs.rmSync(tmpRoot, { recursive: true, force: true }));

async function runClaude(task, cwd, proxy = env.proxy) {
  const home = fs.mkdtempSync(path.join(tmpRoot, 'home-'));
  const child = spawn(claudeBin(), ['-p', task, '--output-format', 'json', '--permission-mode', 'acceptEdits',
    '--allowedTools', 'Write,Read,Edit', '--max-turns', '6'], {
    cwd,
    stdio: ['ignore', 'pipe', 'pipe'],
    env: claudeEnv(home, proxy.url),
  });
  let out = '';
  let err = '';
  child.stdout.on('data', (d) => { out += d; });
  child.stderr.on('data', (d) => { err += d; });
  const timer = setTimeout(() => child.kill('SIGKILL'), 150000);
  const code = await new Promise((resolve) => child.on('exit', (c, s) => resolve(c ?? s)));
  clearTimeout(timer);
  let json = null;
  try { json = JSON.parse(out.trim().split('\n').pop()); } catch { /* reported below */ }
  return { code, out, err, json };
}

const WRITERS = {
  hermes: (file, content) => 'I will create the file now.\n<tool_call>\n' +
    JSON.stringify({ name: 'Write', arguments: { file_path: file, content } }) + '\n</tool_call>',
  qwen3_coder: (file, content) => '<tool_call>\n<function=Write>\n<parameter=file_path>\n' + file +
    '\n</parameter>\n<parameter=content>\n' + content + '\n</parameter>\n</function>\n</tool_call>',
};

for (const [format, write] of Object.entries(WRITERS)) {
  test(`Claude Code runs its Write tool on a call written as ${format} text`, { timeout: 180000 },
    env.wrap(async () => {
      const cwd = fs.mkdtempSync(path.join(tmpRoot, 'work-'));
      const target = path.join(cwd, `${format}.py`);
      const content = 'import os\n\nprint("<b>", 1 < 2)'; // markup-like text inside the value
      const FINAL = `Created ${format}.py.`;
      const task = `Create ${format}.py for the text tool-call test`;
      let sawTools = false;
      env.mock.script((req) => {
        const body = req.body;
        const all = body.messages.map((m) => (typeof m.content === 'string' ? m.content : JSON.stringify(m.content))).join('\n');
        if (!all.includes(task)) return { text: 'ok' }; // a side request
        sawTools = (body.tools || []).some((t) => t.function && t.function.name === 'Write');
        const done = body.messages.some((m) => m.role === 'tool');
        return done ? { text: FINAL } : { text: write(target, content), pieceSize: 5 };
      });
      const r = await runClaude(task, cwd);
      const why = `claude exit ${r.code}\nstdout: ${r.out.slice(-1500)}\nstderr: ${r.err.slice(-1500)}`;
      assert.equal(r.code, 0, why);
      assert.ok(sawTools, 'Claude Code offered its Write tool');
      assert.ok(fs.existsSync(target), why);
      assert.equal(fs.readFileSync(target, 'utf8'), content, why);
      assert.equal(r.json?.result, FINAL, why);
    }));
}

test('Claude Code against a llama-server without --jinja: tools go as text, the call comes back as tool_use',
  { timeout: 180000 }, noJinja.wrap(async () => {
    const cwd = fs.mkdtempSync(path.join(tmpRoot, 'work-'));
    const target = path.join(cwd, 'nojinja.txt');
    const content = 'written without --jinja\n';
    const task = 'Create nojinja.txt for the no-jinja test';
    const FINAL = 'Created nojinja.txt.';
    noJinja.mock.script((req) => {
      const body = req.body;
      const all = body.messages.map((m) => (typeof m.content === 'string' ? m.content : JSON.stringify(m.content))).join('\n');
      if (!all.includes(task)) return { text: 'ok' };
      if (all.includes('<tool_response>')) return { text: FINAL };
      return { text: WRITERS.hermes(target, content), pieceSize: 7 };
    });
    const r = await runClaude(task, cwd, noJinja.proxy);
    const why = `claude exit ${r.code}\nstdout: ${r.out.slice(-1500)}\nstderr: ${r.err.slice(-1500)}`;
    assert.equal(r.code, 0, why);
    assert.equal(fs.readFileSync(target, 'utf8'), content, why);
    assert.equal(r.json?.result, FINAL, why);
    const chats = noJinja.mock.chats();
    const withTools = chats.filter((q) => Array.isArray(q.body?.tools) && q.body.tools.length > 0);
    assert.equal(withTools.length, 1, 'one refusal, then the upstream is known to take no tools');
    const mine = chats.filter((q) => JSON.stringify(q.body.messages).includes(task) && !q.body.tools);
    assert.ok(mine.length >= 2, 'the task went upstream without tools, twice (call, then result)');
    const sys = mine[0].body.messages[0];
    assert.equal(sys.role, 'system');
    assert.match(sys.content, /<tools>\n\{"type":"function","function":\{"name":"[A-Za-z]+/);
    assert.match(sys.content, /"name":"Write"/);
    const last = mine[mine.length - 1].body.messages;
    assert.ok(last.every((m) => m.role !== 'tool' && !m.tool_calls), 'no tool protocol left in the history');
    assert.ok(last.some((m) => m.role === 'assistant' && /<tool_call>\n\{"name": "Write"/.test(m.content)),
      'the past call is rendered as Hermes text');
    assert.match(noJinja.proxy.log(), /takes no tools \(llama-server without --jinja\)/);
  }));
