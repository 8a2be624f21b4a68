// workers.test.mjs - --workers 2: two event loops on one port (SO_REUSEPORT), each its own
// policy state, one session state: connections reach both workers, a session's monitor counts
// every request whichever worker served it, SIGHUP reloads the policies of both, /health says
// which worker answered, and SIGTERM stops both with exit 0.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startProxy, request, until } from './helpers.mjs';
import { startMock } from './mock-llama.mjs';

const post = (p, session, text) => request(p, {
  method: 'POST', path: '/v1/messages', headers: { 'x-claude-code-session-id': session },
  body: { model: 'claude-sonnet-4-5', max_tokens: 20, messages: [{ role: 'user', content: text }] },
});

test('two workers share the port, the sessions and the reloads', async () => {
  const mock = await startMock({ models: ['tiny'] });
  const p = await startProxy({ upstream: mock.base, args: ['--workers', '2'] });
  try {
    const listening = () => (p.log().match(/listening on http:\/\/127\.0\.0\.1:(\d+)/g) || []);
    assert.ok(await until(() => listening().length === 2, 5000, 10), p.tail());
    assert.equal(new Set(listening()).size, 1, 'one port'); // the same line twice
    const seen = new Set();
    const N = 40;
    for (let i = 0; i < N; i++) {
      const r = await post(p, 'one-session', `turn ${i}`); // a fresh connection each time
      assert.equal(r.status, 200, r.text);
      const h = await request(p, { path: '/health' });
      assert.equal(h.json.workers, 2);
      seen.add(h.json.worker);
    }
    assert.deepEqual([...seen].sort(), [0, 1], 'both workers accepted connections');
    // whichever worker answers, the session counts all N requests
    const totals = new Set();
    for (let i = 0; i < 10; i++) {
      const c = await request(p, { path: '/v1/context?session=one-session' });
      assert.equal(c.status, 200, c.text);
      totals.add(c.json.total_requests);
    }
    assert.deepEqual([...totals], [N]);
    const h = await request(p, { path: '/health' });
    assert.ok(h.json.shared_sessions >= 1);
    // SIGHUP reaches both workers' policy engines
    p.proc.kill('SIGHUP');
    const both = await until(() => (p.log().match(/policies: generation 2 loaded/g) || []).length === 2, 5000, 20);
    assert.ok(both, p.tail());
  } finally {
    const { code, signal } = await p.stop();
    assert.equal(signal, null, p.tail());
    assert.equal(code, 0, p.tail());
    await mock.close();
  }
});

test('--workers out of range is refused', async () => {
  await assert.rejects(startProxy({ args: ['--workers', '0'], timeoutMs: 5000 }), /workers/);
  await assert.rejects(startProxy({ args: ['--workers', '65'], timeoutMs: 5000 }), /workers/);
});
