// claude-code.test.mjs - Claude Code itself (pinned in package.json), run as a user runs it in
// print mode, through anthroxy against the scripted mock llama-server. The mock answers by the
// conversation's content: the first turn calls Claude Code's own tools (names and schemas taken
// from what Claude Code sent), the last one answers in text.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {
  useProxy, startProxy, waitUpstreamProbed, HERE, oaiText, request, FIXTURES_DIR, startRecorder, betas, claudeBin, claudeEnv,
} from './helpers.mjs';

// A window large enough for Claude Code's ~20k-token fixed prefix, so no policy prunes.
const env = useProxy({ name: 'claude-code', mock: { nCtx: 200000 } });
const tmpRoot = fs.mkdtempSync(path.join(os.tmpdir(), 'anthroxy-cc-'));
/** The installed (pinned) Claude Code version, e.g. "2.1.332". */
const CC_VERSION = JSON.parse(fs.readFileSync(path.join(HERE, 'node_modules', '@anthropic-ai', 'claude-code', 'package.json'), 'utf8')).version;
const CC_DIR = path.join(FIXTURES_DIR, 'claude-code');
after(() => fs.rmSync(tmpRoot, { recursive: true, force: true }));

/** Runs `claude -p task` in a fresh HOME and cwd; returns { code, out, err, json, cwd }. */
async function runClaude(task, { cwd, timeoutMs = 120000, baseUrl, apiKey = 'dummy' } = {}) {
  const home = fs.mkdtempSync(path.join(tmpRoot, 'home-'));
  const args = ['-p', task, '--output-format', 'json', '--permission-mode', 'acceptEdits',
    '--allowedTools', 'Write,Read,Edit', '--max-turns', '8'];
  const child = spawn(claudeBin(), args, {
    cwd,
    stdio: ['ignore', 'pipe', 'pipe'],
    env: claudeEnv(home, baseUrl || env.proxy.url, { apiKey }),
  });
  let out = '';
  let err = '';
  child.stdout.on('data', (d) => { out += d; });
  child.stderr.on('data', (d) => { err += d; });
  const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
  const code = await new Promise((resolve) => child.on('exit', (c, s) => resolve(c ?? s)));
  clearTimeout(timer);
  let json = null;
  try { json = JSON.parse(out.trim().split('\n').pop()); } catch { /* reported below */ }
  return { code, out, err, json };
}

const toolMsgs = (body) => body.messages.filter((m) => m.role === 'tool');
const allText = (body) => body.messages.map((m) => oaiText(m.content)).join('\n');
/** Claude Code's own tool whose parameters have all these properties (its file tools). */
function findTool(body, props) {
  return (body.tools || []).map((t) => t.function).find((f) => f && f.parameters && f.parameters.properties &&
    props.every((p) => p in f.parameters.properties));
}

/** Scripts the mock for a task: `turns[k]` answers the request with k tool results so far. */
function scriptTask(marker, turns, { reasoning = false } = {}) {
  const seen = [];
  env.mock.script((req) => {
    const body = req.body;
    if (!allText(body).includes(marker)) return { text: 'ok' }; // a side request
    const k = toolMsgs(body).length;
    seen.push(req);
    const turn = turns[Math.min(k, turns.length - 1)](body);
    if (reasoning) turn.reasoning = `Reasoning for turn ${k}: I will do the next step.`;
    return turn;
  });
  return seen;
}

function explain(r) {
  return `claude exit ${r.code}\nstdout: ${r.out.slice(-2000)}\nstderr: ${r.err.slice(-2000)}`;
}

test('Claude Code writes a file with its own Write tool, then reports', { timeout: 180000 }, env.wrap(async () => {
  const cwd = fs.mkdtempSync(path.join(tmpRoot, 'work-'));
  const target = path.join(cwd, 'hello.txt');
  const FINAL = 'I created hello.txt with the requested content.';
  let writeTool = null;
  const seen = scriptTask('Create hello.txt', [
    (body) => {
      writeTool = findTool(body, ['file_path', 'content']);
      if (!writeTool) return { text: 'no file tool offered' };
      return { toolCalls: [{ name: writeTool.name, arguments: { file_path: target, content: 'hello from anthroxy\n' } }] };
    },
    () => ({ text: FINAL }),
  ]);
  const r = await runClaude('Create hello.txt containing exactly: hello from anthroxy', { cwd });
  assert.equal(r.code, 0, explain(r));
  assert.ok(writeTool, 'the mock saw a file-writing tool among the tools Claude Code sent');
  assert.equal(writeTool.name, 'Write');
  assert.deepEqual(writeTool.parameters.required.slice().sort(), ['content', 'file_path']);
  assert.equal(fs.readFileSync(target, 'utf8'), 'hello from anthroxy\n');
  assert.ok(r.json, explain(r));
  assert.equal(r.json.is_error, false, explain(r));
  assert.equal(r.json.result, FINAL);
  // Streaming all the way; the tool call and its result paired by id.
  assert.ok(seen.every((q) => q.body.stream === true));
  const second = seen.find((q) => toolMsgs(q.body).length === 1).body;
  const asst = second.messages.find((m) => m.role === 'assistant' && m.tool_calls);
  assert.equal(asst.tool_calls[0].function.name, 'Write');
  assert.equal(toolMsgs(second)[0].tool_call_id, asst.tool_calls[0].id);
  const roles = second.messages.map((m) => m.role);
  assert.ok(roles.slice(1).every((x) => x !== 'system'), `only a leading system message: ${roles}`);
}));

