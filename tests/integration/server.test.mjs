// server.test.mjs - the HTTP server itself: routes, error shapes, request ids, keep-alive,
// pipelining, chunked bodies, Expect: 100-continue, inbound keys, graceful shutdown.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import {
  useProxy, startProxy, request, rawExchange, parseResponses, assertAnthropicError, sdkClient, until,
} from './helpers.mjs';

const env = useProxy({ name: 'server' });
const keyed = useProxy({ name: 'server-keys', args: ['--api-key', 'sekrit-1', '--api-key', 'sekrit-2'] });

const MODEL = 'claude-sonnet-4-5';
const msgBody = (text) => JSON.stringify({ model: MODEL, max_tokens: 20, messages: [{ role: 'user', content: text }] });
const rawPost = (text, extra = '') => {
  const b = msgBody(text);
  return `POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n${extra}Content-Length: ${Buffer.byteLength(b)}\r\n\r\n${b}`;
};

test('GET /v1/models: Anthropic list shape with the upstream models and Claude names', env.wrap(async () => {
  const r = await request(env.proxy, { path: '/v1/models' });
  assert.equal(r.status, 200, r.text);
  const b = r.json;
  assert.ok(Array.isArray(b.data) && b.data.length >= 1);
  assert.equal(b.has_more, false);
  assert.equal(b.first_id, b.data[0].id);
  assert.equal(b.last_id, b.data[b.data.length - 1].id);
  for (const m of b.data) {
    assert.equal(m.type, 'model');
    assert.equal(typeof m.id, 'string');
    assert.equal(typeof m.display_name, 'string');
    assert.equal(typeof m.created_at, 'string');
  }
  const ids = b.data.map((m) => m.id);
  assert.ok(ids.includes('tiny'), `upstream model listed: ${ids}`);
  assert.ok(ids.some((id) => id.startsWith('claude-')), `a Claude name listed: ${ids}`);
  const page = await env.client.models.list();
  assert.ok(page.data.length >= 1, 'the SDK reads it');
}));

test('GET /health with the upstream up: 200, status ok, the upstream\'s model and window', env.wrap(async () => {
  const r = await request(env.proxy, { path: '/health' });
  assert.equal(r.status, 200, r.text);
  assert.match(r.headers['content-type'], /^application\/json/);
  const h = JSON.parse(r.text);
  assert.equal(h.status, 'ok');
  assert.equal(h.proxy, 'ok');
  assert.equal(typeof h.version, 'string');
  const { url, ...up } = h.upstream;
  assert.equal(url, env.mock.base);
  assert.deepEqual(up, { state: 'ok', model: 'tiny', llama_server: true, n_ctx: 32768, running: 0, queued: 0 });
  // The mock's per-slot n_ctx, read from llama-server's /props.
  assert.deepEqual(h.context_window, { value: 32768, source: 'props' });
  assert.deepEqual(h.warnings, []);
  for (const k of ['requests', 'errors', 'connections', 'sessions', 'uptime_s']) assert.equal(typeof h[k], 'number', k);
  assert.equal(typeof h.config, 'object');
}));

test('GET /v1/context, for all sessions and for one', env.wrap(async () => {
  env.on('context probe', { text: 'ok' });
  const m = await request(env.proxy, {
    method: 'POST', path: '/v1/messages', body: msgBody('context probe'), headers: { 'x-session-id': 'probe-session' },
  });
  assert.equal(m.status, 200, m.text);
  const real = env.mock.lastChat().usage.prompt_tokens;
  const all = await request(env.proxy, { path: '/v1/context' });
  assert.equal(all.status, 200, all.text);
  const a = JSON.parse(all.text);
  assert.equal(a.context_window, 32768);
  assert.equal(a.sessions, a.items.length, all.text.slice(0, 400));
  assert.ok(a.items.some((it) => it.session === 'probe-session'), `listed: ${all.text.slice(0, 400)}`);
  const one = await request(env.proxy, { path: '/v1/context?session=probe-session' });
  assert.equal(one.status, 200, one.text);
  const o = JSON.parse(one.text);
  assert.equal(o.session, 'probe-session');
  assert.equal(o.context_window, 32768);
  assert.equal(o.total_requests, 1);
  assert.equal(o.last_input_tokens, real, 'the upstream\'s prompt_tokens');
  assert.equal(o.peak_input_tokens, real);
  assert.ok(Math.abs(o.utilization - real / 32768) < 1e-3, `utilization ${o.utilization} for ${real}/32768`);
  assert.equal(typeof o.calibration.factor, 'number');
}));

