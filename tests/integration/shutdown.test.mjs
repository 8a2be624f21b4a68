// shutdown.test.mjs - SIGTERM while a finished request's on_response hook is still parked
// in ax.sleep: the proxy exits 0 (no crash, no leak under the sanitizers) within the grace
// period plus the policy's remaining work being cancelled.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { startMock } from './mock-llama.mjs';
import { startProxy, waitUpstreamProbed, request, until } from './helpers.mjs';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'anthroxy-shutdown-'));
after(() => fs.rmSync(dir, { recursive: true, force: true }));
fs.writeFileSync(path.join(dir, 'slow_response.lua'), `
local ax = require "anthroxy"
return {
  name = "slow_response",
  on_response = function(resp, ctx)
    ax.log.info("on_response parked")
    ax.sleep(60000)
  end,
}
`);
fs.writeFileSync(path.join(dir, 'chain.lua'), 'return { { "slow_response" } }\n');

test('SIGTERM while on_response sleeps: clean exit 0', async () => {
  const mock = await startMock({});
  mock.script(() => ({ text: 'done' }));
  const p = await startProxy({ upstream: mock.base, args: ['--policies', path.join(dir, 'chain.lua'), '--shutdown-grace', '1'] });
  try {
    await waitUpstreamProbed(p);
    const r = await request(p, { method: 'POST', path: '/v1/messages', body: { model: 'claude-sonnet-4-5', max_tokens: 10, messages: [{ role: 'user', content: 'hi' }] } });
    assert.equal(r.status, 200, r.text);
    assert.ok(await until(() => p.log().includes('on_response parked'), 3000), p.tail());
    const t0 = Date.now();
    const { code, signal } = await p.stop();
    assert.equal(signal, null, p.tail());
    assert.equal(code, 0, p.tail());
    assert.ok(Date.now() - t0 < 5000, `stopped after ${Date.now() - t0} ms`);
  } finally {
    await p.stop();
    await mock.close();
  }
});
