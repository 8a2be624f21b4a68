// sandbox.test.mjs - policy code that used to stop the loop (issue 13: backtracking patterns,
// string.rep of nothing, loops over pcall in a sort comparator or a coroutine of the policy's
// own, finalizers, memory-cap loops inside pcall, long sleeps) is cut off within its bound,
// and the server keeps serving every other request meanwhile and afterwards.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { useProxy, request } from './helpers.mjs';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'anthroxy-sandbox-'));
after(() => fs.rmSync(dir, { recursive: true, force: true }));
fs.writeFileSync(path.join(dir, 'chain.lua'), 'return { { "bad" } }\n');
fs.writeFileSync(path.join(dir, 'bad.lua'), `
local ax = require "anthroxy"
local M = { name = "bad" }
local bad = {
  BACKTRACK = function() return ("a"):rep(30):find(("a*"):rep(12) .. "b") end,
  LAZY = function() return string.find(("a"):rep(3000), ".-.-.-.-.-b") end,
  REP = function() local s = string.rep("", 1e15); while true do s = s .. "" end end,
  SORT = function()
    table.sort({ 3, 1, 2 }, function() while true do pcall(function() while true do end end) end end)
  end,
  COROUTINE = function()
    coroutine.wrap(function() while true do pcall(function() while true do end end) end end)()
  end,
  FINALIZER = function() setmetatable({}, { __gc = function() while true do end end }) end,
  HOG = function()
    for _ = 1, 100 do
      pcall(function() local t = {}; for i = 1, 1e8 do t[i] = ("z"):rep(1000) .. i end end)
    end
  end,
  SLEEP = function() ax.sleep(1e9) end,
}
function M.on_request(req)
  local c = req.messages[#req.messages].content
  local f = type(c) == "string" and bad[c:match("^(%u+)")]
  req.system = "written before the fault"
  if f then f() end
  req.system = nil
end
return M
`);
const env = useProxy({ name: 'sandbox', args: ['--policies', path.join(dir, 'chain.lua')] });
const post = (text) => request(env.proxy, {
  method: 'POST', path: '/v1/messages',
  body: { model: 'claude-sonnet-4-5', max_tokens: 20, messages: [{ role: 'user', content: text }] },
});
const FAULTS = ['BACKTRACK', 'LAZY', 'REP', 'SORT', 'COROUTINE', 'FINALIZER', 'HOG', 'SLEEP'];

test('each bad policy is cut off within its bound; the request goes on unchanged', env.wrap(async () => {
  env.on('fault', { text: 'survived' });
  for (const f of FAULTS) {
    const t0 = Date.now();
    const r = await post(`${f} fault`);
    const ms = Date.now() - t0;
    assert.equal(r.status, 200, `${f}: ${r.text}`);
    assert.equal(r.json.content[0].text, 'survived');
    assert.ok(ms < 2000, `${f}: held the request ${ms} ms`);
    const up = await env.mock.waitFor((q) => q.lastText === `${f} fault`);
    assert.ok(!up.body.messages.some((m) => m.role === 'system'), `${f}: nothing half-applied`);
  }
  const h = await request(env.proxy, { path: '/health' });
  assert.ok((h.json.policies?.budget_kills ?? 0) >= 5, JSON.stringify(h.json.policies));
}));

test('other requests are served while bad policies are being cut off', env.wrap(async () => {
  env.on('fault', { text: 'survived' });
  env.on('good', { text: 'fine' });
  const t0 = Date.now();
  const all = [];
  for (let round = 0; round < 3; round++) {
    for (const f of FAULTS) all.push(post(`${f} fault ${round}`));
    for (let i = 0; i < 20; i++) all.push(post(`good ${round} ${i}`));
  }
  const rs = await Promise.all(all);
  for (const r of rs) assert.equal(r.status, 200, r.text);
  const good = rs.filter((r) => r.json.content[0].text === 'fine');
  assert.equal(good.length, 60);
  // 24 faults, each holding the loop at most ~its budget (tens of ms; 1 s for none of these)
  assert.ok(Date.now() - t0 < 15000, `all answered in ${Date.now() - t0} ms`);
  const h = await request(env.proxy, { path: '/health' });
  assert.equal(h.status, 200);
}));
