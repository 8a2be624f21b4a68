// streaming.test.mjs - Anthropic SSE out of OpenAI SSE in (issue 4): the SDK's messages.stream
// against the mock, event order, usage, abort, concurrency, resets, pings and early errors.
import { test } from 'node:test';
import fs from 'node:fs';
import net from 'node:net';
import assert from 'node:assert/strict';
import { useProxy, until, startProxy, request, waitUpstreamProbed } from './helpers.mjs';

const env = useProxy({ name: 'streaming', args: ['--ping-interval', '0.2', '--max-upstream', '128'] });
const MODEL = 'claude-sonnet-4-5';
const ADD = {
  name: 'add', description: 'Add two integers',
  input_schema: { type: 'object', properties: { a: { type: 'integer' }, b: { type: 'integer' } }, required: ['a', 'b'] },
};
const WEATHER = {
  name: 'get_weather', description: 'Weather for a city',
  input_schema: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] },
};

const chatWith = (needle) => env.mock.waitFor((r) => r.path === '/v1/chat/completions' && r.lastText.includes(needle));

/**
 * Checks an Anthropic event sequence: message_start first, blocks opened in index order with
 * consecutive indexes, one open at a time, deltas of the block's own kind, each closed once,
 * then one message_delta and message_stop last. Pings may come anywhere.
 */
export function assertEventOrder(events) {
  const ev = events.filter((e) => e.type !== 'ping');
  assert.equal(ev[0].type, 'message_start', 'message_start first');
  assert.equal(ev[ev.length - 1].type, 'message_stop', 'message_stop last');
  assert.equal(ev[ev.length - 2].type, 'message_delta', 'message_delta before message_stop');
  assert.equal(ev.filter((e) => e.type === 'message_delta').length, 1);
  let open = null;
  let next = 0;
  const kinds = { text: 'text_delta', thinking: ['thinking_delta', 'signature_delta'], tool_use: 'input_json_delta' };
  for (const e of ev.slice(1, -2)) {
    if (e.type === 'content_block_start') {
      assert.equal(open, null, 'one block open at a time');
      assert.equal(e.index, next++, 'consecutive indexes');
      open = e;
    } else if (e.type === 'content_block_delta') {
      assert.ok(open && e.index === open.index, 'delta inside its open block');
      assert.ok([].concat(kinds[open.content_block.type]).includes(e.delta.type),
        `${e.delta.type} inside a ${open.content_block.type} block`);
    } else if (e.type === 'content_block_stop') {
      assert.ok(open && e.index === open.index, 'stop closes the open block');
      open = null;
    } else {
      assert.fail(`unexpected event ${e.type}`);
    }
  }
  assert.equal(open, null, 'every block closed');
}

/** Runs messages.stream and returns { events, final }. */
async function sdkStream(params) {
  const stream = env.client.messages.stream({ model: MODEL, max_tokens: 1000, ...params });
  const events = [];
  for await (const e of stream) events.push(e);
  return { events, final: await stream.finalMessage() };
}

/** Raw SSE from the proxy: [{event, data}], plus the status and content type. */
async function rawStream(body, headers = {}) {
  const r = await fetch(env.proxy.url + '/v1/messages', {
    method: 'POST', headers: { 'content-type': 'application/json', ...headers },
    body: JSON.stringify({ model: MODEL, max_tokens: 100, stream: true, ...body }),
  });
  const text = await r.text();
  const out = { status: r.status, type: r.headers.get('content-type'), text, events: [] };
  if (!(out.type || '').startsWith('text/event-stream')) return out;
  for (const frame of text.split('\n\n')) {
    if (!frame.trim()) continue;
    let event = null;
    let data = '';
    for (const line of frame.split('\n')) {
      if (line.startsWith('event:')) event = line.slice(6).trim();
      else if (line.startsWith('data:')) data += line.slice(5).trim();
    }
    out.events.push({ event, data: data ? JSON.parse(data) : null, at: null });
  }
  return out;
}

