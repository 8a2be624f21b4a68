// fleet.test.mjs - several upstreams (core/fleet.c) with two or three mocks: routing by model
// name and pattern, on_route choosing, session affinity (stable per session, spread across
// sessions), a replica killed (its sessions move, no request fails that had not started
// streaming), the retry budget exhausted (a clear error), /health listing every upstream, and
// the fleet of one unchanged.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { startProxy, request, until, sdkClient } from './helpers.mjs';
import { startMock } from './mock-llama.mjs';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'anthroxy-fleet-'));
after(() => fs.rmSync(tmp, { recursive: true, force: true }));

const body = (model, text, extra = {}) => ({ model, max_tokens: 20, messages: [{ role: 'user', content: text }], ...extra });
const sess = (id) => ({ 'x-claude-code-session-id': id });

/** Posts one message; returns the parsed answer or error with its status. */
async function post(proxy, model, text, headers = {}, extra = {}) {
  return request(proxy, { method: 'POST', path: '/v1/messages', body: body(model, text, extra), headers });
}

/** Which of the mocks received a chat whose last text includes marker (its index, or -1). */
function servedBy(mocks, marker) {
  return mocks.findIndex((m) => m.chats().some((c) => c.lastText.includes(marker)));
}

async function health(proxy) {
  const h = await request(proxy, { path: '/health' });
  return { status: h.status, json: h.json };
}

/** Starts a proxy and waits until /health has every upstream probed ok. */
async function fleetProxy(args, n) {
  const p = await startProxy({ args });
  const ok = await until(async () => {
    const { json } = await health(p);
    return json && json.upstreams && json.upstreams.length === n && json.upstreams.every((u) => u.state === 'ok');
  }, 5000, 20);
  if (!ok) {
    await p.stop();
    throw new Error(`fleet not probed ok:\n${p.tail()}`);
  }
  return p;
}

async function stopClean(p) {
  const { code, signal } = await p.stop();
  assert.equal(signal, null, p.tail());
  assert.equal(code, 0, p.tail());
}

test('routing by model name and pattern, /health lists every upstream', async () => {
  const a = await startMock({ models: ['qwen'] });
  const b = await startMock({ models: ['qwen'] });
  const c = await startMock({ models: ['llama3.2:latest', 'phi'] }); // an Ollama-style name
  const p = await fleetProxy([
    '--upstream', `a=${a.base}`, '--upstream', `b=${b.base},max=4`,
    '--upstream', `c=${c.base},kind=ollama`,
    '--model-map', 'claude-3-5-haiku*=llama3.2:latest', '--model-map', 'claude-opus*=@c',
    '--model-map', '*=qwen',
  ], 3);
  try {
    const mocks = [a, b, c];
    // the client's own name, served by c only (Ollama's ":latest" may be left off)
    let r = await post(p, 'llama3.2', 'to-llama');
    assert.equal(r.status, 200, r.text);
    assert.equal(servedBy(mocks, 'to-llama'), 2);
    assert.equal(c.lastChat().body.model, 'llama3.2');
    // a router-mode server: the second model it lists is passed through as named
    r = await post(p, 'phi', 'to-phi');
    assert.equal(r.status, 200, r.text);
    assert.equal(c.lastChat().body.model, 'phi');
    // a pattern of the map
    r = await post(p, 'claude-3-5-haiku-20241022', 'to-haiku');
    assert.equal(r.status, 200, r.text);
    assert.equal(servedBy(mocks, 'to-haiku'), 2);
    assert.equal(c.lastChat().body.model, 'llama3.2:latest');
    assert.equal(r.json.model, 'claude-3-5-haiku-20241022'); // the client's name comes back
    // @UPSTREAM: that upstream and its own (first listed) model
    r = await post(p, 'claude-opus-4-1', 'to-opus');
    assert.equal(r.status, 200, r.text);
    assert.equal(servedBy(mocks, 'to-opus'), 2);
    assert.equal(c.lastChat().body.model, 'llama3.2:latest');
    // the default '*': the qwen replicas, never c
    r = await post(p, 'claude-sonnet-4-5', 'to-default', sess('s-default'));
    assert.equal(r.status, 200, r.text);
    const who = servedBy(mocks, 'to-default');
    assert.ok(who === 0 || who === 1, `served by ${who}`);
    assert.equal(mocks[who].lastChat().body.model, 'qwen');

    const { status, json } = await health(p);
    assert.equal(status, 200);
    assert.deepEqual(json.upstreams.map((u) => u.name), ['a', 'b', 'c']);
    assert.deepEqual(json.upstreams.map((u) => u.state), ['ok', 'ok', 'ok']);
    assert.deepEqual(json.upstreams[2].models, ['llama3.2:latest', 'phi']);
    assert.equal(json.upstreams[2].kind, 'ollama');
    assert.equal(json.upstreams[1].max, 4);
    assert.equal(json.upstreams[2].requests, 4);
    assert.equal(json.routing.balance, 'affinity');
    for (const u of json.upstreams) assert.equal(typeof u.load, 'number');
    // /v1/models lists the models of every upstream once
    const models = (await request(p, { path: '/v1/models' })).json.data.map((m) => m.id);
    for (const id of ['qwen', 'llama3.2:latest', 'phi']) assert.ok(models.includes(id), models.join());
    assert.equal(models.filter((id) => id === 'qwen').length, 1);
  } finally {
    await stopClean(p);
    await Promise.all([a.close(), b.close(), c.close()]);
  }
});

