// upstreams.test.mjs - upstreams other than a full llama-server: a vLLM-like server (no /props,
// /slots, /tokenize, /apply-template; its own overflow wording), the /slots fallback for the
// window, the upstream model and model map, and the upstream API key.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { useProxy, startProxy, request, waitUpstreamProbed } from './helpers.mjs';
import { startMock } from './mock-llama.mjs';

const VLLM_MODEL = 'Qwen/Qwen2.5-7B-Instruct';
const vllm = useProxy({
  name: 'upstreams-vllm',
  mock: { models: [VLLM_MODEL, 'other'], endpoints: { props: false, slots: false, tokenize: false, applyTemplate: false } },
});
const MODEL = 'claude-sonnet-4-5';
const msg = (text, extra = {}) => ({ model: MODEL, max_tokens: 50, messages: [{ role: 'user', content: text }], ...extra });

/** Starts a proxy for one test and always stops it; asserts a clean exit. */
async function withProxy(opts, fn) {
  const p = await startProxy(opts);
  try {
    await waitUpstreamProbed(p);
    await fn(p);
  } finally {
    const { code } = await p.stop();
    assert.equal(code, 0, p.tail());
  }
}

test('vLLM-like upstream: first listed model upstream, client name back, window falls back to 131072',
  vllm.wrap(async () => {
    vllm.on('hello vllm', { text: 'hi from vllm' });
    const r = await request(vllm.proxy, { method: 'POST', path: '/v1/messages', body: msg('hello vllm') });
    assert.equal(r.status, 200, r.text);
    assert.equal(r.json.model, MODEL);
    assert.equal(r.json.content[0].text, 'hi from vllm');
    assert.equal(vllm.mock.lastChat().body.model, VLLM_MODEL);
    const h = await request(vllm.proxy, { path: '/health' });
    assert.equal(h.json.context_window?.value ?? h.json.context_window, 131072, h.text.slice(0, 400));
  }));

test('vLLM-like upstream: count_tokens falls back to an estimate', vllm.wrap(async () => {
  const body = msg(`estimate me ${'lorem ipsum dolor sit amet '.repeat(200)}`);
  const r = await request(vllm.proxy, { method: 'POST', path: '/v1/messages/count_tokens', body });
  assert.equal(r.status, 200, r.text);
  const real = vllm.mock.promptTokens({ messages: [{ role: 'user', content: body.messages[0].content }] });
  assert.ok(r.json.input_tokens > real / 2 && r.json.input_tokens < real * 2,
    `estimate ${r.json.input_tokens} within a factor 2 of ${real}`);
}));

test('vLLM\'s "maximum context length" error -> 400 prompt is too long', vllm.wrap(async () => {
  vllm.on('vllm too long', {
    status: 400,
    body: {
      object: 'error',
      message: "This model's maximum context length is 4096 tokens. However, you requested 5000 tokens (4950 in the messages, 50 in the completion). Please reduce the length of the messages or completion.",
      type: 'BadRequestError', param: null, code: 400,
    },
  });
  for (const stream of [false, true]) {
    const r = await request(vllm.proxy, { method: 'POST', path: '/v1/messages', body: msg('vllm too long', { stream }) });
    assert.equal(r.status, 400, r.text);
    assert.equal(r.json.error.type, 'invalid_request_error');
    assert.match(r.json.error.message, /^prompt is too long: \d+ tokens > 4096 maximum/);
  }
}));

test('window from /slots when /props is missing', async () => {
  const mock = await startMock({ nCtx: 3000, endpoints: { props: false } });
  try {
    await withProxy({ upstream: mock.base }, async (p) => {
      const h = await request(p, { path: '/health' });
      assert.equal(h.json.context_window?.value ?? h.json.context_window, 3000, h.text.slice(0, 400));
    });
  } finally {
    await mock.close();
  }
});

test('--upstream-model and --model-map pick the upstream model; --upstream-api-key is sent, never logged',
  async () => {
    const mock = await startMock({ models: ['big-model', 'small-model'] });
    mock.script(() => ({ text: 'mapped' }));
    try {
      await withProxy({
        upstream: mock.base,
        args: ['--upstream-model', 'big-model', '--model-map', 'claude-3-5-haiku*=small-model',
          '--upstream-api-key', 'UPSTREAM-SECRET-42'],
      }, async (p) => {
        for (const [client, want] of [['claude-3-5-haiku-20241022', 'small-model'], [MODEL, 'big-model']]) {
          const r = await request(p, { method: 'POST', path: '/v1/messages', body: { ...msg('map me'), model: client } });
          assert.equal(r.status, 200, r.text);
          assert.equal(r.json.model, client);
          assert.equal(mock.lastChat().body.model, want, client);
          assert.equal(mock.lastChat().headers.authorization, 'Bearer UPSTREAM-SECRET-42');
        }
        assert.ok(!p.log().includes('UPSTREAM-SECRET-42'), 'the upstream key never reaches the log');
      });
    } finally {
      await mock.close();
    }
  });