test('text: finalMessage equals what was streamed; order valid; usage from the upstream', env.wrap(async () => {
  const text = 'Streaming works: ünïcødé ✓ and emoji 🎉 across piece boundaries.';
  env.on('stream some text', { text, cached: 9, pieceSize: 2 });
  const { events, final } = await sdkStream({ messages: [{ role: 'user', content: 'stream some text' }] });
  assertEventOrder(events);
  const streamed = events.filter((e) => e.type === 'content_block_delta').map((e) => e.delta.text).join('');
  assert.equal(streamed, text);
  assert.deepEqual(final.content, [{ type: 'text', text }]);
  assert.equal(final.stop_reason, 'end_turn');
  assert.equal(final.model, MODEL);
  assert.match(final.id, /^msg_/);
  const rec = await chatWith('stream some text');
  assert.equal(rec.body.stream, true);
  assert.equal(rec.body.stream_options?.include_usage, true, 'asks for usage');
  assert.equal(final.usage.output_tokens, rec.usage.completion_tokens);
  assert.equal(final.usage.input_tokens, rec.usage.prompt_tokens - 9);
  assert.equal(final.usage.cache_read_input_tokens, 9);
  const md = events.find((e) => e.type === 'message_delta');
  assert.equal(md.usage.output_tokens, rec.usage.completion_tokens);
}));

test('thinking then text: a thinking block first with its signature', env.wrap(async () => {
  env.on('reason first', { reasoning: 'I should answer briefly.', text: 'Brief.' });
  const { events, final } = await sdkStream({
    thinking: { type: 'enabled', budget_tokens: 1024 }, messages: [{ role: 'user', content: 'reason first' }],
  });
  assertEventOrder(events);
  assert.equal(final.content.length, 2);
  assert.equal(final.content[0].type, 'thinking');
  assert.equal(final.content[0].thinking, 'I should answer briefly.');
  assert.equal(typeof final.content[0].signature, 'string');
  assert.ok(events.some((e) => e.type === 'content_block_delta' && e.delta.type === 'signature_delta'), 'a signature_delta');
  assert.deepEqual(final.content[1], { type: 'text', text: 'Brief.' });
}));

test('parallel tool calls: tool_use blocks with the full inputs, no empty text block', env.wrap(async () => {
  env.on('use two tools', {
    toolCalls: [{ name: 'add', arguments: { a: 40, b: 2 } }, { name: 'get_weather', arguments: { city: 'Zürich' } }],
  });
  const { events, final } = await sdkStream({ tools: [ADD, WEATHER], messages: [{ role: 'user', content: 'use two tools' }] });
  assertEventOrder(events);
  assert.equal(final.stop_reason, 'tool_use');
  assert.deepEqual(final.content.map((b) => b.type), ['tool_use', 'tool_use']);
  assert.deepEqual(final.content[0].input, { a: 40, b: 2 });
  assert.deepEqual(final.content[1].input, { city: 'Zürich' });
  assert.equal(final.content[1].name, 'get_weather');
  for (const b of final.content) assert.match(b.id, /^toolu_/);
}));

test('text then tool call', env.wrap(async () => {
  env.on('talk then call', { text: 'Let me add.', toolCalls: [{ name: 'add', arguments: { a: 1, b: 2 } }] });
  const { events, final } = await sdkStream({ tools: [ADD], messages: [{ role: 'user', content: 'talk then call' }] });
  assertEventOrder(events);
  assert.deepEqual(final.content.map((b) => b.type), ['text', 'tool_use']);
  assert.equal(final.content[0].text, 'Let me add.');
  assert.deepEqual(final.content[1].input, { a: 1, b: 2 });
}));