test('HEAD / answers 200 (Claude Code\'s connectivity probe)', env.wrap(async () => {
  const r = await request(env.proxy, { method: 'HEAD', path: '/' });
  assert.equal(r.status, 200);
}));

test('unknown path -> 404, wrong method -> 405, both in Anthropic shape', env.wrap(async () => {
  assertAnthropicError(await request(env.proxy, { path: '/v1/nothing-here' }), 404, 'not_found_error');
  assertAnthropicError(await request(env.proxy, { method: 'POST', path: '/nope', body: '{}' }), 404, 'not_found_error');
  assertAnthropicError(await request(env.proxy, { path: '/v1/messages' }), 405, 'invalid_request_error');
  assertAnthropicError(await request(env.proxy, { method: 'DELETE', path: '/v1/models' }), 405, 'invalid_request_error');
}));

test('messages routes: query string and /anthropic prefix', env.wrap(async () => {
  env.on('route variant', { text: 'routed' });
  for (const p of ['/v1/messages?beta=true', '/anthropic/v1/messages', '/anthropic/v1/messages?beta=true']) {
    const r = await request(env.proxy, { method: 'POST', path: p, body: msgBody('route variant') });
    assert.equal(r.status, 200, `${p}: ${r.text}`);
    assert.equal(r.json.content[0].text, 'routed');
  }
}));

test('every response carries a request-id header, unique per request', env.wrap(async () => {
  env.on('id me', { text: 'ok' });
  const a = await request(env.proxy, { method: 'POST', path: '/v1/messages', body: msgBody('id me') });
  const b = await request(env.proxy, { method: 'POST', path: '/v1/messages', body: msgBody('id me') });
  const e = await request(env.proxy, { path: '/v1/nothing' });
  for (const r of [a, b, e]) assert.ok(r.headers['request-id'], JSON.stringify(r.headers));
  assert.notEqual(a.headers['request-id'], b.headers['request-id']);
}));

test('keep-alive: several requests on one connection', env.wrap(async () => {
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  env.on('keep me alive', { text: 'alive' });
  const ports = [];
  try {
    for (let i = 0; i < 3; i++) {
      const r = await new Promise((resolve, reject) => {
        const req = http.request({ host: '127.0.0.1', port: env.proxy.port, method: 'POST', path: '/v1/messages', agent,
          headers: { 'content-type': 'application/json' } }, (res) => {
          ports.push(res.socket.localPort);
          let t = '';
          res.on('data', (d) => { t += d; });
          res.on('end', () => resolve({ status: res.statusCode, text: t }));
        });
        req.on('error', reject);
        req.end(msgBody('keep me alive'));
      });
      assert.equal(r.status, 200, r.text);
    }
  } finally {
    agent.destroy();
  }
  assert.equal(new Set(ports).size, 1, `one connection: ${ports}`);
}));

test('pipelined requests are answered in order', env.wrap(async () => {
  env.on('pipeline slow', { text: 'slow answer', firstByteDelayMs: 300 });
  env.on('pipeline fast', { text: 'fast answer' });
  const raw = rawPost('pipeline slow') + 'GET /health HTTP/1.1\r\nHost: x\r\n\r\n' + rawPost('pipeline fast') +
    'GET /v1/nothing HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n';
  const got = await rawExchange(env.proxy, [raw], { timeoutMs: 5000 });
  const res = parseResponses(got);
  assert.deepEqual(res.map((r) => r.status), [200, 200, 200, 404], got.slice(0, 2000));
  assert.equal(JSON.parse(res[0].body).content[0].text, 'slow answer');
  assert.equal(JSON.parse(res[2].body).content[0].text, 'fast answer');
}));

test('chunked request body', env.wrap(async () => {
  env.on('chunked body', { text: 'chunks joined' });
  const b = msgBody('chunked body');
  const parts = [b.slice(0, 10), b.slice(10, 40), b.slice(40)];
  const head = 'POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n';
  const chunks = [head, ...parts.map((p) => `${Buffer.byteLength(p).toString(16)}\r\n${p}\r\n`), '0\r\n\r\n'];
  const got = await rawExchange(env.proxy, chunks, { gapMs: 30 });
  const res = parseResponses(got);
  assert.equal(res[0].status, 200, got);
  assert.equal(JSON.parse(res[0].body).content[0].text, 'chunks joined');
}));

