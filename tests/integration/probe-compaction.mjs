// probe-compaction.mjs - not a test: runs Claude Code through anthroxy on a task that grows its
// conversation turn by turn (Read of a large file in slices), and prints what each request
// looked like upstream, so one can see whether Claude Code compacts by itself (a summarising
// request) before the proxy's pruning policy has to act. See FINDINGS.md.
//
//   ANTHROXY_BIN=../../build/anthroxy node probe-compaction.mjs
//   NCTX=65536 CCMODEL=claude-sonnet-4-5 PARGS="--policy-set compaction_steering.steer_at=0.5" ...
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { spawn } from 'node:child_process';
import { startMock } from './mock-llama.mjs';
import { startProxy, waitUpstreamProbed, HERE } from './helpers.mjs';

const NCTX = Number(process.env.NCTX || 65536);
const READS = Number(process.env.READS || 8);
const mock = await startMock({ nCtx: NCTX });
const cwd = fs.mkdtempSync(path.join(os.tmpdir(), 'anthroxy-probe-'));
const big = path.join(cwd, 'big.txt');
fs.writeFileSync(big, Array.from({ length: 4000 }, (_, i) => `line ${i}: ${'lorem ipsum dolor sit amet '.repeat(2)}`).join('\n'));
let n = 0;
mock.script((req) => {
  n++;
  const b = req.body;
  const tools = (b.tools || []).map((t) => t.function.name);
  const nTool = b.messages.filter((m) => m.role === 'tool').length;
  console.log(`request ${n}: ${b.messages.length} messages, ${tools.length} tools, ${nTool} tool results, ` +
    `${req.promptTokens} prompt tokens; last: ${req.lastText.slice(0, 100).replace(/\s+/g, ' ')}`);
  // Claude Code's compaction request carries all its tools; its last message asks for text only.
  if (!tools.includes('Read') || /^CRITICAL: Respond with TEXT ONLY/.test(req.lastText)) {
    return { text: '<summary>The user asked to read big.txt in slices.</summary>' };
  }
  if (nTool < READS) return { toolCalls: [{ name: 'Read', arguments: { file_path: big, offset: 1 + nTool * 356, limit: 356 } }] };
  return { text: 'All done.' };
});
const p = await startProxy({ upstream: mock.base, args: (process.env.PARGS || '').split(' ').filter(Boolean) });
await waitUpstreamProbed(p);
const home = fs.mkdtempSync(path.join(os.tmpdir(), 'anthroxy-probe-home-'));
const args = ['-p', 'Read big.txt in slices of 356 lines, then say done.', '--output-format', 'json',
  '--max-turns', String(READS + 6), '--permission-mode', 'acceptEdits', '--allowedTools', 'Read'];
if (process.env.CCMODEL) args.push('--model', process.env.CCMODEL);
async function runClaude(argv) {
const child = spawn(path.join(HERE, 'node_modules', '.bin', 'claude'), argv, {
  cwd,
  stdio: ['ignore', 'pipe', 'pipe'],
  env: {
    PATH: process.env.PATH, HOME: home, ANTHROPIC_BASE_URL: p.url, ANTHROPIC_API_KEY: 'dummy',
    DISABLE_TELEMETRY: '1', DISABLE_AUTOUPDATER: '1', CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC: '1',
    CLAUDE_CODE_DISABLE_NONSTREAMING_FALLBACK: '1',
    // CC_ENV="NAME=value,NAME2=value": extra settings for Claude Code (e.g. its compaction knobs).
    ...Object.fromEntries((process.env.CC_ENV || '').split(',').filter(Boolean).map((kv) => kv.split('='))),
  },
});
let out = '';
child.stdout.on('data', (d) => { out += d; });
child.stderr.on('data', (d) => { out += d; });
const timer = setTimeout(() => child.kill('SIGKILL'), 120000);
await new Promise((r) => child.on('exit', r));
clearTimeout(timer);
console.log(`claude: ${out.slice(0, 300)}`);
  try {
    const j = JSON.parse(out.trim().split('\n').pop());
    console.log('claude modelUsage:', JSON.stringify(j.modelUsage));
  } catch { /* not JSON */ }
}
await runClaude(args);
// CONTINUE=1: a second user turn in the same session (claude -p --continue), where Claude Code
// checks the last usage against its threshold before sending.
if (process.env.CONTINUE) {
  const i = args.indexOf('-p');
  const again = [...args];
  again.splice(i, 2, '-p', 'Now say done again.', '--continue');
  await runClaude(again);
}
for (const l of p.log().split('\n')) {
  if (/compaction_steering: reporting|policy prune|status=\d+/.test(l)) console.log(l.slice(25, 260));
}
await p.stop();
await mock.close();
fs.rmSync(cwd, { recursive: true, force: true });
fs.rmSync(home, { recursive: true, force: true });
