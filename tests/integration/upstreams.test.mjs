// upstreams.test.mjs - upstreams other than a full llama-server: a vLLM-like server (no /props,
// /slots, /tokenize, /apply-template; the window from /v1/models' max_model_len; its own
// overflow wording), an Ollama-like one (the window from /api/show), an OpenAI-like one with
// no window anywhere (the fallback), the /slots fallback, the upstream model and model map,
// and the upstream API key.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { useProxy, startProxy, request, waitUpstreamProbed } from './helpers.mjs';
import { startMock } from './mock-llama.mjs';

const VLLM_MODEL = 'Qwen/Qwen2.5-7B-Instruct';
const VLLM_WINDOW = 24576;
const vllm = useProxy({ name: 'upstreams-vllm', mock: { flavor: 'vllm', models: [VLLM_MODEL, 'other'], nCtx: VLLM_WINDOW } });
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

test('vLLM-like upstream: first listed model upstream, client name back, window from max_model_len',
  vllm.wrap(async () => {
    vllm.on('hello vllm', { text: 'hi from vllm' });
    const r = await request(vllm.proxy, { method: 'POST', path: '/v1/messages', body: msg('hello vllm') });
    assert.equal(r.status, 200, r.text);
    assert.equal(r.json.model, MODEL);
    assert.equal(r.json.content[0].text, 'hi from vllm');
    assert.equal(vllm.mock.lastChat().body.model, VLLM_MODEL);
    const h = JSON.parse((await request(vllm.proxy, { path: '/health' })).text);
    assert.deepEqual(h.context_window, { value: VLLM_WINDOW, source: 'models' });
    assert.equal(h.upstream.n_ctx, VLLM_WINDOW);
    assert.equal(h.upstream.llama_server, false);
    assert.equal(h.upstream.model, VLLM_MODEL);
    const probed = vllm.mock.requests.filter((q) => q.method === 'GET').map((q) => q.path);
    assert.ok(probed.includes('/v1/models'), `probed: ${probed}`);
    // The window the policies and /v1/context use is the same one.
    const c = JSON.parse((await request(vllm.proxy, { path: '/v1/context' })).text);
    assert.equal(c.context_window, VLLM_WINDOW);
  }));

test('an OpenAI-like upstream that reports no window: the fallback 131072', async () => {
  const mock = await startMock({ models: ['plain'], endpoints: { props: false, slots: false, tokenize: false, applyTemplate: false } });
  try {
    await withProxy({ upstream: mock.base }, async (p) => {
      const h = JSON.parse((await request(p, { path: '/health' })).text);
      assert.deepEqual(h.context_window, { value: 131072, source: 'fallback' });
      assert.equal(h.upstream.model, 'plain');
    });
  } finally {
    await mock.close();
  }
});

// Ollama's OpenAI endpoint reports no window; its own POST /api/show has the model's
// `<arch>.context_length` in model_info.
test('Ollama-like upstream: window from /api/show model_info.<arch>.context_length',
  { todo: 'core does not probe /api/show yet' }, async () => {
    const mock = await startMock({ flavor: 'ollama', models: ['qwen2.5:7b'], nCtx: 40960 });
    mock.script(() => ({ text: 'hi from ollama' }));
    try {
      await withProxy({ upstream: mock.base }, async (p) => {
        const r = await request(p, { method: 'POST', path: '/v1/messages', body: msg('hello ollama') });
        assert.equal(r.status, 200, r.text);
        assert.equal(mock.lastChat().body.model, 'qwen2.5:7b');
        const show = mock.requests.find((q) => q.method === 'POST' && q.path === '/api/show');
        assert.ok(show, `/api/show probed: ${mock.requests.map((q) => `${q.method} ${q.path}`).join(', ')}`);
        assert.equal(show.body.model, 'qwen2.5:7b');
        const h = JSON.parse((await request(p, { path: '/health' })).text);
        assert.equal(h.context_window.value, 40960, JSON.stringify(h.context_window));
        assert.equal(h.upstream.n_ctx, 40960);
      });
    } finally {
      await mock.close();
    }
  });

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
      const h = JSON.parse((await request(p, { path: '/health' })).text);
      assert.deepEqual(h.context_window, { value: 3000, source: 'slots' });
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
