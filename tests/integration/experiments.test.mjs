// experiments.test.mjs - live A/B arms (--experiment): sessions from the Anthropic SDK and from
// Claude Code split over two arms by weight and always the same arm per session (checked
// against the documented hash, computed here independently), the x-anthroxy-arm override and
// its 400, the anthroxy-arm response header on JSON, streams and errors, ctx.arm, the figures
// of GET /v1/experiments against what the mock received, a reload that removes an arm, a bad
// reload, and another instance with an inbound key.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {
  useProxy, startProxy, waitUpstreamProbed, request, until, assertAnthropicError, HERE, sleep, claudeBin, claudeEnv,
} from './helpers.mjs';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'anthroxy-exp-'));
const expFile = path.join(dir, 'exp.lua');
after(() => fs.rmSync(dir, { recursive: true, force: true }));

// Both arms tag the upstream request with ctx.arm (the mock records it).
fs.writeFileSync(path.join(dir, 'tag_arm.lua'), `
return { name = "tag_arm", on_upstream_request = function(oreq, ctx) oreq.anthroxy_test_arm = ctx.arm end }
`);
fs.writeFileSync(path.join(dir, 'retry_once.lua'), `
local ax = require "anthroxy"
return { name = "retry_once", on_upstream_error = function(req, ctx, err)
  ax.count("asked")
  return true
end }
`);
fs.writeFileSync(path.join(dir, 'plain.lua'), 'return { { "max_tokens", floor = 1024 }, { "tag_arm" } }\n');
const ARMS = [{ name: 'mask', weight: 1 }, { name: 'plain', weight: 3 }];
const EXP_V1 = `return { name = "itest", arms = {
  { name = "mask", weight = 1, chain = { { "observation_masking", keep = 2, step = 2, min_tokens = 1 },
                                         "retry_once", "tag_arm" } },
  { name = "plain", weight = 3, chain = "plain.lua" },
} }
`;
fs.writeFileSync(expFile, EXP_V1);

const env = useProxy({ name: 'experiments', mock: { cached: 7 }, args: ['--experiment', expFile] });
const noExp = useProxy({ name: 'experiments-none', mock: { cached: 3 } });

/** The arm the experiment's hash picks (docs/experiments.md): FNV-1a 64 of name "\n" key,
 * murmur3's finaliser, the top 53 bits as a fraction of the total weight. */
function armFor(expName, arms, key) {
  const M = (1n << 64n) - 1n;
  let h = 14695981039346656037n;
  const fold = (s) => { for (const b of Buffer.from(s, 'utf8')) { h ^= BigInt(b); h = (h * 1099511628211n) & M; } };
  fold(expName); fold('\n'); fold(key);
  h ^= h >> 33n; h = (h * 0xff51afd7ed558ccdn) & M; h ^= h >> 33n; h = (h * 0xc4ceb9fe1a85ec53n) & M; h ^= h >> 33n;
  const total = arms.reduce((s, a) => s + a.weight, 0);
  const u = (Number(h >> 11n) / 2 ** 53) * total;
  let acc = 0;
  const live = arms.filter((a) => a.weight > 0);
  for (const a of live) { acc += a.weight; if (u < acc) return a.name; }
  return live[live.length - 1].name;
}

