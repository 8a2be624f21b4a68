// hygiene.test.mjs - what the proxy gives away and what it lets through (issue 13): /health
// behind the inbound key, credentials masked in URLs, no forged log lines, Claude Code's
// user_id kept back, one precedence for the seed's prune threshold, --host names, and bytes
// that cannot be text (ill-formed UTF-8, NULs, lone surrogates) carried as U+FFFD from the
// client and from the upstream, with upstream keys redacted wherever an upstream body goes.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import http from 'node:http';
import { startMock } from './mock-llama.mjs';
import { startProxy, request, until, anthroxyBin, waitUpstreamProbed } from './helpers.mjs';

const MODEL = 'claude-sonnet-4-5';
const KEY = 'inbound-key-0123';
const UPKEY = 'upkey-SECRET-4567';
const URLPW = 'urlpw-SECRET-89';
const FFFD = '\uFFFD';
const body = (text, extra = {}) => ({ model: MODEL, max_tokens: 50, messages: [{ role: 'user', content: text }], ...extra });

/** One request; the answer's raw bytes too (request() decodes them, hiding ill-formed UTF-8). */
function rawRequest(proxy, { method = 'POST', path = '/v1/messages', headers = {}, data }) {
  return new Promise((resolve, reject) => {
    const buf = Buffer.isBuffer(data) ? data : Buffer.from(typeof data === 'string' ? data : JSON.stringify(data));
    const req = http.request({
      host: '127.0.0.1', port: proxy.port, method, path,
      headers: { 'content-type': 'application/json', 'content-length': buf.length, ...headers },
    }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, raw: Buffer.concat(chunks) }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(buf);
  });
}

/** The bytes as text, failing on ill-formed UTF-8. */
function strictUtf8(raw) {
  return new TextDecoder('utf-8', { fatal: true }).decode(raw);
}

/** SSE text -> [{event, data}] with data parsed. */
function sseEvents(text) {
  return text.split('\n\n').filter((b) => b.trim()).map((b) => {
    const ev = /^event: (.*)$/m.exec(b)?.[1];
    const data = /^data: (.*)$/m.exec(b)?.[1];
    return { event: ev, data: data !== undefined ? JSON.parse(data) : undefined };
  });
}

let mock, keyed, open;
const replies = new Map();

before(async () => {
  mock = await startMock({ nCtx: 32768 });
  mock.script((req) => {
    for (const [needle, reply] of replies) if (req.lastText.includes(needle)) return typeof reply === 'function' ? reply(req) : reply;
    return null;
  });
  const credUrl = mock.base.replace('http://', `http://user:${URLPW}@`);
  // keyed: inbound keys, an upstream key, credentials in the upstream URL
  keyed = await startProxy({ upstream: credUrl, args: ['--api-key', KEY, '--upstream-api-key', UPKEY] });
  // open: no key, user_id forwarding on
  open = await startProxy({ upstream: mock.base, args: ['--forward-user-id'] });
  await waitUpstreamProbed(open);
  await until(async () => (await request(keyed, { path: '/health', headers: { 'x-api-key': KEY } })).json?.upstream?.state === 'ok', 3000, 20);
});

after(async () => {
  for (const p of [keyed, open]) if (p) assert.equal((await p.stop()).code, 0, p.tail());
  await mock.close();
});

// ---- /health and credentials ----------------------------------------------------------

test('/health with inbound keys: liveness only without a valid key, details with one', async () => {
  for (const headers of [{}, { 'x-api-key': 'wrong' }, { authorization: 'Bearer wrong' }]) {
    const r = await request(keyed, { path: '/health', headers });
    assert.equal(r.status, 200, r.text);
    assert.deepEqual(r.json, { status: 'ok', proxy: 'ok' }, `${JSON.stringify(headers)}: ${r.text}`);
  }
  for (const headers of [{ 'x-api-key': KEY }, { authorization: `Bearer ${KEY}` }]) {
    const r = await request(keyed, { path: '/health', headers });
    assert.equal(r.status, 200, r.text);
    assert.equal(r.json.status, 'ok');
    assert.equal(r.json.upstream.state, 'ok');
    assert.equal(typeof r.json.config, 'object');
    assert.equal(typeof r.json.heap_in_use_bytes, 'number');
  }
});

test('credentials in the upstream URL are masked in /health and in the log', async () => {
  const r = await request(keyed, { path: '/health', headers: { 'x-api-key': KEY } });
  const masked = mock.base.replace('http://', 'http://***@');
  assert.equal(r.json.upstream.url, masked);
  assert.equal(r.json.config.upstream.value, masked);
  assert.equal(r.json.config['upstream-api-key'].value, '***');
  assert.ok(!r.text.includes(URLPW) && !r.text.includes(UPKEY), r.text);
  assert.ok(keyed.log().includes(`(upstream ${masked})`), keyed.tail());
  assert.ok(!keyed.log().includes(URLPW), 'the URL password is not in the log');
  assert.ok(!keyed.log().includes(UPKEY), 'the upstream key is not in the log');
});