test('Expect: 100-continue is answered before the body is sent', env.wrap(async () => {
  env.on('expecting', { text: 'continued' });
  const b = msgBody('expecting');
  const head = `POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nExpect: 100-continue\r\nConnection: close\r\nContent-Length: ${Buffer.byteLength(b)}\r\n\r\n`;
  const interim = await rawExchange(env.proxy, [head], { until: (t) => t.includes('\r\n\r\n'), timeoutMs: 2000 });
  assert.match(interim, /^HTTP\/1\.1 100 Continue\r\n/, `interim answer: ${JSON.stringify(interim)}`);
  // And the whole exchange on one connection.
  const got = await new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port: env.proxy.port, method: 'POST', path: '/v1/messages', agent: false,
      headers: { 'content-type': 'application/json', expect: '100-continue', 'content-length': Buffer.byteLength(b) } });
    let continued = false;
    req.on('continue', () => { continued = true; req.end(b); });
    req.on('response', (res) => {
      let t = '';
      res.on('data', (d) => { t += d; });
      res.on('end', () => resolve({ continued, status: res.statusCode, text: t }));
    });
    req.on('error', reject);
  });
  assert.ok(got.continued);
  assert.equal(got.status, 200, got.text);
  assert.equal(JSON.parse(got.text).content[0].text, 'continued');
}));

test('a malformed request line -> 400 and the connection closes', env.wrap(async () => {
  const got = await rawExchange(env.proxy, ['GARBAGE\x01 / HTTP/9\r\n\r\n'], { timeoutMs: 3000 });
  const res = parseResponses(got);
  assert.equal(res[0]?.status, 400, got);
  assert.equal((res[0].headers.connection || '').toLowerCase(), 'close');
}));

test('inbound API key: 401 without or with a wrong key, 200 with x-api-key or Bearer', keyed.wrap(async () => {
  keyed.on('keyed request', { text: 'authorised' });
  const body = msgBody('keyed request');
  const post = (headers) => request(keyed.proxy, { method: 'POST', path: '/v1/messages', body, headers });
  assertAnthropicError(await post({}), 401, 'authentication_error');
  assertAnthropicError(await post({ 'x-api-key': 'wrong' }), 401, 'authentication_error');
  assertAnthropicError(await post({ authorization: 'Bearer sekrit-3' }), 401, 'authentication_error');
  assertAnthropicError(await post({ 'x-api-key': 'sekrit-10' }), 401, 'authentication_error');
  for (const h of [{ 'x-api-key': 'sekrit-1' }, { 'x-api-key': 'sekrit-2' }, { authorization: 'Bearer sekrit-1' }]) {
    const r = await post(h);
    assert.equal(r.status, 200, `${JSON.stringify(h)}: ${r.text}`);
  }
  const sdk = sdkClient(keyed.proxy, { apiKey: 'sekrit-2' });
  const m = await sdk.messages.create({ model: MODEL, max_tokens: 10, messages: [{ role: 'user', content: 'keyed request' }] });
  assert.equal(m.content[0].text, 'authorised');
  assert.ok(!keyed.proxy.log().includes('sekrit-1'), 'keys never reach the log');
}));

test('SIGTERM lets an in-flight request finish, then exits 0', env.wrap(async () => {
  const p = await startProxy({ upstream: env.mock.base });
  try {
    env.on('finish me first', { text: 'finished', firstByteDelayMs: 500 });
    const pending = request(p, { method: 'POST', path: '/v1/messages', body: msgBody('finish me first') });
    await env.mock.waitFor((r) => r.lastText === 'finish me first' && r.time >= Date.now() - 5000);
    p.proc.kill('SIGTERM');
    const r = await pending;
    assert.equal(r.status, 200, r.text);
    assert.equal(r.json.content[0].text, 'finished');
    const { code, signal } = await p.exited;
    assert.equal(signal, null);
    assert.equal(code, 0, p.tail());
  } finally {
    await p.stop();
  }
}));

test('an upstream that is loading is probed again until it is ready', env.wrap(async () => {
  const { startMock } = await import('./mock-llama.mjs');
  const mock = await startMock({ loading: true, nCtx: 4096, models: ['loaded-model'] });
  const p = await startProxy({ upstream: mock.url }); // no trailing /v1: it is optional
  try {
    let h = await request(p, { path: '/health' });
    assert.notEqual(h.json?.upstream?.state, 'ok', `while loading: ${h.text.slice(0, 300)}`);
    env.on('while loading', { text: 'x' });
    mock.script(() => ({ text: 'ready now' }));
    const early = await request(p, { method: 'POST', path: '/v1/messages', body: msgBody('while loading') });
    assert.ok(early.status >= 500, `answered ${early.status} while the upstream loads`);
    assert.equal(early.json?.type, 'error');
    mock.setLoading(false);
    const ok = await until(async () => {
      h = await request(p, { path: '/health' });
      return h.json?.upstream?.state === 'ok' && h.json?.upstream?.model === 'loaded-model';
    }, 15000, 100);
    assert.ok(ok, `re-probed after loading: ${h.text.slice(0, 400)}`);
    assert.equal(h.json.context_window?.value ?? h.json.context_window, 4096, 'window from /props once loaded');
    const r = await request(p, { method: 'POST', path: '/v1/messages', body: msgBody('after loading') });
    assert.equal(r.status, 200, r.text);
    assert.equal(r.json.content[0].text, 'ready now');
    assert.equal(mock.lastChat().path, '/v1/chat/completions', 'the /v1 is added to a base without it');
    assert.equal(mock.lastChat().body.model, 'loaded-model');
  } finally {
    const { code } = await p.stop();
    await mock.close();
    assert.equal(code, 0, p.tail());
  }
}));