// What each arm should show, from what the mock received and answered.
const expected = {};
function expect(arm) {
  expected[arm] ??= { requests: 0, prompt: 0, cached: 0, output: 0, overflows: 0, tooLong: 0, retries: 0 };
  return expected[arm];
}
/** Sends one request and books the mock records it caused to the arm its answer names. */
async function send(body, headers = {}, opts = {}) {
  const before = env.mock.chats().length;
  const r = await request(env.proxy, { method: 'POST', path: '/v1/messages', body, headers });
  const arm = r.headers['anthroxy-arm'];
  if (arm && !opts.noBook) {
    const e = expect(arm);
    e.requests++;
    for (const rec of env.mock.chats().slice(before)) {
      if (rec.usage) {
        e.prompt += rec.usage.prompt_tokens;
        e.cached += rec.usage.prompt_tokens_details.cached_tokens;
        e.output += rec.usage.completion_tokens;
      } else if (rec.reply && rec.reply.promptTokens >= 32768) {
        e.overflows++; // the mock's context-overflow answer (its nCtx is 32768)
      }
      assert.equal(rec.body.anthroxy_test_arm, arm, 'ctx.arm is the arm the answer names');
    }
  }
  return { r, arm, recs: env.mock.chats().slice(before) };
}
const ask = (text, extra = {}) => ({ model: 'claude-sonnet-4-5', max_tokens: 64, messages: [{ role: 'user', content: text }], ...extra });
const experiments = async () => (await request(env.proxy, { path: '/v1/experiments' })).json;
const armOf = (j, name) => j.arms.find((a) => a.name === name);

const sessionArm = new Map(); // session id -> arm seen

test('SDK sessions split by weight, each always in the arm the hash picks', env.wrap(async () => {
  const counts = { mask: 0, plain: 0 };
  const N = 300;
  for (let i = 0; i < N; i++) {
    const sid = `sdk-${i}`;
    const { data, response } = await env.client.messages
      .create(ask(`hello ${i}`), { headers: { 'x-session-id': sid } }).withResponse();
    assert.equal(data.type, 'message');
    const arm = response.headers.get('anthroxy-arm');
    assert.equal(arm, armFor('itest', ARMS, sid), sid);
    counts[arm]++;
    sessionArm.set(sid, arm);
    const e = expect(arm);
    e.requests++;
    const rec = env.mock.lastChat();
    e.prompt += rec.usage.prompt_tokens;
    e.cached += rec.usage.prompt_tokens_details.cached_tokens;
    e.output += rec.usage.completion_tokens;
    assert.equal(rec.body.anthroxy_test_arm, arm);
  }
  // weights 1:3 -> 75 % plain; 3 standard deviations of a binomial over 300 is 7.5 %
  assert.ok(Math.abs(counts.plain / N - 0.75) < 0.075, JSON.stringify(counts));
  // a second turn of the same sessions: the same arm
  for (let i = 0; i < 40; i++) {
    const { r, arm } = await send(ask(`again ${i}`), { 'x-session-id': `sdk-${i}` });
    assert.equal(r.status, 200);
    assert.equal(arm, sessionArm.get(`sdk-${i}`));
  }
  const j = await experiments();
  assert.equal(j.experiment.name, 'itest');
  assert.equal(armOf(j, 'mask').sessions + armOf(j, 'plain').sessions, N);
  assert.equal(armOf(j, 'mask').sessions, counts.mask);
  assert.match(env.proxy.log(), /session=sdk-1 arm=(mask|plain) /);
}));

test('x-anthroxy-arm overrides; an unknown arm is a 400 naming the arms', env.wrap(async () => {
  const sid = [...sessionArm].find(([, a]) => a === 'plain')[0];
  const { r, arm, recs } = await send(ask('override me'), { 'x-session-id': sid, 'x-anthroxy-arm': 'mask' });
  assert.equal(r.status, 200);
  assert.equal(arm, 'mask');
  assert.equal(recs[0].body.anthroxy_test_arm, 'mask', 'the mask arm\'s chain ran');
  const back = await send(ask('no override'), { 'x-session-id': sid });
  assert.equal(back.arm, 'plain', 'the override does not move the session');
  const bad = await request(env.proxy, { method: 'POST', path: '/v1/messages', body: ask('x'), headers: { 'x-anthroxy-arm': 'nope' } });
  assertAnthropicError(bad, 400, 'invalid_request_error', /x-anthroxy-arm: no arm named 'nope' \(the arms are: mask, plain\)/);
  assert.equal(bad.headers['anthroxy-arm'], undefined, 'no arm was assigned');
}));