test('/health is 503 while the upstream is down, with or without a key', async () => {
  const gone = await startMock({});
  const base = gone.base;
  await gone.close(); // nothing listens there any more
  const p = await startProxy({ upstream: base, args: ['--api-key', KEY, '--upstream-model', 'tiny'] });
  try {
    const down = await until(async () => {
      const r = await request(p, { path: '/health', headers: { 'x-api-key': KEY } });
      return r.json?.upstream?.state === 'down' && r;
    }, 5000, 50);
    assert.ok(down, 'the probe found the upstream down');
    assert.equal(down.status, 503, down.text);
    assert.equal(down.json.status, 'degraded');
    const live = await request(p, { path: '/health' });
    assert.equal(live.status, 503);
    assert.deepEqual(live.json, { status: 'degraded', proxy: 'ok' });
  } finally {
    assert.equal((await p.stop()).code, 0, p.tail());
  }
});

// ---- logs -------------------------------------------------------------------------------

test('a model name or session key holding a newline cannot forge a log line', async () => {
  replies.set('forge me', { text: 'ok' });
  const forged = '2026-01-01T00:00:00.000Z ERROR [req_forged] FORGED-LINE';
  // HTTP headers cannot hold a newline; metadata.user_id (a session key) and the model can
  const r = await request(open, {
    method: 'POST', path: '/v1/messages',
    body: body('forge me', { model: `m1\n${forged}-model\r\u001b[2J`, metadata: { user_id: `s1\n${forged}-session` } }),
  });
  assert.equal(r.status, 200, r.text);
  const log = await until(() => open.log().includes('FORGED-LINE-model') && open.log(), 2000);
  assert.ok(log, open.tail());
  const lines = log.split('\n').filter((l) => l.includes('FORGED-LINE'));
  assert.ok(lines.length >= 1);
  for (const l of lines) {
    assert.match(l, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (DEBUG|INFO |WARN |ERROR) /, `a real line: ${l}`);
    assert.ok(!l.startsWith(forged), l);
    assert.ok(!/[\r\u001b]/.test(l), `no control byte: ${JSON.stringify(l)}`);
  }
  assert.ok(lines.some((l) => l.includes(`m1\\n${forged}-model\\r\\x1b[2J`)), lines.join('\n'));
  assert.ok(lines.some((l) => l.includes(`s1\\n${forged}-session`)), lines.join('\n'));
});

// ---- metadata.user_id ---------------------------------------------------------------------

test('metadata.user_id is not sent upstream unless --forward-user-id', async () => {
  const uid = JSON.stringify({ device_id: 'dev-1', account_uuid: 'acct-2', session_id: 'sess-3' });
  replies.set('who am i', { text: 'ok' });
  for (const [p, headers, want] of [[keyed, { 'x-api-key': KEY }, undefined], [open, {}, uid]]) {
    mock.reset();
    const r = await request(p, { method: 'POST', path: '/v1/messages', headers, body: body('who am i', { metadata: { user_id: uid } }) });
    assert.equal(r.status, 200, r.text);
    assert.equal(mock.lastChat().body.user, want);
    assert.ok(want !== undefined || !mock.lastChat().raw.includes('acct-2'), 'the ids are nowhere upstream');
  }
});

// ---- one precedence for the seed's prune threshold ------------------------------------------

/** A long agent conversation: about `tokens` prompt tokens at the mock's 4 bytes a token. */
function conversation(marker, rounds) {
  const msgs = [{ role: 'user', content: `${marker}: the task` }];
  for (let i = 0; i < rounds; i++) {
    msgs.push({ role: 'assistant', content: [{ type: 'tool_use', id: `toolu_${marker}${i}`, name: 'lookup', input: { q: `q${i}` } }] });
    msgs.push({ role: 'user', content: [{ type: 'tool_result', tool_use_id: `toolu_${marker}${i}`, content: `r${i} ` + 'x'.repeat(1100) }] });
  }
  msgs.push({ role: 'assistant', content: 'done looking' });
  msgs.push({ role: 'user', content: `${marker}: summarise` });
  return msgs;
}