test('garbage on the wire never takes the server down', env.wrap(async () => {
  let seed = 12345;
  const rnd = () => { seed = (seed * 1103515245 + 12345) & 0x7fffffff; return seed; };
  const blobs = [];
  for (let i = 0; i < 40; i++) {
    const n = 1 + (rnd() % 600);
    blobs.push(Buffer.from(Array.from({ length: n }, () => rnd() % 256)));
  }
  // Plausible starts that go wrong later, too.
  blobs.push(Buffer.from('POST /v1/messages HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n'));
  blobs.push(Buffer.from('POST /v1/messages HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nFFFFFFFFFFFFFFFFFFFF\r\n'));
  blobs.push(Buffer.from('GET / HTTP/1.1\r\nHost: x\r\nX: \x00\x01\r\n\r\n'));
  blobs.push(Buffer.from('POST /v1/messages HTTP/1.1\r\nContent-Length: -1\r\n\r\n'));
  await Promise.all(blobs.map((b) => rawExchange(env.proxy, [b], { timeoutMs: 1500 }).catch(() => '')));
  env.on('after garbage', { text: 'unharmed' });
  const r = await request(env.proxy, { method: 'POST', path: '/v1/messages', body: msgBody('after garbage') });
  assert.equal(r.status, 200, r.text);
  assert.equal(r.json.content[0].text, 'unharmed');
}));

test('oversized header block and oversized Content-Length are refused at once', env.wrap(async () => {
  const big = `GET /health HTTP/1.1\r\nHost: x\r\nX-Big: ${'a'.repeat(200 * 1024)}\r\n\r\n`;
  const got = await rawExchange(env.proxy, [big], { timeoutMs: 3000 });
  const res = parseResponses(got);
  assert.ok(res[0] && res[0].status >= 400 && res[0].status < 500, `header block over the limit: ${got.slice(0, 200)}`);
  const t0 = Date.now();
  const head = 'POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 999999999\r\n\r\n{';
  const got2 = await rawExchange(env.proxy, [head], { timeoutMs: 3000, until: (t) => t.includes('\r\n\r\n') && /"type"/.test(t) });
  const res2 = parseResponses(got2);
  assert.equal(res2[0]?.status, 413, got2.slice(0, 300));
  assert.equal(JSON.parse(res2[0].body).error.type, 'request_too_large');
  assert.ok(Date.now() - t0 < 2000, 'without waiting for the body');
}));

test('a pipelined request after a stream waits for the stream to end', env.wrap(async () => {
  env.on('pipelined stream', { text: 'streamed first', chunkDelayMs: 30 });
  const b = JSON.stringify({ model: MODEL, max_tokens: 50, stream: true, messages: [{ role: 'user', content: 'pipelined stream' }] });
  const raw = `POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(b)}\r\n\r\n${b}` +
    'GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n';
  const got = await rawExchange(env.proxy, [raw], { timeoutMs: 5000 });
  const res = parseResponses(got);
  assert.deepEqual(res.map((r) => r.status), [200, 200], got.slice(0, 1500));
  assert.match(res[0].headers['content-type'], /^text\/event-stream/);
  assert.ok(res[0].body.includes('event: message_stop'), 'the whole stream first');
  assert.match(res[1].body, /"status"/);
}));

test('HTTP/1.0 without keep-alive: answered, then closed', env.wrap(async () => {
  env.on('old client', { text: 'hello 1.0' });
  const b = msgBody('old client');
  const got = await rawExchange(env.proxy, [`POST /v1/messages HTTP/1.0\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(b)}\r\n\r\n${b}`], { timeoutMs: 3000 });
  assert.match(got, /^HTTP\/1\.[01] 200/, got.slice(0, 200));
  assert.ok(got.includes('hello 1.0'));
}));