test('streams and errors after assignment carry anthroxy-arm', env.wrap(async () => {
  const { r, arm } = await send(ask('stream please', { stream: true }), { 'x-session-id': 'stream-1' });
  assert.equal(r.status, 200);
  assert.equal(arm, armFor('itest', ARMS, 'stream-1'));
  assert.match(r.text, /event: message_stop/);
  env.on('upstream fails', { status: 503 });
  const bad = await send(ask('upstream fails'), { 'x-session-id': 'stream-1' });
  assertAnthropicError(bad.r, 503, 'api_error');
  assert.equal(bad.arm, arm, 'the error names the arm too');
}));

test('overflows, retries and "prompt is too long" are counted in their arm', env.wrap(async () => {
  let calls = 0;
  env.on('overflow once', () => (calls++ === 0 ? { promptTokens: 40000 } : { text: 'fits now' }));
  env.on('overflow always', { promptTokens: 40000 });
  const once = await send(ask('overflow once'), { 'x-anthroxy-arm': 'mask', 'x-session-id': 'ovf' });
  assert.equal(once.r.status, 200, once.r.text);
  assert.equal(once.recs.length, 2, 'sent again after on_upstream_error');
  expect('mask').retries++;
  const always = await send(ask('overflow always'), { 'x-anthroxy-arm': 'plain', 'x-session-id': 'ovf' });
  assertAnthropicError(always.r, 400, 'invalid_request_error', /^prompt is too long/);
  assert.equal(always.arm, 'plain');
  expect('plain').tooLong++;
  const j = await experiments();
  assert.equal(armOf(j, 'mask').counters.retry_once.asked, 1);
  const h = (await request(env.proxy, { path: '/health' })).json;
  assert.equal(h.policies.counters.mask.retry_once.asked, 1, '/health shows the counters too');
  assert.equal(h.policies.experiment, expFile);
  assert.ok(h.policies.policies.some((p) => p.name === 'observation_masking' && p.arm === 'mask'));
}));

test('observation masking in the mask arm: what the mock got, and its counters', env.wrap(async () => {
  const msgs = [{ role: 'user', content: 'fix it' }];
  for (let k = 1; k <= 6; k++) {
    msgs.push({ role: 'assistant', content: [{ type: 'tool_use', id: `toolu_${k}`, name: 'Read', input: { k } }] });
    msgs.push({ role: 'user', content: [{ type: 'tool_result', tool_use_id: `toolu_${k}`, content: `output number ${k} `.repeat(20) }] });
  }
  const body = { model: 'claude-sonnet-4-5', max_tokens: 64, tools: [{ name: 'Read', input_schema: { type: 'object' } }], messages: msgs };
  const before = (await experiments());
  const m = await send(body, { 'x-anthroxy-arm': 'mask', 'x-session-id': 'masked' });
  assert.equal(m.r.status, 200, m.r.text);
  const tools = m.recs[0].body.messages.filter((x) => x.role === 'tool');
  assert.equal(tools.length, 6);
  const maskedN = tools.filter((x) => JSON.stringify(x.content).includes('masked by the proxy')).length;
  assert.equal(maskedN, 4, 'keep 2: four masked');
  assert.ok(JSON.stringify(tools[5].content).includes('output number 6'));
  const p = await send(body, { 'x-anthroxy-arm': 'plain', 'x-session-id': 'masked' });
  const ptools = p.recs[0].body.messages.filter((x) => x.role === 'tool');
  assert.equal(ptools.filter((x) => JSON.stringify(x.content).includes('masked by the proxy')).length, 0);
  assert.ok(m.recs[0].usage.prompt_tokens < p.recs[0].usage.prompt_tokens, 'masking sends fewer tokens');
  const j = await experiments();
  const was = before.arms.find((a) => a.name === 'mask').counters.observation_masking?.masked ?? 0;
  assert.equal(armOf(j, 'mask').counters.observation_masking.masked - was, 4);
  assert.ok(armOf(j, 'mask').tokens.removed_by_policies > 0);
}));