test('Claude Code reads, edits, then answers', { timeout: 180000 }, env.wrap(async () => {
  const cwd = fs.mkdtempSync(path.join(tmpRoot, 'work-'));
  const file = path.join(cwd, 'notes.txt');
  fs.writeFileSync(file, 'colour: red\nsize: large\n');
  const FINAL = 'Changed the colour from red to blue.';
  const seen = scriptTask('In notes.txt', [
    (body) => ({ toolCalls: [{ name: findTool(body, ['file_path', 'offset']).name, arguments: { file_path: file } }] }),
    (body) => ({
      toolCalls: [{
        name: findTool(body, ['file_path', 'old_string', 'new_string']).name,
        arguments: { file_path: file, old_string: 'colour: red', new_string: 'colour: blue' },
      }],
    }),
    () => ({ text: FINAL }),
  ]);
  const r = await runClaude('In notes.txt change the colour red to blue.', { cwd });
  assert.equal(r.code, 0, explain(r));
  assert.equal(fs.readFileSync(file, 'utf8'), 'colour: blue\nsize: large\n', explain(r));
  assert.equal(r.json?.result, FINAL, explain(r));
  const afterRead = seen.find((q) => toolMsgs(q.body).length === 1);
  assert.ok(afterRead, 'a turn after the Read');
  assert.ok(oaiText(toolMsgs(afterRead.body)[0].content).includes('colour: red'), 'the Read result reached the model');
  const last = seen.find((q) => toolMsgs(q.body).length === 2).body;
  const calls = last.messages.filter((m) => m.role === 'assistant' && m.tool_calls).map((m) => m.tool_calls[0].function.name);
  assert.deepEqual(calls, ['Read', 'Edit']);
}));

test('Claude Code with a reasoning model replays its thinking through the proxy', { timeout: 180000 },
  env.wrap(async () => {
    const cwd = fs.mkdtempSync(path.join(tmpRoot, 'work-'));
    const target = path.join(cwd, 'thought.txt');
    const FINAL = 'Done after thinking.';
    const seen = scriptTask('Create thought.txt', [
      (body) => ({ toolCalls: [{ name: findTool(body, ['file_path', 'content']).name, arguments: { file_path: target, content: 'deep\n' } }] }),
      () => ({ text: FINAL }),
    ], { reasoning: true });
    const r = await runClaude('Create thought.txt containing exactly: deep', { cwd });
    assert.equal(r.code, 0, explain(r));
    assert.equal(fs.readFileSync(target, 'utf8'), 'deep\n');
    assert.equal(r.json?.result, FINAL, explain(r));
    const second = seen.find((q) => toolMsgs(q.body).length === 1).body;
    const asst = second.messages.find((m) => m.role === 'assistant' && m.tool_calls);
    assert.equal(asst.reasoning_content, 'Reasoning for turn 0: I will do the next step.',
      `the replayed thinking reaches the upstream as reasoning: ${JSON.stringify(asst).slice(0, 500)}`);
    assert.ok(!JSON.stringify(second.messages).includes('"signature"'), 'no raw thinking blocks upstream');
  }));

/** Every recorded capture: 2.1.197's at the top of fixtures/claude-code/ (three requests of one
 * session), newer versions in fixtures/claude-code/<version>/. */
function captures() {
  const out = [{ version: '2.1.197', dir: CC_DIR, files: ['first-turn.json', 'after-tool-call.json', 'thinking-replay.json'] }];
  for (const d of fs.readdirSync(CC_DIR).sort()) {
    const dir = path.join(CC_DIR, d);
    if (!fs.statSync(dir).isDirectory() || !fs.existsSync(path.join(dir, 'request-headers.json'))) continue;
    out.push({ version: d, dir, files: fs.readdirSync(dir).filter((f) => f.endsWith('.json') && f !== 'request-headers.json' && f !== 'session.json').sort() });
  }
  return out;
}