test('a bad fleet declaration is refused at start with the reason', async () => {
  for (const [args, re] of [
    [['--upstream', 'a=http://127.0.0.1:1/v1', '--upstream', 'a=http://127.0.0.1:2/v1'], /declared twice/],
    [['--upstream', 'a=http://127.0.0.1:1/v1,kind=tgi'], /kind: expected llama-server/],
    [['--upstream', 'a=http://127.0.0.1:1/v1,colour=blue'], /unknown attribute/],
    [['--upstream', 'a=http://127.0.0.1:1/v1', '--model-map', 'x=m@nowhere'], /names no declared upstream "nowhere"/],
    [['--route-balance', 'random'], /route-balance/],
  ]) {
    await assert.rejects(startProxy({ args, timeoutMs: 5000 }), re);
  }
});

test('affinity: each session stays on one replica, sessions spread over both', async () => {
  const a = await startMock({ models: ['qwen'] });
  const b = await startMock({ models: ['qwen'] });
  const p = await fleetProxy(['--upstream', `a=${a.base}`, '--upstream', `b=${b.base}`], 2);
  try {
    const where = new Map();
    for (let turn = 0; turn < 3; turn++) {
      for (let s = 0; s < 16; s++) {
        const marker = `aff-${s}-${turn}`;
        const r = await post(p, 'qwen', marker, sess(`session-${s}`));
        assert.equal(r.status, 200, r.text);
        const who = servedBy([a, b], marker);
        if (turn === 0) where.set(s, who);
        else assert.equal(who, where.get(s), `session ${s} moved on turn ${turn}`);
      }
    }
    const onA = [...where.values()].filter((w) => w === 0).length;
    assert.ok(onA >= 3 && onA <= 13, `16 sessions: ${onA} on a, ${16 - onA} on b`);
    // /v1/context (and the status page) names each session's replica
    const ctx = await request(p, { path: '/v1/context' });
    const items = new Map(JSON.parse(ctx.text).items.map((it) => [it.session, it.upstream]));
    for (const [s, who] of where) assert.equal(items.get(`session-${s}`), ['a', 'b'][who], `session ${s}`);
    // round-robin, for contrast, alternates whatever the session
    const rr = await fleetProxy(['--upstream', `a=${a.base}`, '--upstream', `b=${b.base}`, '--route-balance', 'round-robin'], 2);
    try {
      const seq = [];
      for (let i = 0; i < 4; i++) {
        await post(rr, 'qwen', `rr-${i}`, sess('one-session'));
        seq.push(servedBy([a, b], `rr-${i}`));
      }
      assert.deepEqual(seq.slice(1), seq.slice(1).map((_, i) => (seq[0] + i + 1) % 2));
    } finally {
      await stopClean(rr);
    }
  } finally {
    await stopClean(p);
    await Promise.all([a.close(), b.close()]);
  }
});

