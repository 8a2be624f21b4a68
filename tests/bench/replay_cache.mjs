// replay_cache.mjs - how much of each prompt the upstream serves from its prompt cache over a
// 30-turn Claude-Code-like session through anthroxy (its default chain). The session grows
// from Claude Code 2.1.332's recorded first request (its system prompt, tools and first user
// message) by one tool call a turn, each answered with a tool result of a realistic size
// (0.5k-10k tokens, unique text). Prints per turn prompt_tokens, cached_tokens and whether the
// proxy pruned, then totals: the share of prompt tokens served from cache and the number of
// full re-processes (a turn after the first with less than half its prompt cached).
//
//   node tests/bench/replay_cache.mjs                     # against the mock (prefix cache)
//   ANTHROXY_BIN=/work/main/build-test/anthroxy node tests/bench/replay_cache.mjs   # "before"
//   LLAMA_URL=http://127.0.0.1:8080 node tests/bench/replay_cache.mjs            # real server
// Knobs: TURNS (30), NCTX (98304, mock only), BPT (mock bytes per token, 4), SEED (1).
// Against a real llama-server the figures come from the proxy's usage (cache_read_input_tokens)
// and the window from the server itself; the text is synthetic, so any model will do.
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { startMock } from '../integration/mock-llama.mjs';
import { startProxy, waitUpstreamProbed } from '../integration/helpers.mjs';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const ROOT = path.resolve(HERE, '..', '..');
process.env.ANTHROXY_BIN ||= path.join(ROOT, 'build-test', 'anthroxy');
const TURNS = Number(process.env.TURNS || 30);
const NCTX = Number(process.env.NCTX || 98304);
const BPT = Number(process.env.BPT || 4);
const LLAMA_URL = process.env.LLAMA_URL || '';

const first = JSON.parse(fs.readFileSync(path.join(ROOT, 'tests', 'fixtures', 'claude-code', '2.1.332', 'first-turn.json'), 'utf8'));
const headers = JSON.parse(fs.readFileSync(path.join(ROOT, 'tests', 'fixtures', 'claude-code', '2.1.332', 'request-headers.json'), 'utf8')).headers;

// Deterministic pseudo-random text: source-code-like lines, unique per turn.
let seed = Number(process.env.SEED || 1);
const rnd = () => { seed = (seed * 1103515245 + 12345) % 2147483648; return seed / 2147483648; };
const WORDS = ['const', 'return', 'if', 'value', 'buffer', 'request', 'session', 'token', 'window', 'for', 'let', 'error', 'count', 'policy', 'prune', 'cache', '=', '(', ')', '{', '}', ';', '+', 'x', 'i', '0', '1'];
function fileText(tokens, turn) {
  const lines = [];
  let bytes = 0;
  for (let n = 1; bytes < tokens * 4; n++) {
    const w = Array.from({ length: 4 + Math.floor(rnd() * 8) }, () => WORDS[Math.floor(rnd() * WORDS.length)]).join(' ');
    const l = `${String(n).padStart(5)}\t${w} // t${turn}`;
    lines.push(l);
    bytes += l.length + 1;
  }
  return lines.join('\n');
}
const SIZES = [600, 2500, 900, 6000, 1500, 3500, 800, 10000, 2000, 1200, 4500, 700];

const mock = LLAMA_URL ? null : await startMock({ nCtx: NCTX, bytesPerToken: BPT, prefixCache: true, totalSlots: 1 });
mock?.script(() => ({ text: 'Next step.', completionTokens: 20 }));
const upstream = LLAMA_URL ? LLAMA_URL.replace(/\/+$/, '') + (/\/v1$/.test(LLAMA_URL) ? '' : '/v1') : mock.base;
const proxy = await startProxy({ upstream, args: ['--policy-set', 'max_tokens.floor=64'] });
await waitUpstreamProbed(proxy);

const body = { ...first, stream: false, max_tokens: 64 };
delete body.context_management;
body.messages = JSON.parse(JSON.stringify(first.messages));
const sendHeaders = {
  'content-type': 'application/json', 'anthropic-version': '2023-06-01', 'x-api-key': 'dummy',
  'user-agent': headers['user-agent'], 'anthropic-beta': headers['anthropic-beta'],
  'x-claude-code-session-id': `replay-${Date.now()}`,
};
const rows = [];
let totalPrompt = 0, totalCached = 0, full = 0, retries = 0;
console.log(`replay: ${TURNS} turns, ${LLAMA_URL ? `llama-server ${LLAMA_URL}` : `mock n_ctx ${NCTX}, ${BPT} bytes/token`}, proxy ${process.env.ANTHROXY_BIN}`);
console.log('turn  prompt_tokens  cached_tokens  cached%  pruned');
for (let t = 1; t <= TURNS; t++) {
  const before = mock ? mock.chats().length : 0;
  const res = await fetch(`${proxy.url}/v1/messages`, { method: 'POST', headers: sendHeaders, body: JSON.stringify(body) });
  const j = await res.json();
  if (res.status !== 200) { console.log(`turn ${t}: ${res.status} ${JSON.stringify(j).slice(0, 200)}`); break; }
  let prompt, cached, pruned;
  if (mock) {
    const sent = mock.chats().slice(before);
    retries += Math.max(sent.length - 1, 0);
    const last = sent[sent.length - 1];
    prompt = sent.reduce((a, r) => a + (r.usage?.prompt_tokens ?? r.promptTokens), 0);
    cached = sent.reduce((a, r) => a + (r.usage?.prompt_tokens_details?.cached_tokens ?? 0), 0);
    pruned = /removed by the proxy|anthroxy: context pruned/.test(JSON.stringify(last.body.messages)) ||
      last.body.messages.filter((m) => m.role === 'tool').length < t - 1;
  } else {
    cached = j.usage.cache_read_input_tokens || 0;
    prompt = (j.usage.input_tokens || 0) + cached;
    pruned = /pruned:/.test(proxy.log().split('\n').slice(-20).join('\n'));
  }
  totalPrompt += prompt;
  totalCached += cached;
  if (t > 1 && cached < prompt / 2) full++;
  rows.push({ t, prompt, cached, pruned });
  console.log(`${String(t).padStart(4)}  ${String(prompt).padStart(13)}  ${String(cached).padStart(13)}  ${(100 * cached / prompt).toFixed(1).padStart(6)}%  ${pruned ? 'yes' : ''}`);
  // The next turn: the assistant's tool call and its result, as Claude Code would send them.
  const id = `toolu_${String(t).padStart(4, '0')}replay`;
  body.messages.push({ role: 'assistant', content: [{ type: 'text', text: `Reading part ${t}.` },
    { type: 'tool_use', id, name: 'Read', input: { file_path: `/src/file${t}.c` } }] });
  body.messages.push({ role: 'user', content: [{ type: 'tool_result', tool_use_id: id,
    content: fileText(SIZES[(t - 1) % SIZES.length], t) }] });
}
console.log(`total: ${totalPrompt} prompt tokens, ${totalCached} from cache (${(100 * totalCached / totalPrompt).toFixed(1)} %), ` +
  `${full} full re-processes, ${rows.filter((r) => r.pruned).length} pruned turns, ${retries} overflow retries`);
await proxy.stop();
await mock?.close();
