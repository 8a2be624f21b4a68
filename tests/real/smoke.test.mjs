// smoke.test.mjs - the real llama-server with the tiny model answers what the proxy relies on:
// /health, /props, /v1/models, /tokenize, /apply-template, chat completions (JSON and SSE, with
// tools in the prompt), and prompt-cache reuse on a repeated prompt. Skips when LLAMA_SERVER is unset.
//
//   LLAMA_SERVER=/path/to/llama-server node --test tests/real/
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startLlama } from './llama.mjs';

const CTX = 65536;
let llama = null;
before(async () => { llama = await startLlama({ ctx: CTX, np: 1 }); });
after(async () => { if (llama) await llama.stop(); });

const skip = (t) => { if (!llama) { t.skip('LLAMA_SERVER is not set'); return true; } return false; };

async function get(p) {
  const r = await fetch(llama.url + p);
  return { status: r.status, json: await r.json() };
}
async function post(p, body) {
  const r = await fetch(llama.url + p, {
    method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body),
  });
  const text = await r.text();
  let json = null;
  try { json = JSON.parse(text); } catch { /* SSE */ }
  return { status: r.status, text, json };
}

const TOOLS = [{
  type: 'function',
  function: {
    name: 'add', description: 'Add two numbers',
    parameters: { type: 'object', properties: { a: { type: 'number' }, b: { type: 'number' } }, required: ['a', 'b'] },
  },
}];
const MESSAGES = [{ role: 'system', content: 'You are terse.' }, { role: 'user', content: 'What is 2 + 2?' }];

test('props and models describe the tiny model', async (t) => {
  if (skip(t)) return;
  const props = await get('/props');
  assert.equal(props.status, 200);
  assert.equal(props.json.model_alias, 'tiny');
  assert.equal(props.json.default_generation_settings.n_ctx, CTX);
  assert.equal(props.json.eos_token, '<|im_end|>');
  assert.match(props.json.chat_template, /<tool_call>/);
  const models = await get('/v1/models');
  assert.equal(models.status, 200);
  assert.equal(models.json.data[0].id, 'tiny');
  assert.equal(models.json.data[0].meta.n_vocab, 316);
});

test('tokenize and apply-template', async (t) => {
  if (skip(t)) return;
  const tk = await post('/tokenize', { content: 'Hello <|im_end|> world' });
  assert.deepEqual(tk.json.tokens, [72, 101, 108, 108, 111, 32, 307, 268, 265, 108, 100]);
  const at = await post('/apply-template', { messages: MESSAGES });
  assert.equal(at.json.prompt,
    '<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n<|im_start|>assistant\n');
});

test('chat completion, then the same prompt again is served from the prompt cache', async (t) => {
  if (skip(t)) return;
  const body = { model: 'x', messages: MESSAGES, max_tokens: 8, temperature: 0 };
  const a = await post('/v1/chat/completions', body);
  assert.equal(a.status, 200, a.text);
  assert.equal(a.json.object, 'chat.completion');
  assert.ok(a.json.usage.prompt_tokens > 10);
  assert.ok('timings' in a.json);
  const b = await post('/v1/chat/completions', body);
  assert.equal(b.status, 200, b.text);
  assert.equal(b.json.usage.prompt_tokens, a.json.usage.prompt_tokens);
  assert.equal(b.json.usage.prompt_tokens_details.cached_tokens, b.json.usage.prompt_tokens - 1);
  assert.equal(b.json.timings.cache_n, b.json.usage.prompt_tokens - 1);
});

test('streaming with usage, and tools in the prompt', async (t) => {
  if (skip(t)) return;
  const s = await post('/v1/chat/completions', {
    messages: MESSAGES, max_tokens: 8, stream: true, stream_options: { include_usage: true },
  });
  assert.equal(s.status, 200);
  const data = s.text.split('\n').filter((l) => l.startsWith('data: ')).map((l) => l.slice(6));
  assert.equal(data.at(-1), '[DONE]');
  const usage = JSON.parse(data.at(-2));
  assert.deepEqual(usage.choices, []);
  assert.ok(usage.usage.prompt_tokens_details.cached_tokens >= 0);

  // With tools the prompt grows (the tools are rendered into it); this model answers in text.
  const plain = await post('/v1/chat/completions', { messages: MESSAGES, max_tokens: 4 });
  const tc = await post('/v1/chat/completions', { messages: MESSAGES, tools: TOOLS, max_tokens: 16 });
  assert.equal(tc.status, 200, tc.text);
  assert.ok(tc.json.usage.prompt_tokens > plain.json.usage.prompt_tokens + 50);
  assert.ok(['stop', 'length'].includes(tc.json.choices[0].finish_reason));
});