test('--prune-threshold over PROXY_CONTEXT_PRUNE_THRESHOLD: /health, /v1/context and the prune policy agree', async () => {
  const WINDOW = 16384;
  const tool = { name: 'lookup', description: 'look up', input_schema: { type: 'object', properties: { q: { type: 'string' } } } };
  const env = { PROXY_CONTEXT_PRUNE_THRESHOLD: '0.95' };
  const common = ['--context-window', String(WINDOW), '--upstream-model', 'tiny'];
  const flagged = await startProxy({ upstream: mock.base, env, args: [...common, '--prune-threshold', '0.3'] });
  const envOnly = await startProxy({ upstream: mock.base, env, args: common });
  try {
    for (const [p, want, source] of [[flagged, 0.3, 'flag'], [envOnly, 0.95, 'env']]) {
      const h = await request(p, { path: '/health' });
      assert.deepEqual(h.json.config['prune-threshold'], { value: want, source });
      const c = await request(p, { path: '/v1/context' });
      assert.equal(c.json.prune_threshold, want, c.text);
    }
    // About 0.5 of the window: under the environment's 0.95, over the flag's 0.3.
    const sent = {};
    for (const [p, marker] of [[flagged, 'PTF'], [envOnly, 'PTE']]) {
      replies.set(`${marker}: summarise`, { text: 'sum' });
      const r = await request(p, { method: 'POST', path: '/v1/messages', body: { model: MODEL, max_tokens: 100, tools: [tool], messages: conversation(marker, 28) } });
      assert.equal(r.status, 200, r.text);
      sent[marker] = (await mock.waitFor((q) => q.lastText.includes(`${marker}: summarise`))).promptTokens;
    }
    assert.ok(sent.PTE > 0.45 * WINDOW, `the environment's 0.95: not pruned (${sent.PTE} tokens)`);
    // pruned from about 0.5 to about the flag's 0.3 (the cut moves on a grid: a little above)
    assert.ok(sent.PTF <= 0.4 * WINDOW, `the flag's 0.3: pruned (${sent.PTF} tokens)`);
  } finally {
    for (const p of [flagged, envOnly]) assert.equal((await p.stop()).code, 0, p.tail());
  }
});

// ---- --host ----------------------------------------------------------------------------------

/** Starts anthroxy with --host and returns the address of its "listening on" line. */
async function startWithHost(host) {
  const proc = spawn(anthroxyBin(), ['--host', host, '--port', '0', '--upstream', mock.base], { stdio: ['ignore', 'pipe', 'pipe'] });
  let log = '';
  proc.stderr.on('data', (d) => { log += d; });
  const exited = new Promise((r) => proc.on('exit', (code) => r(code)));
  const m = await until(() => /listening on http:\/\/(\S+):(\d+)/.exec(log), 10000, 20);
  return { m, log: () => log, async stop() { proc.kill('SIGTERM'); return exited; } };
}

test('--host localhost starts and answers; --host :: is logged as every interface', async () => {
  const lh = await startWithHost('localhost');
  try {
    assert.ok(lh.m, `started: ${lh.log()}`);
    assert.ok(['127.0.0.1', '[::1]'].includes(lh.m[1]), lh.m[0]);
    const r = await new Promise((resolve, reject) => {
      http.get({ host: 'localhost', port: Number(lh.m[2]), path: '/' }, (res) => {
        let t = '';
        res.on('data', (d) => { t += d; });
        res.on('end', () => resolve({ status: res.statusCode, text: t }));
      }).on('error', reject);
    });
    assert.equal(r.status, 200);
    assert.equal(r.text, 'anthroxy\n');
  } finally {
    assert.equal(await lh.stop(), 0);
  }
  const any = await startWithHost('::');
  try {
    assert.ok(any.m, `started: ${any.log()}`);
    assert.equal(any.m[1], '[::]', any.m[0]);
    assert.ok(!any.log().includes('[::1]'), any.log());
  } finally {
    assert.equal(await any.stop(), 0);
  }
});

// ---- bytes that cannot be text ---------------------------------------------------------------

test('ill-formed UTF-8 and lone surrogates from the client: carried as U+FFFD, never passed on', async () => {
  replies.set('bytes from the client', (req) => ({ text: `echo ${req.lastText}` }));
  const json = Buffer.concat([
    Buffer.from(`{"model":"claude-\xff`, 'latin1'),
    Buffer.from('","max_tokens":50,"messages":[{"role":"user","content":"bytes from the client: '),
    Buffer.from([0xff, 0x20, 0xed, 0xa0, 0x80, 0x20, 0xe2, 0x82]),
    Buffer.from(' \\ud83d end"}]}'),
  ]);
  mock.reset();
  const r = await rawRequest(open, { data: json });
  const text = strictUtf8(r.raw);
  assert.equal(r.status, 200, text);
  const j = JSON.parse(text);
  assert.equal(j.model, `claude-${FFFD}`);
  const up = mock.lastChat();
  assert.ok(strictUtf8(Buffer.from(up.raw, 'utf8')), 'what went upstream');
  assert.equal(up.lastText, `bytes from the client: ${FFFD} ${FFFD}${FFFD}${FFFD} ${FFFD} ${FFFD} end`);
  assert.ok(j.content[0].text.startsWith('echo bytes from the client: '), text);
});

