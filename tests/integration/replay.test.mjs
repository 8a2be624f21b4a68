// replay.test.mjs - `anthroxy replay`: a Claude Code session recorded against the mock, then
// replayed offline through four arms whose figures must differ as they do: masking sends
// fewer tokens than no pruning; prune moving its cut in steps keeps more of the prompt cache
// than cutting exactly every turn. The requests rebuild byte for byte; report.html draws its
// plots (a headless Chromium screenshot is kept); without gnuplot the tables remain. With the
// real llama-server (tests/real/), --upstream reports the server's cached_tokens.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { startProxy, waitUpstreamProbed, startRecorder, anthroxyBin, ROOT, sdkClient } from './helpers.mjs';
import { startMock } from './mock-llama.mjs';
import { runClaude, scriptEdits, writeTodo, readRecordings } from './record-helpers.mjs';

const tmpRoot = fs.mkdtempSync(path.join(os.tmpdir(), 'anthroxy-replay-'));
const recDir = path.join(tmpRoot, 'rec');
const expFile = path.join(tmpRoot, 'arms.lua');
const SCREENSHOT = process.env.ANTHROXY_REPORT_PNG || path.join(os.tmpdir(), 'anthroxy-report.png');
let sent = []; // the client's requests, as they arrived

fs.writeFileSync(expFile, `return {
  name = "replay-test",
  arms = {
    { name = "none", weight = 1, chain = { { "max_tokens", floor = 16384, margin = 0.15 } } },
    { name = "mask", weight = 1, chain = {
        { ${JSON.stringify(path.join(ROOT, 'tests', 'fixtures', 'policy', 'mask_old_results.lua'))}, keep = 2 } } },
    { name = "prune_steps", weight = 1, chain = { { "prune", threshold = 0.5, target = 0.4, step = 0.10 } } },
    { name = "prune_exact", weight = 1, chain = { { "prune", threshold = 0.5, target = 0.4, step = 0 } } },
  },
}
`);