test('max_tokens in a stream: stop_reason max_tokens', env.wrap(async () => {
  env.on('stream too long', { text: 'a b c d e f g h i j k l m n o p' });
  const { final } = await sdkStream({ max_tokens: 2, messages: [{ role: 'user', content: 'stream too long' }] });
  assert.equal(final.stop_reason, 'max_tokens');
  assert.equal(final.content[0].text, 'a b c ');
}));

test('abort after three events: the upstream connection is closed within a second', env.wrap(async () => {
  env.on('abort me', { text: 'x'.repeat(600), chunkDelayMs: 30 });
  const stream = env.client.messages.stream({ model: MODEL, max_tokens: 1000, messages: [{ role: 'user', content: 'abort me' }] });
  let n = 0;
  await assert.rejects(async () => {
    for await (const e of stream) {
      if (e.type !== 'ping' && ++n === 3) stream.abort();
    }
  });
  const rec = await chatWith('abort me');
  const t0 = Date.now();
  await until(() => rec.clientClosed, 1000);
  assert.ok(rec.clientClosed, `mock saw its connection closed (${Date.now() - t0} ms)`);
  assert.ok(rec.closedAt - t0 < 1000);
}));

test('100 concurrent streams complete with their own, non-interleaved content', env.wrap(async () => {
  const N = 100;
  env.on('concurrent #', (req) => {
    const i = /concurrent #(\d+)/.exec(req.lastText)[1];
    return { text: `answer ${i} `.repeat(20), chunkDelayMs: 2 };
  });
  const results = await Promise.all(Array.from({ length: N }, async (_, i) => {
    const { events, final } = await sdkStream({ messages: [{ role: 'user', content: `concurrent #${i}` }] });
    assertEventOrder(events);
    return [i, final];
  }));
  for (const [i, final] of results) {
    assert.equal(final.content[0].text, `answer ${i} `.repeat(20), `stream ${i}`);
  }
}));

test('upstream reset mid-stream: the SDK gets an error, the next request succeeds', env.wrap(async () => {
  env.on('reset halfway', { text: 'this will be cut off before the end', resetAfter: 5, chunkDelayMs: 50 });
  const stream = env.client.messages.stream({ model: MODEL, max_tokens: 100, messages: [{ role: 'user', content: 'reset halfway' }] });
  await assert.rejects(stream.finalMessage());
  const raw = await rawStream({ messages: [{ role: 'user', content: 'reset halfway' }] });
  assert.equal(raw.status, 200);
  const last = raw.events[raw.events.length - 1];
  assert.equal(last.event, 'error', `the stream ends with event: error, not a quiet end_turn: ${raw.text.slice(-300)}`);
  assert.equal(last.data.type, 'error');
  assert.ok(!raw.events.some((e) => e.event === 'message_stop'), 'no message_stop after a failure');
  const opened = raw.events.filter((e) => e.event === 'content_block_start').length;
  const closed = raw.events.filter((e) => e.event === 'content_block_stop').length;
  assert.equal(opened, closed, 'open blocks are closed before the error');
  env.on('after the reset', { text: 'fine again' });
  const { final } = await sdkStream({ messages: [{ role: 'user', content: 'after the reset' }] });
  assert.equal(final.content[0].text, 'fine again');
}));

test('an upstream error object inside the stream becomes event: error', env.wrap(async () => {
  env.on('error inside', {
    text: 'partial answer here',
    streamError: { after: 3, body: { error: { code: 500, message: 'slot crashed', type: 'server_error' } } },
  });
  const raw = await rawStream({ messages: [{ role: 'user', content: 'error inside' }] });
  const last = raw.events[raw.events.length - 1];
  assert.equal(last.event, 'error', raw.text.slice(-400));
  assert.equal(last.data.error.type, 'api_error');
}));