test('the recorded Claude Code requests become upstream requests llama-server accepts', env.wrap(async () => {
  const caps = captures();
  assert.ok(caps.some((c) => c.version === CC_VERSION), `a capture of the pinned Claude Code ${CC_VERSION} is kept`);
  for (const cap of caps) {
    const hdrs = JSON.parse(fs.readFileSync(path.join(cap.dir, 'request-headers.json'), 'utf8'));
    const headers = { ...hdrs.headers };
    for (const h of ['host', 'content-length', 'x-api-key', 'connection', 'accept-encoding']) delete headers[h];
    for (const f of cap.files) {
      const what = `${cap.version}/${f}`;
      const body = JSON.parse(fs.readFileSync(path.join(cap.dir, f), 'utf8'));
      const marker = `fixture ${what}`;
      env.mock.script((req) => (req.raw.includes(marker) ? { text: 'fixture answered', pieceSize: 100 } : { text: 'ok' }));
      // Mark the request so the mock can pick it: appended to the last user text block.
      const last = body.messages[body.messages.length - 1];
      if (typeof last.content === 'string') last.content += ` ${marker}`;
      else last.content.push({ type: 'text', text: marker });
      const before = env.mock.requests.length;
      const r = await request(env.proxy, { method: 'POST', path: hdrs.path, headers, body });
      assert.equal(r.status, 200, `${what}: ${r.text.slice(0, 500)}`);
      assert.match(r.headers['content-type'], /^text\/event-stream/);
      assert.ok(r.text.includes('fixture answered'), `${what}: streamed answer`);
      const up = env.mock.requests.slice(before).find((q) => q.raw.includes(marker)).body;
      // Every tool but the deferred ones (defer_loading: not offered until a tool_reference
      // names them), with parameters equal to its schema.
      const offered = body.tools.filter((t) => t.defer_loading !== true);
      assert.equal(up.tools.length, offered.length, what);
      for (const t of body.tools.filter((x) => x.defer_loading === true))
        assert.ok(!up.tools.some((x) => x.function.name === t.name), `${what}: deferred ${t.name} not sent`);
      for (const t of offered) {
        const u = up.tools.find((x) => x.function.name === t.name);
        assert.ok(u, `${what}: tool ${t.name} sent`);
        assert.deepEqual(u.function.parameters, t.input_schema, `${what}: ${t.name} parameters`);
      }
      // Roles in an order chat templates accept: one leading system message, no system later.
      const roles = up.messages.map((m) => m.role);
      assert.equal(roles[0], 'system', what);
      assert.ok(!roles.slice(1).includes('system'), `${what}: ${roles}`);
      // The mid-conversation system message (both versions send one) keeps its text.
      const sys = body.messages.find((m) => m.role === 'system');
      assert.ok(sys, `${what}: has a mid-conversation system message`);
      const sysText = typeof sys.content === 'string' ? sys.content : sys.content.map((b) => b.text || '').join('');
      const flat = up.messages.map((m) => oaiText(m.content)).join('\n');
      assert.ok(flat.includes(sysText.slice(0, 200)), `${what}: mid-conversation system text kept`);
      // Tool calls and results paired by id.
      const calls = up.messages.filter((m) => m.role === 'assistant').flatMap((m) => m.tool_calls || []);
      const results = up.messages.filter((m) => m.role === 'tool');
      assert.deepEqual(results.map((m) => m.tool_call_id), calls.map((c) => c.id), `${what}: pairs`);
      assert.ok(!JSON.stringify(up).includes('"cache_control"'), `${what}: no Anthropic-only fields upstream`);
      assert.equal(up.stream, true);
    }
  }
}));

/** The shape of a capture that does not change from run to run: betas, tools, body keys. */
function captureShape(headers, body) {
  return {
    userAgent: headers['user-agent'],
    betas: betas(headers),
    bodyKeys: Object.keys(body).sort(),
    tools: (body.tools || []).map((t) => t.name).sort(),
    thinking: body.thinking,
    stream: body.stream,
  };
}

