// render.mjs - pre-renders llama-server's answers for the static benchmark upstream.
// Usage: [N_CTX=262144] node render.mjs OUTDIR [CHUNKS]
// Writes OUTDIR/{json,sse}/{props,slots,health,v1/models,v1/chat/completions}: the JSON files are
// the bodies recorded in tests/fixtures/llama-server/; json/v1/chat/completions is a complete
// answer, sse/v1/chat/completions a stream of CHUNKS content chunks in llama-server's exact
// format (role chunk with content:null, one chunk per piece, finish chunk with delta {}, usage
// chunk with choices [], [DONE]).
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const fixtures = path.join(here, '..', '..', 'fixtures', 'llama-server');
const out = process.argv[2];
const nChunks = Number(process.argv[3] || 4000);
if (!out) {
  console.error('usage: node render.mjs OUTDIR [CHUNKS]');
  process.exit(2);
}
const fx = (n) => JSON.parse(fs.readFileSync(path.join(fixtures, n), 'utf8'));
const write = (rel, text) => {
  const f = path.join(out, rel);
  fs.mkdirSync(path.dirname(f), { recursive: true });
  fs.writeFileSync(f, text);
};

const id = 'chatcmpl-E3rXqPPRzcnwSRUCge0mLb1Jeit69eWd';
const base = { created: 1795499365, id, model: 'tiny', system_fingerprint: 'b10587-3f545becc', object: 'chat.completion.chunk' };
const chunk = (choices, extra = {}) => 'data: ' + JSON.stringify({ choices, ...base, ...extra }) + '\n\n';
// The pieces the recorded stream carried, cycled.
const pieces = fx('chat_stream_usage.json').events
  .map((e) => e.data && e.data.choices && e.data.choices[0] && e.data.choices[0].delta && e.data.choices[0].delta.content)
  .filter((c) => typeof c === 'string' && c.length > 0);
let sse = chunk([{ finish_reason: null, index: 0, delta: { role: 'assistant', content: null } }]);
for (let i = 0; i < nChunks; i++) {
  sse += chunk([{ finish_reason: null, index: 0, delta: { content: pieces[i % pieces.length] } }]);
}
sse += chunk([{ finish_reason: 'stop', index: 0, delta: {} }]);
sse += chunk([], {
  usage: { completion_tokens: nChunks, prompt_tokens: 101, total_tokens: 101 + nChunks, prompt_tokens_details: { cached_tokens: 100 } },
  timings: { cache_n: 100, prompt_n: 1, prompt_ms: 0.2, prompt_per_token_ms: 0.2, prompt_per_second: 5000, predicted_n: nChunks, predicted_ms: 100, predicted_per_token_ms: 0.01, predicted_per_second: 100000 },
});
sse += 'data: [DONE]\n\n';

// A per-slot window that takes Claude Code's ~80 KB requests (the recorded server had 2048,
// which the proxy's policies would rightly refuse before any upstream call).
const nCtx = Number(process.env.N_CTX || 262144);
const props = fx('props.json').body;
props.default_generation_settings.n_ctx = nCtx;
const slots = fx('slots.json').body.map((s) => ({ ...s, n_ctx: nCtx }));
const models = fx('v1_models.json').body;
for (const m of models.data) m.meta.n_ctx = nCtx;
for (const mode of ['json', 'sse']) {
  write(`${mode}/props`, JSON.stringify(props));
  write(`${mode}/slots`, JSON.stringify(slots));
  write(`${mode}/health`, JSON.stringify(fx('health.json').body));
  write(`${mode}/v1/models`, JSON.stringify(models));
}
write('json/v1/chat/completions', JSON.stringify(fx('chat_nonstream.json').body));
write('sse/v1/chat/completions', sse);
console.error(`rendered into ${out}: ${nChunks} stream chunks, ${sse.length} bytes`);
