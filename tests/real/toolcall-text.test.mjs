// toolcall-text.test.mjs - a real llama-server started without --jinja behind anthroxy, with
// Claude Code: such a server refuses any request with `tools` ("tools param requires --jinja
// flag", HTTP 500), so anthroxy sends that request again with the tools as text in the system
// prompt (and every later one to that server: core/tools_as_text.c); the server's answer is
// plain text content holding a Hermes tool call, and Claude Code's Write still runs. Skips when
// LLAMA_SERVER is unset or Claude Code is not installed (tests/integration/node_modules).
//
// What a real server cannot do here, and how the test stands in for it: the tiny model writes
// meaningless text and never a call, so a test policy adds a GBNF `grammar` (a llama-server
// request field) that forces the text a model would write: the Hermes call on the first turn,
// a short answer once the tool result is in. Everything else is real: the refusal, the resend
// with the tools as text, the server's non-jinja chat path and its SSE, anthroxy's recogniser,
// Claude Code's tool run.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { startLlama } from './llama.mjs';
import { startProxy, waitUpstreamProbed, HERE as INT_DIR, claudeBin, claudeEnv } from '../integration/helpers.mjs';

const tmpRoot = fs.mkdtempSync(path.join(os.tmpdir(), 'anthroxy-real-tct-'));
const FINAL = 'Wrote the file.';

// The chain: one policy, on_upstream_request only.
fs.writeFileSync(path.join(tmpRoot, 'chain.lua'), 'return { { "force_text_call" } }\n');
fs.writeFileSync(path.join(tmpRoot, 'force_text_call.lua'), `
local M = { name = "force_text_call" }
-- GBNF string literal of s
local function lit(s)
  return '"' .. s:gsub('\\\\', '\\\\\\\\'):gsub('"', '\\\\"'):gsub('\\n', '\\\\n') .. '"'
end
function M.on_upstream_request(oreq, ctx)
  if oreq.tools ~= nil then return end -- the first try, which the server refuses
  local target, answered = nil, false
  for i = 1, #oreq.messages do
    local m = oreq.messages[i]
    local c = m.content
    if type(c) ~= "string" then c = (c and c[1] and c[1].text) or "" end
    if type(c) == "string" and c:find("<tool_response>", 1, true) then answered = true end
    if type(c) == "string" then target = c:match("REAL%-TARGET=(%S+)") or target end
  end
  if target == nil then return end -- a side request: the model says what it says
  if answered then
    oreq.grammar = "root ::= " .. lit("${FINAL}")
  else
    local call = '<tool_call>\\n{"name": "Write", "arguments": {"file_path": "' .. target ..
      '", "content": "written through a server without --jinja\\\\n"}}\\n</tool_call>'
    oreq.grammar = "root ::= " .. lit(call)
  end
end
return M
`);

let llama = null;
let proxy = null;
before(async () => {
  llama = await startLlama({ ctx: 65536, np: 1, jinja: false });
  if (!llama) return;
  proxy = await startProxy({ upstream: llama.url, args: ['--policies', path.join(tmpRoot, 'chain.lua')] });
  await waitUpstreamProbed(proxy);
});
after(async () => {
  if (proxy) await proxy.stop();
  if (llama) await llama.stop();
  fs.rmSync(tmpRoot, { recursive: true, force: true });
});

test('real llama-server without --jinja: Claude Code runs Write from a call written as text', { timeout: 240000 },
  async (t) => {
    if (!llama) return t.skip('LLAMA_SERVER is not set');
    const bin = claudeBin();
    if (!fs.existsSync(bin)) return t.skip('Claude Code is not installed in tests/integration/node_modules');
    // the server really refuses tools without --jinja (why anthroxy sends them as text)
    const refused = await fetch(`${llama.url}/v1/chat/completions`, {
      method: 'POST', headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ messages: [{ role: 'user', content: 'hi' }], max_tokens: 4, tools: [{ type: 'function', function: { name: 'f', parameters: { type: 'object' } } }] }),
    });
    assert.equal(refused.status, 500);
    assert.match(await refused.text(), /requires --jinja/);

    const cwd = fs.mkdtempSync(path.join(tmpRoot, 'work-'));
    const home = fs.mkdtempSync(path.join(tmpRoot, 'home-'));
    const target = path.join(cwd, 'real.txt');
    const child = spawn(bin, ['-p', `Create the file REAL-TARGET=${target} please`, '--output-format', 'json',
      '--permission-mode', 'acceptEdits', '--allowedTools', 'Write,Read,Edit', '--max-turns', '4'], {
      cwd,
      stdio: ['ignore', 'pipe', 'pipe'],
      env: claudeEnv(home, proxy.url),
    });
    let out = '';
    let err = '';
    child.stdout.on('data', (d) => { out += d; });
    child.stderr.on('data', (d) => { err += d; });
    const timer = setTimeout(() => child.kill('SIGKILL'), 200000);
    const code = await new Promise((resolve) => child.on('exit', (c, s) => resolve(c ?? s)));
    clearTimeout(timer);
    const why = `claude exit ${code}\nstdout: ${out.slice(-1500)}\nstderr: ${err.slice(-1500)}\n` +
      `anthroxy: ${proxy.tail(30)}\nllama: ${llama.tail(20)}`;
    assert.equal(code, 0, why);
    assert.equal(fs.readFileSync(target, 'utf8'), 'written through a server without --jinja\n', why);
    const json = JSON.parse(out.trim().split('\n').pop());
    assert.equal(json.result, FINAL, why);
    assert.match(proxy.log(), /decision tool_calls: text_calls=1 /, 'the call came as text and was recognised');
    assert.match(proxy.log(), /takes no tools \(llama-server without --jinja\)/, 'the refusal was seen once');
  });