test('bounded load: sessions leave a replica far busier than the other, then come back', async () => {
  const a = await startMock({ models: ['qwen'] });
  const b = await startMock({ models: ['qwen'] });
  const slow = (rec) => (rec.lastText.includes('slow-') ? { text: 'slow answer', firstByteDelayMs: 600 } : null);
  a.script(slow);
  b.script(slow);
  // --tokenize-off-ratio 0: no count with the upstream before the policies, so the eight
  // requests reach the routing together
  const p = await fleetProxy(['--upstream', `a=${a.base}`, '--upstream', `b=${b.base}`,
    '--tokenize-off-ratio', '0'], 2);
  try {
    // sessions whose replica is a
    const homeA = [];
    for (let s = 0; homeA.length < 8 && s < 100; s++) {
      await post(p, 'qwen', `home-${s}`, sess(`bl-${s}`));
      if (servedBy([a, b], `home-${s}`) === 0) homeA.push(s);
    }
    assert.equal(homeA.length, 8);
    // eight slow requests at once, all of a's sessions: with c = 1.5 the fifth and later see
    // a's load over 1.5 x mean + 1 and go to b instead
    const rs = await Promise.all(homeA.map((s) => post(p, 'qwen', `slow-${s}`, sess(`bl-${s}`))));
    for (const r of rs) assert.equal(r.status, 200, r.text);
    const onB = homeA.filter((s) => servedBy([a, b], `slow-${s}`) === 1);
    assert.ok(onB.length >= 1 && onB.length <= 4, `moved to b: ${onB.length} of 8`);
    assert.match(p.log(), /route=moved/);
    // idle again: every session is back on a
    for (const s of homeA) {
      await post(p, 'qwen', `back-${s}`, sess(`bl-${s}`));
      assert.equal(servedBy([a, b], `back-${s}`), 0, `session ${s}`);
    }
  } finally {
    await stopClean(p);
    await Promise.all([a.close(), b.close()]);
  }
});

test('a replica killed: its sessions move to the other, no request fails, streams too', async () => {
  const a = await startMock({ models: ['qwen'] });
  const b = await startMock({ models: ['qwen'] });
  const p = await fleetProxy(['--upstream', `a=${a.base}`, '--upstream', `b=${b.base}`], 2);
  try {
    const mocks = [a, b];
    const where = new Map();
    for (let s = 0; s < 12; s++) {
      const r = await post(p, 'qwen', `before-${s}`, sess(`k-${s}`));
      assert.equal(r.status, 200, r.text);
      where.set(s, servedBy(mocks, `before-${s}`));
    }
    const onB = [...where].filter(([, w]) => w === 1).map(([s]) => s);
    const onA = [...where].filter(([, w]) => w === 0).map(([s]) => s);
    assert.ok(onB.length > 0 && onA.length > 0, `a: ${onA}, b: ${onB}`);
    await b.close(); // connection refused from now on
    // the first request after the kill is a stream for one of b's sessions: it fails over
    // before the first byte, so the client sees a normal stream
    const client = sdkClient(p);
    const st = client.messages.stream(body('qwen', 'after-stream'), { headers: sess(`k-${onB[0]}`) });
    const fin = await st.finalMessage();
    assert.equal(fin.content[0].text, 'Hello from the mock.');
    assert.equal(servedBy(mocks, 'after-stream'), 0);
    for (const s of [...onB, ...onA]) {
      const r = await post(p, 'qwen', `after-${s}`, sess(`k-${s}`));
      assert.equal(r.status, 200, `session ${s}: ${r.text}`);
      assert.equal(servedBy(mocks, `after-${s}`), 0);
    }
    const { status, json } = await health(p);
    assert.equal(status, 200); // one replica serves
    assert.equal(json.upstreams[1].state, 'down');
    assert.equal(json.upstreams[1].healthy, false);
    assert.ok(json.routing.retries >= 1, JSON.stringify(json.routing));
    assert.match(p.log(), /failing over to a/);
    // a's sessions never moved: affinity moves only the dead replica's share
    for (const s of onA) assert.equal(where.get(s), 0);
  } finally {
    await stopClean(p);
    await a.close();
  }
});

