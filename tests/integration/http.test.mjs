// http.test.mjs - the HTTP layer against clients that misbehave at the socket level.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { useProxy, request } from './helpers.mjs';

const env = useProxy({ name: 'http', args: ['--keepalive-timeout', '1'] });

/** Sends `chunks` with pauses, collects everything the proxy answers until it closes. */
function slowClient(port, chunks, gapMs) {
  return new Promise((resolve) => {
    const sock = net.connect(port, '127.0.0.1');
    let got = '';
    const t0 = Date.now();
    sock.on('data', (d) => { got += d; });
    sock.on('close', () => resolve({ got, ms: Date.now() - t0 }));
    sock.on('error', () => {});
    sock.on('connect', async () => {
      for (const c of chunks) {
        if (sock.destroyed) return;
        sock.write(c);
        await new Promise((r) => setTimeout(r, gapMs));
      }
    });
  });
}

test('a request that trickles in past the deadline gets 408 and the connection closes', env.wrap(async () => {
  // One header line every 300 ms: each read would have re-armed an idle timer for ever.
  const lines = ['POST /v1/messages HTTP/1.1\r\n', 'Host: x\r\n', 'Content-Type: application/json\r\n',
    'X-A: 1\r\n', 'X-B: 2\r\n', 'X-C: 3\r\n', 'X-D: 4\r\n', 'X-E: 5\r\n', 'X-F: 6\r\n', 'X-G: 7\r\n'];
  const { got, ms } = await slowClient(env.proxy.port, lines, 300);
  assert.match(got, /^HTTP\/1\.1 408 /, got);
  assert.match(got, /"type":"error"/);
  assert.ok(ms < 2500, `closed after ${ms} ms, the deadline is 1 s from the first byte`);
  // and the proxy still serves
  env.on('after the trickle', { text: 'ok' });
  const r = await request(env.proxy, { method: 'POST', path: '/v1/messages', body: { model: 'claude-sonnet-4-5', max_tokens: 10, messages: [{ role: 'user', content: 'after the trickle' }] } });
  assert.equal(r.status, 200, r.text);
}));

test('an idle keep-alive connection is closed after the keep-alive timeout', env.wrap(async () => {
  const { got, ms } = await slowClient(env.proxy.port, [], 0);
  assert.equal(got, '');
  assert.ok(ms >= 900 && ms < 2500, `closed after ${ms} ms`);
}));

test('/v1/context?session= is %-decoded; an undecodable key is a 400', env.wrap(async () => {
  env.on('ctx probe', { text: 'ok' });
  const r = await request(env.proxy, { method: 'POST', path: '/v1/messages', headers: { 'x-session-id': 'a b/c' },
    body: { model: 'claude-sonnet-4-5', max_tokens: 10, messages: [{ role: 'user', content: 'ctx probe' }] } });
  assert.equal(r.status, 200, r.text);
  const one = await request(env.proxy, { path: '/v1/context?session=a%20b%2Fc' });
  assert.equal(one.status, 200, one.text);
  assert.equal(one.json.session, 'a b/c');
  const bad = await request(env.proxy, { path: '/v1/context?session=a%00b' });
  assert.equal(bad.status, 400, bad.text);
  assert.equal(bad.json.type, 'error');
  const none = await request(env.proxy, { path: '/v1/context?session=nobody' });
  assert.equal(none.status, 404, none.text);
}));