/** An SSE answer written byte by byte: chunks holding what llama.cpp-like servers may send. */
function badStream(res) {
  const chunk = (content) => Buffer.concat([
    Buffer.from('data: {"choices":[{"finish_reason":null,"index":0,"delta":{"content":"'),
    Buffer.isBuffer(content) ? content : Buffer.from(content),
    Buffer.from('"}}],"object":"chat.completion.chunk"}\n\n'),
  ]);
  res.writeHead(200, { 'Content-Type': 'text/event-stream' });
  res.write('data: {"choices":[{"finish_reason":null,"index":0,"delta":{"role":"assistant","content":null}}],"object":"chat.completion.chunk"}\n\n');
  res.write(chunk('A'));
  res.write(chunk(Buffer.from([0x42, 0x00, 0x43])));           // a raw NUL
  res.write(chunk('D\\u0000E'));                                // an escaped NUL
  res.write(chunk('F\\ud83dG'));                                // a lone surrogate
  res.write(chunk(Buffer.from([0x48, 0xff, 0xed, 0xa0, 0x80]))); // a stray byte, CESU-8
  res.write(chunk('I\\ud83d\\ude00'));                          // a well-formed pair
  res.write('data: {"choices":[{"finish_reason":"stop","index":0,"delta":{}}],"object":"chat.completion.chunk"}\n\n');
  res.end('data: [DONE]\n\n');
}

test('an upstream stream with NULs, lone surrogates and bad bytes: every chunk arrives, with U+FFFD', async () => {
  replies.set('bad stream please', { respond: badStream });
  const r = await rawRequest(open, { data: body('bad stream please', { stream: true }) });
  assert.equal(r.status, 200);
  const events = sseEvents(strictUtf8(r.raw));
  const text = events.filter((e) => e.data?.delta?.type === 'text_delta').map((e) => e.data.delta.text).join('');
  assert.equal(text, `AB${FFFD}CD${FFFD}EF${FFFD}GH${FFFD}${FFFD}${FFFD}${FFFD}I\u{1F600}`);
  assert.equal(events.at(-1).event, 'message_stop');
  assert.equal(events.find((e) => e.event === 'message_delta').data.delta.stop_reason, 'end_turn');
});

test('a complete upstream answer with bad bytes: well-formed JSON to the client', async () => {
  replies.set('bad answer please', {
    respond(res) {
      const b = Buffer.concat([
        Buffer.from('{"choices":[{"finish_reason":"stop","index":0,"message":{"role":"assistant","content":"x'),
        Buffer.from([0xff, 0xc3]), Buffer.from('y\\udc00z"}}],"object":"chat.completion","usage":{"prompt_tokens":5,"completion_tokens":2}}'),
      ]);
      res.writeHead(200, { 'Content-Type': 'application/json', 'Content-Length': b.length });
      res.end(b);
    },
  });
  const r = await rawRequest(open, { data: body('bad answer please') });
  const j = JSON.parse(strictUtf8(r.raw));
  assert.equal(r.status, 200, JSON.stringify(j));
  assert.equal(j.content[0].text, `x${FFFD}${FFFD}y${FFFD}z`);
});

test('an upstream error body echoing its Authorization header: the key reaches neither client nor log', async () => {
  replies.set('echo my headers', {
    respond(res, rec) {
      const b = JSON.stringify({ error: { code: 401, type: 'authentication_error', message: `invalid key: Authorization: ${rec.headers.authorization}` }, headers: rec.headers });
      res.writeHead(401, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(b) });
      res.end(b);
    },
  });
  for (const stream of [false, true]) {
    const r = await request(keyed, { method: 'POST', path: '/v1/messages', headers: { 'x-api-key': KEY }, body: body('echo my headers', { stream }) });
    assert.equal(r.status, 401, r.text);
    assert.equal(r.json.error.type, 'authentication_error');
    assert.match(r.json.error.message, /Authorization: Bearer \*\*\*/);
    assert.ok(!r.text.includes(UPKEY) && !r.text.includes('upkey-'), r.text);
  }
  assert.equal(mock.lastChat().headers.authorization, `Bearer ${UPKEY}`, 'the key did go upstream');
  const log = keyed.log();
  assert.ok(log.includes('upstream answered 401'), keyed.tail());
  assert.ok(!log.includes(UPKEY) && !log.includes('upkey-'), 'no key in the log');
});
