// claude-code-agent.test.mjs - Claude Code (pinned, 2.1.332) end to end with the agent features
// of issue 10, against the mock: it sends context_management (clear_thinking, keep all) and a
// defer_loading tool on every request; the operator turns on clear_tool_uses for it (it never
// asks) and the session reads six files. The deferred tool never reaches the upstream, old
// Read results are cleared in steps with the pairs intact, every answer carries
// context_management (which Claude Code accepts), and the run finishes with the model's answer.
// The same task without clearing gives the tokens saved per request (the mock's prompt_tokens).
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { useProxy, HERE, oaiText, claudeBin, claudeEnv } from './helpers.mjs';

const CLEAR = ['--policy-set', 'context_editing.clear_tool_uses=true', '--policy-set', 'context_editing.trigger=1000',
  '--policy-set', 'context_editing.keep=1', '--policy-set', 'context_editing.step=2'];
const cleared = useProxy({ name: 'cc-agent-clear', mock: { nCtx: 200000 }, args: CLEAR });
const plain = useProxy({ name: 'cc-agent-plain', mock: { nCtx: 200000 } });
const tmpRoot = fs.mkdtempSync(path.join(os.tmpdir(), 'anthroxy-cca-'));
after(() => fs.rmSync(tmpRoot, { recursive: true, force: true }));
const PLACEHOLDER = '[tool result cleared by context editing to save context]';

async function runClaude(task, cwd, baseUrl, extra = [], allowed = 'Read') {
  const home = fs.mkdtempSync(path.join(tmpRoot, 'home-'));
  const child = spawn(claudeBin(), ['-p', task, '--output-format', 'json', '--permission-mode', 'acceptEdits',
    '--allowedTools', allowed, '--max-turns', '12', ...extra], {
    cwd,
    stdio: ['ignore', 'pipe', 'pipe'],
    env: claudeEnv(home, baseUrl),
  });
  let out = '';
  let err = '';
  child.stdout.on('data', (d) => { out += d; });
  child.stderr.on('data', (d) => { err += d; });
  const timer = setTimeout(() => child.kill('SIGKILL'), 150000);
  const code = await new Promise((resolve) => child.on('exit', (c, s) => resolve(c ?? s)));
  clearTimeout(timer);
  let json = null;
  try { json = JSON.parse(out.trim().split('\n').pop()); } catch { /* reported by the caller */ }
  return { code, out, err, json };
}

const N = 6;
const FINAL = 'All six files are configuration notes.';
const MARKER = 'Read the six files';

/** Scripts env's mock: Read f1..f6, one per turn, then answer. Returns the main requests seen. */
function script(env, cwd) {
  const seen = [];
  env.mock.script((req) => {
    const text = req.body.messages.map((m) => oaiText(m.content)).join('\n');
    if (!text.includes(MARKER)) return { text: 'ok' };
    seen.push(req);
    const k = req.body.messages.filter((m) => m.role === 'tool').length;
    if (k >= N) return { text: FINAL };
    return { toolCalls: [{ name: 'Read', arguments: { file_path: path.join(cwd, `f${k + 1}.txt`) } }] };
  });
  return seen;
}

function workdir() {
  const cwd = fs.mkdtempSync(path.join(tmpRoot, 'work-'));
  for (let k = 1; k <= N; k++) {
    fs.writeFileSync(path.join(cwd, `f${k}.txt`), Array.from({ length: 80 }, (_, i) => `file ${k} line ${i}: setting_${i} = value_${k * i}`).join('\n'));
  }
  return cwd;
}

const promptTokens = (proxy) => [...proxy.log().matchAll(/messages model=\S+ .*?messages=(\d+) .*? prompt=(\d+)/g)]
  .map((m) => ({ messages: Number(m[1]), prompt: Number(m[2]) }));

test('Claude Code 2.1.332: deferred tools, context_management, operator clear_tool_uses, end to end',
  { timeout: 400000 }, cleared.wrap(async () => {
    const cwdA = workdir();
    const seenA = script(cleared, cwdA);
    const a = await runClaude(`${MARKER} f1.txt to f6.txt here, one at a time, then say what they are.`, cwdA, cleared.proxy.url);
    assert.equal(a.code, 0, `claude: ${a.out.slice(-1500)} ${a.err.slice(-1500)}`);
    assert.equal(a.json?.result, FINAL);
    assert.equal(seenA.length, N + 1);
    for (const q of seenA) {
      const names = (q.body.tools || []).map((t) => t.function.name);
      assert.ok(names.includes('Read') && names.includes('ToolSearch'), 'the loaded tools are offered');
      assert.ok(!names.includes('DeferredToolPlaceholder'), 'the deferred tool is not sent');
    }
    // keep 1, steps of 2: after 3 reads 2 are cleared, after 5 reads 4
    const clearedOf = (q) => q.body.messages.filter((m) => m.role === 'tool').map((m) => oaiText(m.content) === PLACEHOLDER);
    assert.deepEqual(clearedOf(seenA[3]), [true, true, false]);
    assert.deepEqual(clearedOf(seenA[6]), [true, true, true, true, false, false]);
    const last = seenA[6].body;
    const calls = last.messages.filter((m) => m.role === 'assistant' && m.tool_calls).flatMap((m) => m.tool_calls.map((c) => c.id));
    assert.deepEqual(last.messages.filter((m) => m.role === 'tool').map((m) => m.tool_call_id), calls, 'pairs intact');
    assert.ok(oaiText(last.messages.filter((m) => m.role === 'tool').at(-1).content).includes('file 6 line 79'));
    // the same task without clearing: the tokens it saved per request
    const cwdB = workdir();
    const seenB = script(plain, cwdB);
    const b = await runClaude(`${MARKER} f1.txt to f6.txt here, one at a time, then say what they are.`, cwdB, plain.proxy.url);
    assert.equal(b.code, 0, b.err.slice(-1500));
    assert.equal(seenB.length, N + 1);
    const pa = promptTokens(cleared.proxy).filter((r) => r.messages > 1).slice(-(N + 1));
    const pb = promptTokens(plain.proxy).filter((r) => r.messages > 1).slice(-(N + 1));
    assert.equal(pa.length, N + 1);
    const saved = pa.map((r, i) => pb[i].prompt - r.prompt);
    console.log(`# Claude Code, ${N} Reads of ${fs.statSync(path.join(cwdA, 'f1.txt')).size} bytes: prompt tokens per request without clearing ${pb.map((r) => r.prompt).join(' ')}`);
    console.log(`#   with clear_tool_uses (keep 1, step 2): ${pa.map((r) => r.prompt).join(' ')}; saved ${saved.join(' ')}`);
    assert.ok(saved[6] > 2000, `the last request saved ${saved[6]} tokens`);
    assert.ok(saved.slice(0, 3).every((s) => Math.abs(s) < 50), `nothing cleared before the first step: ${saved}`);
  }));