/** Runs anthroxy replay; returns { code, out, err }. */
function replay(args, env = process.env) {
  return new Promise((resolve) => {
    const p = spawn(anthroxyBin(), ['replay', ...args], { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    p.stdout.on('data', (d) => { out += d; });
    p.stderr.on('data', (d) => { err += d; });
    p.on('exit', (code) => resolve({ code, out, err }));
  });
}

before(async () => {
  const mock = await startMock({ nCtx: 200000, prefixCache: true });
  const proxy = await startProxy({ upstream: mock.base, args: ['--record', recDir] });
  try {
    await waitUpstreamProbed(proxy);
    const fwd = await startRecorder(proxy);
    const cwd = fs.mkdtempSync(path.join(tmpRoot, 'work-'));
    const file = path.join(cwd, 'todo.txt');
    writeTodo(file, 12);
    scriptEdits(mock, 'todo.txt', file, 12);
    const r = await runClaude('In todo.txt mark every line done, one edit at a time.', {
      cwd, tmpRoot, baseUrl: fwd.url, maxTurns: 40,
    });
    await fwd.close();
    assert.equal(r.code, 0, `claude: ${r.out.slice(-1500)}\n${r.err.slice(-1500)}`);
    sent = fwd.requests.filter((q) => q.method === 'POST' && /^\/v1\/messages(\?|$)/.test(q.path));
  } finally {
    const exit = await proxy.stop();
    await mock.close();
    assert.equal(exit.code, 0, proxy.tail());
  }
});

after(() => fs.rmSync(tmpRoot, { recursive: true, force: true }));

const summary = (report, arm, key) => report.summary[arm][key].mean;

test('replay through four arms: figures differ as they must, requests byte for byte', { timeout: 120000 }, async () => {
  const out = path.join(tmpRoot, 'out');
  const dump = path.join(tmpRoot, 'dump');
  const r = await replay(['--experiment', expFile, '--window', '40000', '--out', out, '--dump-requests', dump, recDir]);
  assert.equal(r.code, 0, r.err);
  assert.match(r.err, /sessions 1\/1, 100 turns/, 'progress: sessions done, turns');
  assert.match(r.err, /turns\/s/);

  // Every recorded request rebuilt byte for byte, in order.
  const recs = readRecordings(recDir).flatMap((f) => f.records);
  assert.equal(recs.length, sent.length);
  assert.equal(sent.length, 25, 'a read and an edit per line, then the answer');
  const dumped = fs.readdirSync(dump).sort().map((f) => fs.readFileSync(path.join(dump, f), 'utf8'));
  assert.deepEqual(dumped, sent.map((q) => q.raw), 'replay rebuilt every client request byte for byte');

  const report = JSON.parse(fs.readFileSync(path.join(out, 'report.json'), 'utf8'));
  assert.equal(report.sessions, 1);
  assert.equal(report.turns, 25);
  assert.deepEqual(report.arms.map((a) => a.name), ['none', 'mask', 'prune_steps', 'prune_exact']);
  const rows = report.turns_detail;
  assert.equal(rows.length, 100);
  assert.ok(rows.every((x) => !x.error), JSON.stringify(rows.find((x) => x.error)));

  // Without policies nothing is removed; the tokens sent grow with the conversation.
  const none = rows.filter((x) => x.arm === 'none');
  assert.ok(none.every((x) => x.removed_tokens === 0 && x.removed_messages === 0 && x.masked_tool_results === 0));
  assert.ok(none[24].sent_tokens > none[0].sent_tokens * 1.5, 'the context grows');
  // Every arm starts from the same client request.
  for (let t = 0; t < 25; t++) {
    const c = rows.filter((x) => x.turn === t).map((x) => x.client_tokens);
    assert.ok(Math.max(...c) - Math.min(...c) <= Math.max(...c) * 0.02, `turn ${t}: client tokens ${c}`);
  }

  // Masking sends fewer tokens than no pruning, by masking tool results, with pairs intact.
  assert.ok(summary(report, 'mask', 'tokens_sent') < 0.9 * summary(report, 'none', 'tokens_sent'),
    `mask ${summary(report, 'mask', 'tokens_sent')} vs none ${summary(report, 'none', 'tokens_sent')}`);
  assert.ok(summary(report, 'mask', 'tool_results_masked') > 0);
  const masked = rows.find((x) => x.arm === 'mask' && x.masked_tool_results > 0);
  assert.equal(masked.what[0].policy, 'mask_old_results');
  assert.ok(masked.what[0].changes.masked.every((id) => typeof id === 'string' && id.length > 0), 'which results');
  for (const arm of ['none', 'mask', 'prune_steps', 'prune_exact']) {
    assert.equal(summary(report, arm, 'pairs_intact'), 1, `${arm}: tool pairs intact`);
    assert.equal(summary(report, arm, 'fits_window'), 1, `${arm}: fits the window`);
  }
  // prune removes whole messages once the window's threshold is crossed, and says which.
  const pruned = rows.find((x) => x.arm === 'prune_exact' && x.removed_messages > 0);
  assert.ok(pruned, 'prune removed messages');
  assert.ok(pruned.what.some((w) => w.policy === 'prune' && w.changes.removed.length > 0));
  // Pruning in steps keeps more of the prompt cache than cutting exactly every turn.
  assert.ok(summary(report, 'prune_steps', 'prefix_reuse') > summary(report, 'prune_exact', 'prefix_reuse') + 0.02,
    `steps ${summary(report, 'prune_steps', 'prefix_reuse')} vs exact ${summary(report, 'prune_exact', 'prefix_reuse')}`);
  assert.ok(summary(report, 'none', 'prefix_reuse') > 0.9, 'no pruning: the prefix only grows');
  // The verdict: with one session no interval separates anything, and the report says so.
  assert.equal(report.verdict.most_prefix_reuse.arm, 'none');
  assert.equal(report.verdict.most_prefix_reuse.separated, false, 'one session: degenerate intervals are not evidence');
  // Intervals and paired differences to the first arm.
  assert.equal(report.baseline, 'none');
  const d = report.difference_to_baseline.mask.tokens_sent;
  assert.ok(d.mean < 0 && d.ci95.length === 2);

  // turns.csv: one row per session, turn and arm.
  const csv = fs.readFileSync(path.join(out, 'turns.csv'), 'utf8').trim().split('\n');
  assert.equal(csv.length, 1 + 100);
  assert.match(csv[0], /^session,file,turn,arm,client_tokens,sent_tokens,removed_tokens/);

  // report.html: self-contained, four inlined plots, opened in headless Chromium.
  const html = fs.readFileSync(path.join(out, 'report.html'), 'utf8');
  assert.equal((html.match(/<svg/g) || []).length, 4, 'four plots inlined');
  assert.ok(!/<(script|link|img)[^>]+(src|href)=/i.test(html), 'nothing loaded from elsewhere');
  for (const arm of ['none', 'mask', 'prune_steps', 'prune_exact']) assert.ok(html.includes(arm));
  assert.match(html, /Most prefix-cache reuse: <b>none<\/b>/);
  const chromium = ['chromium', 'chromium-browser'].find((c) => spawnSync(c, ['--version']).status === 0);
  if (!chromium) {
    console.log('# chromium not installed (scripts/test.sh installs it): no screenshot');
    return;
  }
  fs.rmSync(SCREENSHOT, { force: true });
  const shot = spawnSync(chromium, ['--headless', '--no-sandbox', '--disable-gpu', '--hide-scrollbars',
    '--window-size=1200,3000', `--screenshot=${SCREENSHOT}`, `file://${path.join(out, 'report.html')}`],
  { timeout: 60000, env: { ...process.env, HOME: tmpRoot } });
  assert.equal(shot.status, 0, String(shot.stderr));
  const png = fs.readFileSync(SCREENSHOT);
  assert.equal(png.subarray(1, 4).toString('latin1'), 'PNG');
  assert.ok(png.length > 60000, `a screenshot with plots, ${png.length} bytes`);
  console.log(`# report screenshot: ${SCREENSHOT}`);
});

test("offline, a request over the window goes through the chain's on_upstream_error", async () => {
  const exp = path.join(tmpRoot, 'pad.lua');
  fs.writeFileSync(exp, `return { name = "pad", arms = {
    { name = "pad", chain = { { "prune" },
      { ${JSON.stringify(path.join(ROOT, 'tests', 'fixtures', 'policy', 'pad_old_result.lua'))}, chars = 150000 } } } } }\n`);
  const out = path.join(tmpRoot, 'out-pad');
  const r = await replay(['--experiment', exp, '--window', '32768', '--out', out, recDir]);
  assert.equal(r.code, 0, r.err);
  const rows = JSON.parse(fs.readFileSync(path.join(out, 'report.json'), 'utf8')).turns_detail;
  const retried = rows.filter((x) => x.retried);
  assert.ok(retried.length > 0, 'the padded requests overflow, and prune has them sent again');
  for (const x of retried) {
    assert.equal(x.overflowed, true);
    assert.equal(x.fits_window, true, `turn ${x.turn}: fits after prune's on_upstream_error`);
    const last = x.what[x.what.length - 1];
    assert.deepEqual([last.policy, last.hook], ['prune', 'on_upstream_error'], JSON.stringify(x.what));
    assert.ok(last.changes.removed || last.changes.changed, 'prune cut the padded request');
    assert.ok(x.what.some((w) => w.policy === 'pad_old_result' && w.hook === 'on_request'));
  }
  const csv = fs.readFileSync(path.join(out, 'turns.csv'), 'utf8').trim().split('\n');
  assert.match(csv[0], /,overflowed,retried$/);
  assert.ok(csv.slice(1).some((l) => l.endsWith(',1,1')));
});

test('without gnuplot the report keeps its tables and says how to install it', async () => {
  const out = path.join(tmpRoot, 'out-noplot');
  const env = { ...process.env, PATH: '/nonexistent' };
  const r = await replay(['--experiment', expFile, '--arms', 'none,mask', '--out', out, recDir], env);
  assert.equal(r.code, 0, r.err);
  assert.match(r.err, /gnuplot is not installed/);
  const html = fs.readFileSync(path.join(out, 'report.html'), 'utf8');
  assert.match(html, /apt-get install gnuplot-nox/);
  assert.ok(!html.includes('<svg'));
  assert.match(html, /tokens sent/);
  const report = JSON.parse(fs.readFileSync(path.join(out, 'report.json'), 'utf8'));
  assert.deepEqual(Object.keys(report.summary), ['none', 'mask'], '--arms picks the arms');
});

test('bad invocations fail with a message', async () => {
  let r = await replay(['--experiment', expFile, '--arms', 'nope', '--out', path.join(tmpRoot, 'x'), recDir]);
  assert.equal(r.code, 1);
  assert.match(r.err, /--arms nope: no such arm \(the experiment has none, mask, prune_steps, prune_exact\)/);
  r = await replay(['--experiment', expFile, recDir]);
  assert.equal(r.code, 2);
  assert.match(r.err, /usage: anthroxy replay/);
  r = await replay(['--experiment', expFile, '--out', path.join(tmpRoot, 'x'), path.join(tmpRoot, 'missing')]);
  assert.equal(r.code, 1);
  assert.match(r.err, /missing: no such file or directory/);
  r = await replay(['--experiment', path.join(tmpRoot, 'nofile.lua'), '--out', path.join(tmpRoot, 'x'), recDir]);
  assert.equal(r.code, 1);
  assert.match(r.err, /nofile\.lua/);
});

test('with the real llama-server, --upstream reports its cached_tokens', { timeout: 180000 }, async (t) => {
  const bin = process.env.LLAMA_SERVER || '/work/.cache/llama/llama-server';
  const model = process.env.LLAMA_MODEL || '/work/.cache/llama/tiny.gguf';
  if (!fs.existsSync(bin) || !fs.existsSync(model)) return t.skip('no llama-server at /work/.cache/llama (tests/real/README.md)');
  const { startLlama } = await import('../real/llama.mjs');
  process.env.LLAMA_SERVER = bin;
  process.env.LLAMA_MODEL = model;
  const llama = await startLlama({ ctx: 16384, np: 1 });
  if (!llama) return t.skip('llama-server did not start');
  const small = path.join(tmpRoot, 'rec-small');
  try {
    // A small SDK conversation recorded through the proxy against the real server.
    const proxy = await startProxy({ upstream: llama.url, args: ['--record', small] });
    try {
      await waitUpstreamProbed(proxy, 10000);
      const client = sdkClient(proxy, { defaultHeaders: { 'x-session-id': 'real-1' } });
      const messages = [{ role: 'user', content: `Here are some notes. ${'The cache keeps the prefix. '.repeat(40)} Say ok.` }];
      for (let i = 0; i < 4; i++) {
        const m = await client.messages.create({ model: 'tiny', max_tokens: 8, messages });
        messages.push({ role: 'assistant', content: m.content.length ? m.content : [{ type: 'text', text: '.' }] });
        messages.push({ role: 'user', content: `Turn ${i}: and again. ${'More notes follow here. '.repeat(10)}` });
      }
    } finally {
      assert.equal((await proxy.stop()).code, 0);
    }
    const out = path.join(tmpRoot, 'out-real');
    const r = await replay(['--experiment', expFile, '--arms', 'none,mask', '--upstream', llama.url,
      '--max-tokens', '4', '--out', out, small]);
    assert.equal(r.code, 0, r.err);
    const report = JSON.parse(fs.readFileSync(path.join(out, 'report.json'), 'utf8'));
    const rows = report.turns_detail.filter((x) => x.arm === 'none');
    assert.equal(rows.length, 4);
    assert.ok(rows.every((x) => x.upstream && x.upstream.prompt_tokens > 0), JSON.stringify(rows.map((x) => x.upstream)));
    assert.ok(rows.slice(1).every((x) => x.upstream.cached_tokens > 0), `cached_tokens: ${rows.map((x) => x.upstream.cached_tokens)}`);
    assert.ok(rows.every((x) => x.sent_tokens === x.upstream.prompt_tokens), 'with --upstream the real counts');
    console.log(`# real llama-server: prompt_tokens ${rows.map((x) => x.upstream.prompt_tokens)}, ` +
      `cached_tokens ${rows.map((x) => x.upstream.cached_tokens)}, prompt_ms ${rows.map((x) => x.upstream.prompt_ms)}`);
    assert.ok(report.summary.none.upstream_cached_ratio.mean > 0.3);
    assert.equal(report.token_counts, 'upstream prompt_tokens');
  } finally {
    await llama.stop();
  }
});