test('retry budget exhausted: a clear error, then the sick replica is skipped', async () => {
  const a = await startMock({ models: ['qwen'] });
  const b = await startMock({ models: ['qwen'] });
  // b probes fine but fails every chat before its first byte
  b.script(() => ({ status: 503 }));
  const p = await fleetProxy(['--upstream', `a=${a.base}`, '--upstream', `b=${b.base}`,
    '--retry-budget', '0', '--retry-min', '0'], 2);
  try {
    let failed = null;
    for (let s = 0; s < 20 && failed === null; s++) {
      const r = await post(p, 'qwen', `budget-${s}`, sess(`bud-${s}`));
      if (r.status !== 200) failed = { s, r };
    }
    assert.ok(failed, 'no session reached b');
    assert.equal(failed.r.status, 503, failed.r.text);
    assert.equal(failed.r.json.type, 'error');
    assert.match(failed.r.json.error.message, /retry budget exhausted/);
    assert.equal(servedBy([a], `budget-${failed.s}`), -1); // not retried on a
    // b is out for its backoff: the same session is served by a now
    const r = await post(p, 'qwen', 'budget-again', sess(`bud-${failed.s}`));
    assert.equal(r.status, 200, r.text);
    assert.equal(servedBy([a], 'budget-again'), 0);
    const { json } = await health(p);
    assert.ok(json.routing.retries_denied >= 1);
    assert.equal(json.routing.retries, 0);
  } finally {
    await stopClean(p);
  }
  // with a budget, the same failure is invisible to the client
  const q = await fleetProxy(['--upstream', `a=${a.base}`, '--upstream', `b=${b.base}`], 2);
  try {
    for (let s = 0; s < 10; s++) {
      const r = await post(q, 'qwen', `budget2-${s}`, sess(`bud-${s}`));
      assert.equal(r.status, 200, r.text);
    }
    assert.ok(b.chats().some((c) => c.lastText.startsWith('budget2-')), 'b was never tried');
  } finally {
    await stopClean(q);
    await Promise.all([a.close(), b.close()]);
  }
});

test('on_route chooses by anything: names, a list, a model; unknown names are an error', async () => {
  const a = await startMock({ models: ['qwen'] });
  const b = await startMock({ models: ['qwen'] });
  const c = await startMock({ models: ['vision'] });
  fs.writeFileSync(path.join(tmp, 'chain.lua'), 'return { { "router", big = 200 } }\n');
  fs.writeFileSync(path.join(tmp, 'router.lua'), `
local ax = require "anthroxy"
local M = { name = "router" }
function M.on_route(req, ctx, fleet)
  local text = req.messages[#req.messages].content
  if type(text) ~= "string" then return "c" end             -- blocks (images): the vision box
  if text:find("nowhere", 1, true) then return "nowhere" end
  if text:find("list", 1, true) then return { "b", "a" } end
  if #text > ctx.settings.big then return "c", "vision-large" end
  if text:find("healthy", 1, true) then
    for _, u in ipairs(fleet.upstreams) do
      if u.healthy and u.name == "a" then return u.name end
    end
  end
  return nil                                                 -- the fleet decides by model
end
return M
`);
  const p = await fleetProxy(['--upstream', `a=${a.base}`, '--upstream', `b=${b.base}`,
    '--upstream', `c=${c.base}`, '--policies', path.join(tmp, 'chain.lua'), '--model-map', '*=qwen'], 3);
  try {
    const mocks = [a, b, c];
    let r = await post(p, 'claude-sonnet-4-5', 'x'.repeat(300) + 'big-one');
    assert.equal(r.status, 200, r.text);
    assert.equal(servedBy(mocks, 'big-one'), 2);
    assert.equal(c.lastChat().body.model, 'vision-large');
    r = await request(p, { method: 'POST', path: '/v1/messages', body: {
      model: 'claude-sonnet-4-5', max_tokens: 20,
      messages: [{ role: 'user', content: [{ type: 'text', text: 'blocks-here' }] }] } });
    assert.equal(r.status, 200, r.text);
    assert.equal(servedBy(mocks, 'blocks-here'), 2);
    assert.equal(c.lastChat().body.model, 'vision'); // no model chosen: c's own
    r = await post(p, 'claude-sonnet-4-5', 'healthy please');
    assert.equal(r.status, 200, r.text);
    assert.equal(servedBy(mocks, 'healthy please'), 0);
    for (let i = 0; i < 6; i++) {
      r = await post(p, 'claude-sonnet-4-5', `list-${i}`, sess(`list-${i}`));
      assert.equal(r.status, 200, r.text);
      assert.notEqual(servedBy(mocks, `list-${i}`), 2);
    }
    r = await post(p, 'claude-sonnet-4-5', 'by-model');
    assert.equal(r.status, 200, r.text);
    assert.notEqual(servedBy(mocks, 'by-model'), 2);
    assert.equal(mocks[servedBy(mocks, 'by-model')].lastChat().body.model, 'qwen');
    r = await post(p, 'claude-sonnet-4-5', 'to nowhere');
    assert.equal(r.status, 500, r.text);
    assert.equal(r.json.error.type, 'api_error');
    assert.match(r.json.error.message, /on_route chose no declared upstream \(first: 'nowhere'\)/);
    const hooks = (await health(p)).json.policies.policies[0].hooks;
    assert.deepEqual(hooks, ['on_route']);
  } finally {
    await stopClean(p);
    await Promise.all([a.close(), b.close(), c.close()]);
  }
});

