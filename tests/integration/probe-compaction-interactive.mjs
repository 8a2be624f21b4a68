// probe-compaction-interactive.mjs - not a test: the interactive counterpart of
// probe-compaction.mjs. Runs Claude Code in a real terminal (tmux) through anthroxy on a task
// that grows its conversation turn by turn (Read of a large file in slices), and prints what
// each request looked like: upstream (messages, tool results, real prompt tokens) and as the
// client saw it (the input_tokens the proxy reported back, read by a recording relay between
// Claude Code and the proxy), so one can see whether interactive Claude Code compacts by itself
// at the point compaction steering aims for. See FINDINGS.md. Needs tmux.
// Seen with 2.1.197: Claude Code compacts by itself only when its window has a source other
// than "auto" (CC_ENV=CLAUDE_CODE_AUTO_COMPACT_WINDOW=200000, or a model with a default window
// such as CCMODEL=claude-sonnet-4-6); with claude-sonnet-4-5 or the default Opus [1m] it never
// does (it waits for a "prompt is too long" error, which pruning never lets happen).
//
//   ANTHROXY_BIN=../../build/anthroxy node probe-compaction-interactive.mjs
//   NCTX=131072 READS=16 CCMODEL=claude-sonnet-4-5 PARGS="..." CC_ENV="NAME=value,..." ...
//   CC_DEBUG=1: run claude with --debug and print the compaction lines of its debug log
//   CC_SETTINGS='{"autoCompactWindow":200000}'   Claude Code's ~/.claude/settings.json
//   CCMODEL=default: no --model (Claude Code's own default model)
//   SECOND="Now say done again."   the message typed after the first task ends ('' for none)
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import http from 'node:http';
import { execFileSync } from 'node:child_process';
import { startMock } from './mock-llama.mjs';
import { startProxy, waitUpstreamProbed, sleep, HERE } from './helpers.mjs';

const NCTX = Number(process.env.NCTX || 131072);
const READS = Number(process.env.READS || 16);
const SLICE = 356;
const MODEL = process.env.CCMODEL || 'claude-sonnet-4-5';
const SECOND = process.env.SECOND ?? 'Now say done again.';
const TURN_TIMEOUT_MS = Number(process.env.TURN_TIMEOUT_MS || 240000);
const SESSION = `anthroxy-probe-${process.pid}`;
const KEY = 'sk-ant-api03-anthroxyprobe-0123456789abcdefghijklmnopqrstuvwxyz';

const tmux = (...a) => execFileSync('tmux', a, { encoding: 'utf8' });
const pane = () => { try { return tmux('capture-pane', '-p', '-t', SESSION); } catch { return ''; } };
const flat = (s, n) => String(s).slice(0, n).replace(/\s+/g, ' ');

const mock = await startMock({ nCtx: NCTX });
const cwd = fs.mkdtempSync(path.join(os.tmpdir(), 'anthroxy-probe-'));
const big = path.join(cwd, 'big.txt');
fs.writeFileSync(big, Array.from({ length: (READS + 2) * SLICE },
  (_, i) => `line ${i}: ${'lorem ipsum dolor sit amet '.repeat(2)}`).join('\n'));