test('tool calls in the answers and is_error results in the latest turn are counted', env.wrap(async () => {
  const before = armOf(await experiments(), 'plain');
  env.on('call two tools', { toolCalls: [{ name: 'Read', arguments: { path: 'a' } }, { name: 'Read', arguments: { path: 'b' } }] });
  const tools = [{ name: 'Read', input_schema: { type: 'object', properties: { path: { type: 'string' } } } }];
  const body = {
    model: 'claude-sonnet-4-5', max_tokens: 64, tools,
    messages: [
      { role: 'user', content: 'start' },
      { role: 'assistant', content: [{ type: 'tool_use', id: 'toolu_e1', name: 'Read', input: { path: 'x' } },
        { type: 'tool_use', id: 'toolu_e2', name: 'Read', input: { path: 'y' } }] },
      { role: 'user', content: [{ type: 'tool_result', tool_use_id: 'toolu_e1', content: 'no such file', is_error: true },
        { type: 'tool_result', tool_use_id: 'toolu_e2', content: 'fine' }, { type: 'text', text: 'call two tools' }] },
    ],
  };
  const { r } = await send(body, { 'x-anthroxy-arm': 'plain', 'x-session-id': 'tools-1' });
  assert.equal(r.status, 200, r.text);
  assert.equal(r.json.content.filter((b) => b.type === 'tool_use').length, 2);
  const after = armOf(await experiments(), 'plain');
  assert.equal(after.tool_calls - before.tool_calls, 2);
  assert.equal(after.tool_errors - before.tool_errors, 1);
}));

test('/v1/experiments figures match what the mock received', env.wrap(async () => {
  const j = await experiments();
  for (const name of ['mask', 'plain']) {
    const a = armOf(j, name);
    const e = expected[name];
    assert.equal(a.active, true);
    assert.equal(a.requests, e.requests, `${name} requests`);
    assert.equal(a.tokens.upstream_prompt, e.prompt, `${name} prompt tokens`);
    assert.equal(a.tokens.cached, e.cached, `${name} cached tokens`);
    assert.equal(a.tokens.output, e.output, `${name} output tokens`);
    assert.ok(Math.abs(a.cache_reuse - e.cached / e.prompt) < 1e-9, `${name} cache reuse`);
    assert.equal(a.overflows, e.overflows, `${name} overflows`);
    assert.equal(a.prompt_too_long, e.tooLong, `${name} prompt too long`);
    assert.equal(a.retries, e.retries, `${name} retries`);
    assert.ok(a.ttft_ms.n > 0 && a.ttft_ms.p50 > 0 && a.ttft_ms.p95 >= a.ttft_ms.p50);
    assert.ok(a.total_ms.p95 >= a.total_ms.p50 && a.total_ms.n >= a.ttft_ms.n);
    assert.ok(a.tokens.client_estimate > 0);
  }
  assert.equal(expected.mask.overflows, 1);
  assert.equal(expected.plain.overflows, 1);
}));

/** Runs `claude -p task` once against the proxy; resolves when it exits. */
async function runClaude(task) {
  const home = fs.mkdtempSync(path.join(dir, 'home-'));
  const cwd = fs.mkdtempSync(path.join(dir, 'cwd-'));
  const child = spawn(claudeBin(), ['-p', task, '--output-format', 'json', '--max-turns', '2'], {
    cwd,
    stdio: ['ignore', 'pipe', 'pipe'],
    env: claudeEnv(home, env.proxy.url),
  });
  let out = '';
  child.stdout.on('data', (d) => { out += d; });
  child.stderr.on('data', (d) => { out += d; });
  const timer = setTimeout(() => child.kill('SIGKILL'), 120000);
  const code = await new Promise((resolve) => child.on('exit', (c, s) => resolve(c ?? s)));
  clearTimeout(timer);
  return { code, out };
}