// Claude Code's first main request, as it reached the proxy (a recorder sits in between), must
// match the capture kept for the pinned version: a new release that announces other betas or
// sends other fields fails here, and gets a capture of its own. ANTHROXY_RECORD=1 (re)writes
// fixtures/claude-code/<version>/ from this run instead.
test(`Claude Code ${CC_VERSION} sends what its capture records (betas, tools, fields)`, { timeout: 180000 },
  env.wrap(async () => {
    const rec = await startRecorder(env.proxy);
    try {
      const cwd = fs.mkdtempSync(path.join(tmpRoot, 'work-'));
      env.mock.script(() => ({ text: 'captured' }));
      const r = await runClaude('CAPTURE-TASK: say hi', { cwd, baseUrl: rec.url });
      assert.equal(r.code, 0, explain(r));
      const main = rec.requests.find((q) => q.method === 'POST' && q.path.startsWith('/v1/messages') &&
        !q.path.includes('count_tokens') && q.raw.includes('CAPTURE-TASK') && (JSON.parse(q.raw).tools || []).length > 0);
      assert.ok(main, `the main request reached the proxy: ${rec.requests.map((q) => `${q.method} ${q.path}`).join(', ')}`);
      const body = JSON.parse(main.raw);
      const headers = { ...main.headers, 'x-api-key': 'REDACTED' };
      const dir = path.join(CC_DIR, CC_VERSION);
      if (process.env.ANTHROXY_RECORD === '1') {
        fs.mkdirSync(dir, { recursive: true });
        fs.writeFileSync(path.join(dir, 'request-headers.json'), JSON.stringify({ method: main.method, path: main.path, headers }, null, 1) + '\n');
        fs.writeFileSync(path.join(dir, 'first-turn.json'), JSON.stringify(body, null, 1) + '\n');
        fs.writeFileSync(path.join(dir, 'session.json'), JSON.stringify(rec.requests.map((q) => {
          const b = q.raw ? JSON.parse(q.raw) : null;
          return { method: q.method, path: q.path, betas: betas(q.headers), model: b?.model, tools: b?.tools?.length ?? 0 };
        }), null, 1) + '\n');
      }
      assert.ok(fs.existsSync(path.join(dir, 'request-headers.json')),
        `no capture for Claude Code ${CC_VERSION} in ${dir}: record one with ANTHROXY_RECORD=1`);
      const want = JSON.parse(fs.readFileSync(path.join(dir, 'request-headers.json'), 'utf8'));
      const wantBody = JSON.parse(fs.readFileSync(path.join(dir, 'first-turn.json'), 'utf8'));
      assert.deepEqual(captureShape(headers, body), captureShape(want.headers, wantBody));
      assert.equal(main.path, want.path);
    } finally {
      await rec.close();
    }
  }));

test('Claude Code recognises the proxy\'s context overflow error and does not retry it', { timeout: 180000 },
  env.wrap(async () => {
    const cwd = fs.mkdtempSync(path.join(tmpRoot, 'work-'));
    const seen = [];
    env.mock.script((req) => {
      if (!allText(req.body).includes('OVERFLOW-TASK')) return { text: 'ok' };
      seen.push(req);
      // The upstream reports a prompt over its window (200000 here), as llama-server does.
      return { promptTokens: 250000 };
    });
    const r = await runClaude('OVERFLOW-TASK: say hello', { cwd });
    assert.ok(r.json, explain(r));
    assert.equal(r.json.is_error, true, explain(r));
    assert.equal(r.json.api_error_status, 400, explain(r));
    // Claude Code parsed "prompt is too long: N tokens > M maximum" into its own message.
    assert.match(r.json.result, /Prompt is too long/i, explain(r));
    assert.match(r.json.result, /250,?000/, explain(r));
    assert.match(r.json.result, /200,?000/, explain(r));
    assert.equal(seen.length, 1, `a 400 is not retried (${seen.length} requests)`);
  }));

test('Claude Code against a proxy that requires an inbound key', { timeout: 180000 },
  env.wrap(async () => {
    const p = await startProxy({ upstream: env.mock.base, args: ['--api-key', 'cc-secret-key'] });
    try {
      await waitUpstreamProbed(p);
      env.mock.script(() => ({ text: 'authorised answer' }));
      const cwd = fs.mkdtempSync(path.join(tmpRoot, 'work-'));
      const ok = await runClaude('KEYED-TASK: say hi', { cwd, baseUrl: p.url, apiKey: 'cc-secret-key' });
      assert.equal(ok.code, 0, explain(ok));
      assert.equal(ok.json?.result, 'authorised answer', explain(ok));
      assert.ok(!p.log().includes('cc-secret-key'), 'the key never reaches the log');
    } finally {
      const { code } = await p.stop();
      assert.equal(code, 0, p.tail());
    }
  }));