// Upstream: the main conversation (it has the Read tool) reads slice after slice, then ends;
// anything else is a side request (title, summary, compaction) and gets a short summary.
let n = 0;
let doneCount = 0;
let sliced = 0;
const upstream = [];
mock.script((req) => {
  n++;
  const b = req.body;
  const tools = (b.tools || []).map((t) => t.function.name);
  const nTool = b.messages.filter((m) => m.role === 'tool').length;
  const sys = b.messages[0] && b.messages[0].role === 'system' ? String(b.messages[0].content) : '';
  // Claude Code's compaction request: its summary prompt as the last message, or its
  // summariser system prompt.
  const summary = /create a detailed summary of the conversation|summar(y|ize|ise) (of )?the conversation/i.test(req.lastText) ||
    /tasked with summarizing conversations/i.test(sys);
  const rec = { n, msgs: b.messages.length, tools: tools.length, nTool, prompt: req.promptTokens, summary,
    last: flat(req.lastText, 200), sys: flat(sys, 120), time: Date.now() };
  upstream.push(rec);
  console.log(`upstream ${n}: ${rec.msgs} messages, ${rec.tools} tools, ${nTool} tool results, ` +
    `${req.promptTokens} prompt tokens${summary ? ' [SUMMARY-LIKE]' : ''}; last: ${flat(req.lastText, summary ? 200 : 90)}`);
  if (summary) console.log(`  system: ${rec.sys}`);
  if (summary || !tools.includes('Read')) {
    return { text: '<summary>The user asked to read big.txt in slices; slices so far were read.</summary>' };
  }
  if (/say done again/i.test(req.lastText)) { doneCount++; return { text: 'Done again.' }; }
  // Progress is kept here, not read from the conversation: after a compaction Claude Code
  // goes on from its summary, and the task must still end after READS slices.
  if (doneCount === 0 && sliced < READS) {
    sliced++;
    return { toolCalls: [{ name: 'Read', arguments: { file_path: big, offset: 1 + (sliced - 1) * SLICE, limit: SLICE } }] };
  }
  doneCount++;
  return { text: 'All done.' };
});
const p = await startProxy({ upstream: mock.base, args: (process.env.PARGS || '').split(' ').filter(Boolean) });
await waitUpstreamProbed(p);

// A recording relay between Claude Code and the proxy: what the client was told.
const client = [];
const relay = http.createServer((req, res) => {
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', () => {
    const body = Buffer.concat(chunks);
    let j = null;
    try { j = JSON.parse(body.toString('utf8')); } catch { /* not JSON */ }
    const up = http.request(`${p.url}${req.url}`, { method: req.method, headers: { ...req.headers, host: `127.0.0.1:${p.port}` } }, (ur) => {
      res.writeHead(ur.statusCode, ur.headers);
      let text = '';
      ur.on('data', (d) => { text += d; res.write(d); });
      ur.on('end', () => {
        res.end();
        const ins = [...new Set([...text.matchAll(/"input_tokens":(\d+)/g)].map((m) => Number(m[1])))];
        const r = { path: req.url, status: ur.statusCode, model: j && j.model, msgs: j && Array.isArray(j.messages) ? j.messages.length : undefined,
          tools: j && Array.isArray(j.tools) ? j.tools.length : 0, maxTokens: j && j.max_tokens, reported: ins.length ? ins.join('/') : undefined };
        client.push(r);
        console.log(`client: ${req.method} ${req.url} ${ur.statusCode} model=${r.model} msgs=${r.msgs} tools=${r.tools} ` +
          `max_tokens=${r.maxTokens} reported input_tokens=${r.reported}`);
      });
    });
    up.on('error', (e) => { res.writeHead(502); res.end(String(e)); });
    up.end(body);
  });
});
await new Promise((r) => relay.listen(0, '127.0.0.1', r));
const relayUrl = `http://127.0.0.1:${relay.address().port}`;