test('Claude Code sessions: every request of a session in the arm its id hashes to', env.wrap(async () => {
  const seen = new Map();
  for (let i = 0; i < 4; i++) {
    const before = env.mock.chats().length;
    const r = await runClaude(`say hello ${i}`);
    assert.equal(r.code, 0, r.out);
    const recs = env.mock.chats().slice(before);
    assert.ok(recs.length >= 1);
    // the session ids Claude Code sent, from the summary lines (UUIDs; ours are sdk-N)
    const lines = env.proxy.log().split('\n')
      .filter((l) => / messages model=.* session=[0-9a-f]{8}-[0-9a-f]{4}-/.test(l));
    for (const l of lines) {
      const [, sid, arm] = / session=(\S+) arm=(\S+) /.exec(l);
      assert.equal(arm, armFor('itest', ARMS, sid), l);
      if (seen.has(sid)) assert.equal(seen.get(sid), arm);
      seen.set(sid, arm);
    }
    // all the mock saw in this run came from one arm's chain
    assert.equal(new Set(recs.map((x) => x.body.anthroxy_test_arm)).size, 1);
    for (const rec of recs) {
      const e = expect(rec.body.anthroxy_test_arm);
      e.requests++;
      e.prompt += rec.usage.prompt_tokens;
    }
  }
  assert.equal(seen.size, 4, `four Claude Code sessions: ${[...seen.keys()]}`);
}));

test('a reload that removes an arm moves its sessions by the new weights; others stay', env.wrap(async () => {
  // fresh first: under the new weights most of mask's sessions would hash to fresh
  const NEW = [{ name: 'fresh', weight: 1 }, { name: 'mask', weight: 1 }];
  const g0 = (await experiments()).generation;
  const plainPrompt = armOf(await experiments(), 'plain').tokens.upstream_prompt;
  fs.writeFileSync(expFile, `return { name = "itest", arms = {
    { name = "fresh", weight = 1, chain = { "tag_arm" } },
    { name = "mask", weight = 1, chain = { "observation_masking", "tag_arm" } } } }\n`);
  env.proxy.proc.kill('SIGHUP');
  assert.ok(await until(async () => (await experiments()).generation > g0, 5000), 'reloaded');
  let moved = 0;
  let stayedAgainstHash = 0;
  for (let i = 0; i < 60; i++) {
    const sid = `sdk-${i}`;
    const { r, arm } = await send(ask(`after reload ${i}`), { 'x-session-id': sid }, { noBook: true });
    assert.equal(r.status, 200);
    if (sessionArm.get(sid) === 'mask') {
      assert.equal(arm, 'mask', `${sid} keeps its arm`);
      if (armFor('itest', NEW, sid) !== 'mask') stayedAgainstHash++;
    } else {
      assert.equal(arm, armFor('itest', NEW, sid), `${sid} moved by the new weights`);
      moved++;
    }
  }
  assert.ok(moved > 20 && stayedAgainstHash > 0, `moved ${moved}, kept ${stayedAgainstHash}`);
  assert.match(env.proxy.log(), /session sdk-\d+: its arm plain is gone from experiment itest, moved to (mask|fresh)/);
  const j = await experiments();
  assert.deepEqual(j.experiment.arms.map((a) => a.name), ['fresh', 'mask']);
  assert.equal(armOf(j, 'plain').active, false, 'the removed arm stays listed');
  assert.equal(armOf(j, 'plain').requests, expected.plain.requests, 'with its figures');
  assert.equal(armOf(j, 'plain').tokens.upstream_prompt, plainPrompt);
  assert.ok(armOf(j, 'fresh').sessions > 0);

  // a broken file: the old experiment stays, /health says why
  fs.writeFileSync(expFile, 'return { name = "itest", arms = { { name = "x y", chain = "plain" } } }\n');
  env.proxy.proc.kill('SIGHUP');
  const h = await until(async () => {
    const r = await request(env.proxy, { path: '/health' });
    return r.json.policies.last_error ? r.json : null;
  }, 5000);
  assert.ok(h, 'the reload error shows in /health');
  assert.match(h.policies.last_error, /exp\.lua: arms\[1\]\.name/);
  const g1 = (await experiments()).generation;
  const still = await send(ask('still fine'), { 'x-anthroxy-arm': 'fresh' }, { noBook: true });
  assert.equal(still.r.status, 200);
  assert.equal(still.arm, 'fresh', 'the arms of the last good file');
  assert.equal((await experiments()).generation, g1, 'no new generation');
  // saving the file is enough: the directory is watched, like the policies'
  fs.writeFileSync(expFile, EXP_V1);
  assert.ok(await until(async () => (await experiments()).generation > g1, 5000), 'reloaded on save');
  assert.deepEqual((await experiments()).experiment.arms.map((a) => a.name), ['mask', 'plain']);
}));