test('a silent upstream gets pings, then the answer', env.wrap(async () => {
  env.on('think silently', { text: 'finally', firstByteDelayMs: 3000 });
  const t0 = Date.now();
  const raw = await rawStream({ messages: [{ role: 'user', content: 'think silently' }] });
  assert.equal(raw.status, 200);
  assert.ok(Date.now() - t0 >= 2900);
  const firstBlock = raw.events.findIndex((e) => e.event === 'content_block_start');
  const pings = raw.events.slice(0, firstBlock).filter((e) => e.event === 'ping');
  assert.equal(raw.events[0].event, 'message_start');
  assert.ok(pings.length >= 3, `pings while silent: ${pings.length}`);
  assert.deepEqual(pings[0].data, { type: 'ping' });
  assertEventOrder(raw.events.map((e) => e.data));
  const text = raw.events.filter((e) => e.event === 'content_block_delta').map((e) => e.data.delta.text).join('');
  assert.equal(text, 'finally');
}));

test('an upstream error after the hold time becomes event: error with the mapped type', env.wrap(async () => {
  env.on('late failure', { status: 429, body: { error: { code: 429, message: 'busy', type: 'rate_limit_error' } }, firstByteDelayMs: 3500 });
  const raw = await rawStream({ messages: [{ role: 'user', content: 'late failure' }] });
  assert.equal(raw.status, 200);
  assert.equal(raw.events[0].event, 'message_start');
  const last = raw.events[raw.events.length - 1];
  assert.equal(last.event, 'error');
  assert.equal(last.data.error.type, 'rate_limit_error');
}));

test('an early upstream error in a stream is an ordinary JSON error', env.wrap(async () => {
  env.on('early failure', { status: 500, body: { error: { code: 500, message: 'no', type: 'server_error' } } });
  const raw = await rawStream({ messages: [{ role: 'user', content: 'early failure' }] });
  assert.ok(raw.status >= 500, raw.text);
  assert.match(raw.type, /application\/json/);
  assert.equal(JSON.parse(raw.text).error.type, 'api_error');
}));

test('a context overflow in a stream is a plain 400 JSON error, before the hold time ends', env.wrap(async () => {
  const t0 = Date.now();
  const raw = await rawStream({ messages: [{ role: 'user', content: 'overflow '.repeat(16000) }] });
  assert.ok(Date.now() - t0 < 2000, 'not held');
  assert.equal(raw.status, 400, raw.text.slice(0, 300));
  assert.match(raw.type, /application\/json/);
  const b = JSON.parse(raw.text);
  assert.equal(b.type, 'error');
  assert.equal(b.error.type, 'invalid_request_error');
  assert.match(b.error.message, /^prompt is too long: \d+ tokens > 32768 maximum/);
}));

test('upstream read timeout: before the first byte and in mid-stream, the client gets an error', env.wrap(async () => {
  const p = await startProxy({
    upstream: env.mock.base, args: ['--read-timeout', '0.6', '--first-byte-hold', '0.2', '--ping-interval', '0.1'],
  });
  try {
    await waitUpstreamProbed(p);
    env.on('never answers', { silent: true });
    env.on('stops talking', { text: 'a few words and then nothing more at all', stallAfter: 4 });
    // Non-streaming: an ordinary JSON error, and the upstream transfer is dropped.
    const t0 = Date.now();
    const r = await request(p, { method: 'POST', path: '/v1/messages', body: { model: MODEL, max_tokens: 20, messages: [{ role: 'user', content: 'never answers' }] } });
    assert.ok(r.status >= 500, `${r.status} ${r.text}`);
    assert.equal(r.json?.type, 'error', r.text);
    assert.ok(Date.now() - t0 < 5000, 'within the read timeout, not the default 600 s');
    // Streaming, silent from the start: committed after the hold, pings, then event: error.
    for (const phrase of ['never answers', 'stops talking']) {
      const res = await fetch(p.url + '/v1/messages', {
        method: 'POST', headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ model: MODEL, max_tokens: 100, stream: true, messages: [{ role: 'user', content: phrase }] }),
      });
      const text = await res.text();
      assert.equal(res.status, 200, text);
      const names = [...text.matchAll(/^event: (\w+)/gm)].map((m) => m[1]);
      assert.equal(names[0], 'message_start', text.slice(0, 300));
      assert.equal(names[names.length - 1], 'error', `${phrase}: ends with event: error: ${names.join(',')}`);
      assert.ok(!names.includes('message_stop'), `${phrase}: no message_stop`);
      assert.equal(names.filter((n) => n === 'content_block_start').length,
        names.filter((n) => n === 'content_block_stop').length, `${phrase}: blocks closed`);
      if (phrase === 'never answers') assert.ok(names.includes('ping'), 'pinged while silent');
    }
    const recs = env.mock.chats().filter((q) => q.lastText === 'stops talking');
    assert.ok(await until(() => recs.every((q) => q.clientClosed), 1000), 'the stalled upstream transfer was dropped');
  } finally {
    const { code } = await p.stop();
    assert.equal(code, 0, p.tail());
  }
}));