// A HOME where every first-run dialog is already answered.
const home = fs.mkdtempSync(path.join(os.tmpdir(), 'anthroxy-probe-home-'));
fs.writeFileSync(path.join(home, '.claude.json'), JSON.stringify({
  hasCompletedOnboarding: true, theme: 'dark', numStartups: 5, autoUpdates: false,
  customApiKeyResponses: { approved: [KEY.slice(-20)], rejected: [] },
  projects: { [cwd]: { hasTrustDialogAccepted: true, allowedTools: ['Read'], hasCompletedProjectOnboarding: true } },
}));
// CC_SETTINGS='{"autoCompactWindow":200000}': Claude Code's user settings (~/.claude/settings.json).
if (process.env.CC_SETTINGS) {
  fs.mkdirSync(path.join(home, '.claude'), { recursive: true });
  fs.writeFileSync(path.join(home, '.claude', 'settings.json'), JSON.stringify(JSON.parse(process.env.CC_SETTINGS)));
}
const env = {
  PATH: process.env.PATH, HOME: home, TERM: 'xterm-256color', ANTHROPIC_BASE_URL: relayUrl, ANTHROPIC_API_KEY: KEY,
  DISABLE_TELEMETRY: '1', DISABLE_AUTOUPDATER: '1', CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC: '1',
  ...Object.fromEntries((process.env.CC_ENV || '').split(',').filter(Boolean).map((kv) => kv.split('='))),
};
const q = (s) => `'${String(s).replace(/'/g, `'\\''`)}'`;
const runner = path.join(home, 'run.sh');
fs.writeFileSync(runner, '#!/bin/sh\n' + Object.entries(env).map(([k, v]) => `export ${k}=${q(v)}\n`).join('') +
  `cd ${q(cwd)}\nexec ${q(path.join(HERE, 'node_modules', '.bin', 'claude'))}${MODEL === 'default' ? '' : ` --model ${q(MODEL)}`} ` +
  `--permission-mode acceptEdits --allowedTools Read${process.env.CC_DEBUG ? ` --debug --debug-file ${q(path.join(home, 'cc-debug.txt'))}` : ''}\n`, { mode: 0o755 });

tmux('new-session', '-d', '-s', SESSION, '-x', '200', '-y', '50', runner);
tmux('set-option', '-t', SESSION, 'remain-on-exit', 'on');

async function waitPane(re, ms) {
  const t0 = Date.now();
  while (Date.now() - t0 < ms) {
    const s = pane();
    if (re.test(s)) return s;
    await sleep(500);
  }
  return null;
}
async function typeLine(text) {
  tmux('send-keys', '-t', SESSION, '-l', text);
  await sleep(400);
  tmux('send-keys', '-t', SESSION, 'Enter');
}
/** Waits until the upstream answered the end of a turn (doneCount reaches want) and the pane settles. */
async function waitTurn(want) {
  const t0 = Date.now();
  while (doneCount < want && Date.now() - t0 < TURN_TIMEOUT_MS) await sleep(500);
  await sleep(4000);
  return doneCount >= want;
}

try {
  const ready = await waitPane(/(>|❯)\s/, 30000);
  if (!ready) {
    console.log('claude did not show its prompt; pane:\n' + pane());
  } else {
    await sleep(1500);
    console.log('--- pane at start ---\n' + pane().trim().split('\n').slice(-12).join('\n'));
    await typeLine(`Read big.txt in slices of ${SLICE} lines with the Read tool, one slice at a time, then say done.`);
    const ok = await waitTurn(1);
    console.log(`--- first task ${ok ? 'ended' : 'TIMED OUT'} ---\n` + pane().trim().split('\n').slice(-25).join('\n'));
    if (SECOND) {
      await typeLine(SECOND);
      const ok2 = await waitTurn(2);
      console.log(`--- second message ${ok2 ? 'answered' : 'TIMED OUT'} ---\n` + pane().trim().split('\n').slice(-25).join('\n'));
    }
  }
} finally {
  // Leave Claude Code the way a user would (its logs are written on the way out), then close.
  try {
    tmux('send-keys', '-t', SESSION, 'C-c');
    await sleep(300);
    tmux('send-keys', '-t', SESSION, 'C-c');
    await waitPane(/Pane is dead|exited/i, 5000);
    tmux('kill-session', '-t', SESSION);
  } catch { /* gone */ }
  console.log('--- proxy log (steering, pruning, status) ---');
  for (const l of p.log().split('\n')) {
    if (/compaction_steering: reporting|prune|status=\d+/.test(l)) console.log(l.slice(25, 400));
  }
  // CC_DEBUG=1: Claude Code's own compaction decisions, from its debug log in the temp HOME.
  const dbg = path.join(home, 'cc-debug.txt');
  if (process.env.CC_DEBUG && fs.existsSync(dbg)) {
    console.log('--- Claude Code debug log (compaction lines) ---');
    for (const l of fs.readFileSync(dbg, 'utf8').split('\n')) {
      if (/compact/i.test(l)) console.log(l.slice(0, 300));
    }
  }
  const sums = upstream.filter((u) => u.summary);
  console.log(`summary-like upstream requests: ${sums.length ? sums.map((u) => u.n).join(', ') : 'none'}`);
  await p.stop();
  await mock.close();
  relay.close();
  fs.rmSync(cwd, { recursive: true, force: true, maxRetries: 5 });
  if (!process.env.KEEP_HOME) fs.rmSync(home, { recursive: true, force: true, maxRetries: 5 });
  else console.log(`HOME kept: ${home}`);
}
