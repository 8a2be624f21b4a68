// models.test.mjs - GET /v1/models and /v1/models/{id} through the SDK's client.models (list,
// retrieve, auto-pagination): every field of ModelInfo, max_input_tokens from the upstream's
// live window (llama-server /props n_ctx; vLLM's max_model_len), and the same listing read by
// an OpenAI client (object "list", created, owned_by).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { useProxy, request, assertAnthropicError, startProxy, waitUpstreamProbed, sdkClient } from './helpers.mjs';
import { startMock } from './mock-llama.mjs';

const env = useProxy({ name: 'models', mock: { nCtx: 32768 } });

const MODEL_INFO_KEYS = ['capabilities', 'created_at', 'deprecated_at', 'display_name', 'id', 'lifecycle', 'line',
  'max_input_tokens', 'max_tokens', 'retires_at', 'type'];

function assertModelInfo(m, window) {
  for (const k of MODEL_INFO_KEYS) assert.ok(k in m, `${m.id}: ${k} present`);
  assert.equal(m.type, 'model');
  assert.equal(typeof m.display_name, 'string');
  assert.ok(!Number.isNaN(Date.parse(m.created_at)), 'created_at is RFC 3339');
  assert.equal(m.lifecycle, 'active');
  assert.equal(m.max_input_tokens, window);
  assert.equal(m.max_tokens, window);
  const c = m.capabilities;
  for (const k of ['batch', 'citations', 'code_execution', 'context_management', 'effort', 'image_input', 'pdf_input', 'server_tools', 'structured_outputs', 'thinking'])
    assert.ok(c[k] && typeof c[k].supported === 'boolean', `capabilities.${k}`);
  assert.equal(c.context_management.compact_20260112.supported, true);
  assert.equal(c.context_management.clear_tool_uses_20250919.supported, true);
}

test('client.models.list(): ModelInfo entries with the live window of the upstream', env.wrap(async () => {
  const seen = [];
  for await (const m of env.client.models.list()) seen.push(m);
  assert.ok(seen.length >= 5);
  for (const m of seen) assertModelInfo(m, 32768);
  assert.ok(seen.some((m) => m.id === 'tiny'), 'the upstream model is listed');
  assert.equal(seen.find((m) => m.id === 'claude-sonnet-4-5').line, 'sonnet');
  assert.equal(seen.find((m) => m.id === 'tiny').line, null);
  assert.equal(new Set(seen.map((m) => m.id)).size, seen.length, 'no duplicates');
}));

test('pages: limit, after_id, before_id, has_more, first_id, last_id', env.wrap(async () => {
  const all = (await env.client.models.list({ limit: 1000 })).data.map((m) => m.id);
  const page = await env.client.models.list({ limit: 2 });
  assert.deepEqual(page.data.map((m) => m.id), all.slice(0, 2));
  assert.equal(page.has_more, true);
  assert.equal(page.first_id, all[0]);
  assert.equal(page.last_id, all[1]);
  const next = await page.getNextPage();
  assert.deepEqual(next.data.map((m) => m.id), all.slice(2, 4));
  const prev = await env.client.models.list({ limit: 2, before_id: all[3] });
  assert.deepEqual(prev.data.map((m) => m.id), all.slice(1, 3));
  const seen = [];
  for await (const m of env.client.models.list({ limit: 3 })) seen.push(m.id);
  assert.deepEqual(seen, all, 'auto-pagination walks the whole list once');
  assertAnthropicError(await request(env.proxy, { path: '/v1/models?limit=0' }), 400, 'invalid_request_error', /limit/);
  assertAnthropicError(await request(env.proxy, { path: '/v1/models?after_id=nope' }), 400, 'invalid_request_error', /after_id/);
}));

test('client.models.retrieve(): a listed model, any Claude name; unknown is a 404', env.wrap(async () => {
  const m = await env.client.models.retrieve('tiny');
  assertModelInfo(m, 32768);
  assert.equal(m.id, 'tiny');
  const c = await env.client.models.retrieve('claude-opus-5-5');
  assert.equal(c.id, 'claude-opus-5-5');
  assert.equal(c.line, 'opus');
  await assert.rejects(env.client.models.retrieve('no-such-model'), (e) => e.status === 404 && e.error?.error?.type === 'not_found_error');
  assertAnthropicError(await request(env.proxy, { method: 'POST', path: '/v1/models/tiny' }), 405, 'invalid_request_error');
}));

test('an OpenAI client reads the same listing: object list, created, owned_by, every model in one page', env.wrap(async () => {
  const r = await request(env.proxy, { path: '/v1/models', headers: { authorization: 'Bearer x' } });
  assert.equal(r.status, 200);
  assert.equal(r.json.object, 'list');
  const anth = (await env.client.models.list({ limit: 1000 })).data;
  assert.equal(r.json.data.length, anth.length, 'no pagination without anthropic-version');
  for (const m of r.json.data) {
    assert.equal(m.object, 'model');
    assert.equal(typeof m.created, 'number');
    assert.equal(typeof m.owned_by, 'string');
  }
}));

test('max_input_tokens follows vLLM max_model_len and a configured window', env.wrap(async () => {
  const mock = await startMock({ flavor: 'vllm', nCtx: 12288 });
  const proxy = await startProxy({ upstream: mock.base });
  try {
    await waitUpstreamProbed(proxy);
    const m = (await sdkClient(proxy).models.list()).data[0];
    assert.equal(m.max_input_tokens, 12288);
  } finally {
    await proxy.stop();
    await mock.close();
  }
  const mock2 = await startMock({ nCtx: 32768 });
  const proxy2 = await startProxy({ upstream: mock2.base, env: { PROXY_CONTEXT_WINDOW: '16000' } });
  try {
    await waitUpstreamProbed(proxy2);
    assert.equal((await sdkClient(proxy2).models.retrieve('tiny')).max_input_tokens, 16000);
  } finally {
    await proxy2.stop();
    await mock2.close();
  }
}));

test('an id that is a file path (llama-server names its model by its path) is retrieved %-encoded', env.wrap(async () => {
  const mock = await startMock({ model: '/models/qwen/tiny.gguf', nCtx: 8192 });
  const proxy = await startProxy({ upstream: mock.base });
  try {
    await waitUpstreamProbed(proxy);
    const m = await sdkClient(proxy).models.retrieve('/models/qwen/tiny.gguf');
    assert.equal(m.id, '/models/qwen/tiny.gguf');
    assert.equal(m.max_input_tokens, 8192);
  } finally {
    await proxy.stop();
    await mock.close();
  }
}));
