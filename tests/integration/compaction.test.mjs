// compaction.test.mjs - the real Claude Code (pinned in package.json), run in print mode through
// anthroxy's default chain against the mock, on a task that grows the conversation (Read of a
// large file in slices), with CLAUDE_CODE_AUTO_COMPACT_WINDOW set as the README tells users.
// compaction_steering must bring the client to compact by itself exactly once, near steer_at of
// the real window, before the prune threshold, and nothing may be pruned. On a 64k and a 131k
// window (the mock's n_ctx), both at once to keep the test time down.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { startMock } from './mock-llama.mjs';
import { startProxy, waitUpstreamProbed, HERE, claudeBin, claudeEnv } from './helpers.mjs';

// The README tells users to set CLAUDE_CODE_AUTO_COMPACT_WINDOW to compaction_steering's
// client_window: read it from the proxy's start-up log (the policy's own figure), not a copy.
const README_WINDOW = Number(/CLAUDE_CODE_AUTO_COMPACT_WINDOW=(\d+)/.exec(
  fs.readFileSync(path.join(HERE, '..', '..', 'README.md'), 'utf8'))[1]);
const STEER_AT = 0.65;
const THRESHOLD = 0.75;
const tmpRoot = fs.mkdtempSync(path.join(os.tmpdir(), 'anthroxy-compact-'));
after(() => fs.rmSync(tmpRoot, { recursive: true, force: true }));

const isCompaction = (req) => {
  const tools = (req.body.tools || []).map((t) => t.function.name);
  return !tools.includes('Read') || /Respond with TEXT ONLY|summary of the conversation/i.test(req.lastText);
};

/** Runs the growing task on an nCtx window; returns what each main request looked like. */
async function session(nCtx) {
  const mock = await startMock({ nCtx });
  const cwd = fs.mkdtempSync(path.join(tmpRoot, 'work-'));
  const home = fs.mkdtempSync(path.join(tmpRoot, 'home-'));
  const big = path.join(cwd, 'big.txt');
  // ~65 bytes a line; a slice adds about 4 % of the window per turn (the mock counts 4 bytes a token).
  const lines = Math.round(0.04 * nCtx * 4 / 65);
  fs.writeFileSync(big, Array.from({ length: 60 * lines }, (_, i) =>
    `line ${i}: ${'lorem ipsum dolor sit amet '.repeat(2)}`).join('\n'));
  const seen = [];
  let compacted = false;
  mock.script((req) => {
    const b = req.body;
    if (!/big\.txt/.test(JSON.stringify(b.messages))) return { text: 'ok' }; // a side request
    const rec = { prompt: req.promptTokens, compaction: isCompaction(req), tools: b.messages.filter((m) => m.role === 'tool').length };
    seen.push(rec);
    if (rec.compaction) {
      compacted = true;
      return { text: '<summary>The user asked to read big.txt in slices; several slices were read.</summary>' };
    }
    if (compacted) return { text: 'All done.' };
    return { toolCalls: [{ name: 'Read', arguments: { file_path: big, offset: 1 + rec.tools * lines, limit: lines } }] };
  });
  const proxy = await startProxy({ upstream: mock.base });
  await waitUpstreamProbed(proxy);
  const cw = Number(/compaction_steering: client_window = (\d+)/.exec(proxy.log())[1]);
  assert.equal(cw, README_WINDOW, 'the README and compaction_steering name the same client window');
  const child = spawn(claudeBin(), ['-p', 'Read big.txt in slices until I stop you, then say done.',
    '--output-format', 'json', '--max-turns', '40', '--permission-mode', 'acceptEdits', '--allowedTools', 'Read'], {
    cwd,
    stdio: ['ignore', 'pipe', 'pipe'],
    env: claudeEnv(home, proxy.url, { CLAUDE_CODE_AUTO_COMPACT_WINDOW: String(cw) }),
  });
  let out = '';
  child.stdout.on('data', (d) => { out += d; });
  child.stderr.on('data', (d) => { out += d; });
  const timer = setTimeout(() => child.kill('SIGKILL'), 90000);
  const code = await new Promise((r) => child.on('exit', (c, s) => r(c ?? s)));
  clearTimeout(timer);
  const log = proxy.log();
  await proxy.stop();
  await mock.close();
  return { nCtx, code, out, seen, pruned: /pruned:/.test(log), log };
}

test('Claude Code compacts once, near steer_at, on a 64k and a 131k window', { timeout: 120000 }, async () => {
  const runs = await Promise.all([session(65536), session(131072)]);
  for (const r of runs) {
    const turns = r.seen.map((s, i) => `${i + 1}:${s.prompt}${s.compaction ? 'C' : ''}`).join(' ');
    const why = `n_ctx ${r.nCtx}, claude exit ${r.code}; requests ${turns}\n${r.out.slice(-600)}`;
    console.log(`# n_ctx ${r.nCtx}: ${turns}`);
    const at = r.seen.findIndex((s) => s.compaction);
    assert.ok(at > 0, `no compaction: ${why}`);
    assert.equal(r.seen.filter((s) => s.compaction).length, 1, `compacted more than once: ${why}`);
    // The compaction request carries the conversation as it was on the turn before it.
    const util = r.seen[at].prompt / r.nCtx;
    console.log(`# n_ctx ${r.nCtx}: compacted at request ${at + 1}, utilisation ${(util * 100).toFixed(1)} %`);
    assert.ok(util >= STEER_AT - 0.12 && util < THRESHOLD, `compacted at ${util.toFixed(3)} of the window: ${why}`);
    assert.ok(!r.pruned, `pruned before the client compacted: ${why}`);
  }
});
