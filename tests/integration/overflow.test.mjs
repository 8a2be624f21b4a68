// overflow.test.mjs - a per-slot window smaller than Claude Code's fixed prefix (its tools and
// system prompt): the client gets Anthropic's "prompt is too long" 400, and the message says
// that the tools and system prompt alone do not fit, whether the default policies catch it
// before sending or the upstream reports it (policies off).
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { useProxy, request, assertAnthropicError, FIXTURES_DIR } from './helpers.mjs';

const nopDir = fs.mkdtempSync(path.join(os.tmpdir(), 'anthroxy-nop-'));
const nop = path.join(nopDir, 'none.lua');
fs.writeFileSync(nop, 'return {}\n');
after(() => fs.rmSync(nopDir, { recursive: true, force: true }));

const withPolicies = useProxy({ name: 'overflow-default', mock: { nCtx: 8192 } });
const without = useProxy({ name: 'overflow-nopolicies', mock: { nCtx: 8192 }, args: ['--policies', nop] });

const firstTurn = JSON.parse(fs.readFileSync(path.join(FIXTURES_DIR, 'claude-code', 'first-turn.json'), 'utf8'));

for (const [name, env] of [['default policies', withPolicies], ['no policies', without]]) {
  test(`${name}: the tools and system prompt alone over the window -> 400 that says so`, env.wrap(async () => {
    for (const stream of [false, true]) {
      const r = await request(env.proxy, { method: 'POST', path: '/v1/messages?beta=true', body: { ...firstTurn, stream } });
      assertAnthropicError(r, 400, 'invalid_request_error', /^prompt is too long: \d+ tokens > 8192 maximum/);
      assert.match(r.json.error.message, /tools and system prompt alone/);
    }
    // and the proxy still serves a request that fits
    env.on('small one', { text: 'fits' });
    const ok = await request(env.proxy, { method: 'POST', path: '/v1/messages', body: { model: 'claude-sonnet-4-5', max_tokens: 20, messages: [{ role: 'user', content: 'small one' }] } });
    assert.equal(ok.status, 200, ok.text);
  }));
}