test('an upstream key goes to that upstream only, and never shows', async () => {
  const a = await startMock({ models: ['qwen'] });
  const b = await startMock({ models: ['phi'] });
  const KEY = 'sk-fleet-secret-4242';
  await assert.rejects(startProxy({ args: ['--upstream', `a=${a.base},key=${KEY},colour=red`], timeoutMs: 5000 }),
    (e) => /unknown attribute/.test(e.message) && !e.message.includes(KEY));
  const p = await fleetProxy(['--upstream', `a=${a.base},key=${KEY}`, '--upstream', `b=${b.base}`], 2);
  try {
    assert.equal((await post(p, 'qwen', 'keyed')).status, 200);
    assert.equal((await post(p, 'phi', 'unkeyed')).status, 200);
    assert.equal(a.lastChat().headers.authorization, `Bearer ${KEY}`);
    assert.equal(b.lastChat().headers.authorization, undefined);
    const h = await request(p, { path: '/health' });
    assert.ok(!h.text.includes(KEY), 'key in /health');
    assert.equal(h.json.config.upstream.value[0].key, '***');
  } finally {
    await stopClean(p);
    assert.ok(!p.log().includes(KEY), 'key in the log');
    await Promise.all([a.close(), b.close()]);
  }
});

test('the fleet of one: a plain --upstream is named "default" and behaves as before', async () => {
  const m = await startMock({ models: ['tiny'] });
  const p = await fleetProxy(['--upstream', m.base, '--connect-retries', '0'], 1);
  try {
    const r = await post(p, 'claude-sonnet-4-5', 'solo', sess('solo'));
    assert.equal(r.status, 200, r.text);
    assert.equal(m.lastChat().body.model, 'tiny');
    const { json } = await health(p);
    assert.equal(json.upstreams.length, 1);
    assert.equal(json.upstreams[0].name, 'default');
    assert.equal(json.upstream.state, 'ok');
    assert.equal(json.upstream.model, 'tiny');
    assert.match(p.log(), /upstream=default route=only/);
    // down: the one upstream is still tried, and the error is today's
    await m.close();
    const d = await post(p, 'claude-sonnet-4-5', 'solo-down');
    assert.equal(d.status, 529, d.text);
    assert.match(d.json.error.message, /upstream unreachable at http:\/\/127\.0\.0\.1:\d+\/v1 after 0 retries/);
  } finally {
    await stopClean(p);
  }
});