// A tiny MCP server (stdio, newline-delimited JSON-RPC) with one tool: Claude Code defers MCP
// tools behind its ToolSearch, so this is how a deferred tool gets loaded in real use.
const MCP_SERVER = `
import readline from 'node:readline';
const send = (m) => process.stdout.write(JSON.stringify(m) + '\\n');
readline.createInterface({ input: process.stdin }).on('line', (line) => {
  let m; try { m = JSON.parse(line); } catch { return; }
  if (m.id === undefined) return;
  if (m.method === 'initialize') send({ jsonrpc: '2.0', id: m.id, result: { protocolVersion: m.params.protocolVersion, capabilities: { tools: {} }, serverInfo: { name: 'deploytools', version: '1.0.0' } } });
  else if (m.method === 'tools/list') send({ jsonrpc: '2.0', id: m.id, result: { tools: [{ name: 'deploy', description: 'Deploy the service to an environment', inputSchema: { type: 'object', properties: { env: { type: 'string' } }, required: ['env'] } }] } });
  else if (m.method === 'tools/call') send({ jsonrpc: '2.0', id: m.id, result: { content: [{ type: 'text', text: 'deployed to ' + m.params.arguments.env }] } });
  else send({ jsonrpc: '2.0', id: m.id, error: { code: -32601, message: 'no such method' } });
});
`;

test('Claude Code 2.1.332: an MCP tool deferred behind ToolSearch is offered once the search loads it',
  { timeout: 200000 }, plain.wrap(async () => {
    const cwd = fs.mkdtempSync(path.join(tmpRoot, 'work-'));
    const server = path.join(tmpRoot, 'mcp-server.mjs');
    fs.writeFileSync(server, MCP_SERVER);
    const config = path.join(tmpRoot, 'mcp.json');
    fs.writeFileSync(config, JSON.stringify({ mcpServers: { deploytools: { type: 'stdio', command: process.execPath, args: [server] } } }));
    const TOOL = 'mcp__deploytools__deploy';
    const seen = [];
    plain.mock.script((req) => {
      const text = req.body.messages.map((m) => oaiText(m.content)).join('\n');
      if (!text.includes('SHIP-IT')) return { text: 'ok' };
      seen.push(req);
      const k = req.body.messages.filter((m) => m.role === 'tool').length;
      if (k === 0) return { toolCalls: [{ name: 'ToolSearch', arguments: { query: `select:${TOOL}` } }] };
      if (k === 1) return { toolCalls: [{ name: TOOL, arguments: { env: 'staging' } }] };
      return { text: 'Deployed to staging.' };
    });
    const r = await runClaude('SHIP-IT: deploy the service to staging.', cwd, plain.proxy.url,
      ['--mcp-config', config, '--strict-mcp-config'], `ToolSearch,${TOOL}`);
    assert.equal(r.code, 0, `claude: ${r.out.slice(-1500)} ${r.err.slice(-1500)}`);
    const names = (q) => (q.body.tools || []).map((t) => t.function.name);
    assert.ok(seen.length >= 2, `requests: ${seen.length}`);
    const deferredSent = seen[0].body.tools.length;
    assert.ok(!names(seen[0]).includes(TOOL), `deferred before the search: ${names(seen[0])}`);
    const result = seen[1].body.messages.find((m) => m.role === 'tool');
    console.log(`# ToolSearch result upstream: ${JSON.stringify(oaiText(result.content)).slice(0, 200)}`);
    assert.ok(names(seen[1]).includes(TOOL), `offered after the search: ${names(seen[1])}`);
    assert.equal(seen[1].body.tools.length, deferredSent + 1);
    assert.equal(r.json?.result, 'Deployed to staging.', r.out.slice(-800));
    const last = seen.at(-1).body.messages.filter((m) => m.role === 'tool').at(-1);
    assert.match(oaiText(last.content), /deployed to staging/);
  }));