const rssKiB = (pid) => Number(/VmRSS:\s+(\d+)/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))[1]);

test('a client that stops reading: memory stays bounded, it is cut off, the upstream transfer aborted',
  env.wrap(async () => {
    const p = await startProxy({ upstream: env.mock.base, args: ['--client-stall-timeout', '1'] });
    let sock;
    try {
      await waitUpstreamProbed(p);
      // About 48 MB of text in 12,000 chunks: far more than the socket buffers hold.
      env.on('flood me', { repeat: { piece: 'x'.repeat(4096), count: 12000 } });
      const rss0 = rssKiB(p.proc.pid);
      const body = JSON.stringify({ model: MODEL, max_tokens: 100000000, stream: true, messages: [{ role: 'user', content: 'flood me' }] });
      sock = net.connect(p.port, '127.0.0.1');
      await new Promise((r) => sock.on('connect', r));
      sock.write(`POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`);
      let got = 0;
      let closed = false;
      let paused = false;
      sock.on('data', (d) => { got += d.length; if (!paused) { paused = true; sock.pause(); } }); // reads once, then stops
      sock.on('close', () => { closed = true; });
      sock.on('error', () => {});
      const rec = await env.mock.waitFor((q) => q.lastText === 'flood me');
      let peak = 0;
      const cut = await until(() => {
        peak = Math.max(peak, rssKiB(p.proc.pid));
        return rec.clientClosed;
      }, 8000, 50);
      assert.ok(cut, `the proxy dropped the upstream transfer of a client that stopped reading (${rec.events} chunks sent; proxy log:\n${p.tail(30)})`);
      assert.ok(rec.events < 12000, `the upstream was not read to the end (${rec.events} chunks sent)`);
      assert.ok(peak - rss0 < 24 * 1024, `proxy RSS grew by ${peak - rss0} KiB (from ${rss0})`);
      // Cut off after --client-stall-timeout (1 s), not merely once the upstream ran dry.
      const cutAfter = rec.closedAt - rec.time;
      assert.ok(cutAfter < 1000 + 2500, `upstream transfer aborted ${cutAfter} ms after it started (stall timeout 1 s)`);
      // The proxy closed the client's connection too: reading again drains what the kernel
      // buffered, then meets the proxy's FIN (a paused socket does not see it).
      assert.ok(got > 0, 'the client got the start of the stream');
      let ended = false;
      sock.on('end', () => { ended = true; });
      sock.resume();
      assert.ok(await until(() => ended || closed, 3000), `the proxy closed the stalled client's connection (${got} bytes read)`);
      // And the proxy still serves.
      env.on('after the flood', { text: 'still here' });
      const r = await request(p, { method: 'POST', path: '/v1/messages', body: { model: MODEL, max_tokens: 20, messages: [{ role: 'user', content: 'after the flood' }] } });
      assert.equal(r.status, 200, r.text);
    } finally {
      if (sock) sock.destroy();
      const { code } = await p.stop();
      assert.equal(code, 0, p.tail());
    }
  }));