test('another instance assigns the same arms; /v1/experiments needs the key when keys are set', env.wrap(async () => {
  fs.writeFileSync(expFile, EXP_V1);
  const other = await startProxy({ upstream: env.mock.base, args: ['--experiment', expFile, '--api-key', 'k-exp'] });
  try {
    await waitUpstreamProbed(other);
    const no = await request(other, { path: '/v1/experiments' });
    assertAnthropicError(no, 401, 'authentication_error');
    for (let i = 100; i < 130; i++) {
      const r = await request(other, { method: 'POST', path: '/v1/messages', body: ask('hi'), headers: { 'x-api-key': 'k-exp', 'x-session-id': `sdk-${i}` } });
      assert.equal(r.status, 200, r.text);
      assert.equal(r.headers['anthroxy-arm'], sessionArm.get(`sdk-${i}`), `sdk-${i} as on the first instance`);
    }
    const yes = await request(other, { path: '/v1/experiments', headers: { 'x-api-key': 'k-exp' } });
    assert.equal(yes.status, 200);
    assert.equal(armOf(yes.json, 'mask').requests + armOf(yes.json, 'plain').requests, 30);
  } finally {
    const exit = await other.stop();
    assert.equal(exit.code, 0);
  }
  await sleep(0);
}));

test('without an experiment: one arm "default", with its figures and counters', noExp.wrap(async () => {
  const r = await request(noExp.proxy, { method: 'POST', path: '/v1/messages', body: ask('plain hello'), headers: { 'x-session-id': 'solo' } });
  assert.equal(r.status, 200, r.text);
  assert.equal(r.headers['anthroxy-arm'], 'default');
  const bad = await request(noExp.proxy, { method: 'POST', path: '/v1/messages', body: ask('x'), headers: { 'x-anthroxy-arm': 'mask' } });
  assertAnthropicError(bad, 400, 'invalid_request_error', /no arm named 'mask' \(the arms are: default\)/);
  const ok = await request(noExp.proxy, { method: 'POST', path: '/v1/messages', body: ask('y'), headers: { 'x-anthroxy-arm': 'default' } });
  assert.equal(ok.status, 200);
  const j = (await request(noExp.proxy, { path: '/v1/experiments' })).json;
  assert.equal(j.experiment, null);
  assert.deepEqual(j.arms.map((a) => a.name), ['default']);
  const a = j.arms[0];
  const recs = noExp.mock.chats();
  assert.equal(a.requests, recs.length);
  assert.equal(a.tokens.upstream_prompt, recs.reduce((n, x) => n + x.usage.prompt_tokens, 0));
  assert.equal(a.tokens.cached, 3 * recs.length);
  assert.equal(a.sessions, 2, 'solo and the default session');
  assert.equal(a.tokens.client_estimate, null, 'not measured without an experiment');
}));
