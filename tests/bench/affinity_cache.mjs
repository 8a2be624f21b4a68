// affinity_cache.mjs - what session affinity is worth on a real llama-server tier: two replicas
// of the tiny model (tests/real/llama.mjs), one anthroxy fleet in front, SESSIONS multi-turn
// conversations replayed in interleaved, shuffled order, once with --route-balance affinity and
// once with round-robin (same sessions, same order, fresh servers each time). Prints, per mode,
// the share of prompt tokens the servers served from their prompt cache (cached_tokens /
// prompt_tokens as llama-server reports them, read back from the proxy's usage:
// cache_read_input_tokens / (input_tokens + cache_read_input_tokens)), the requests each replica
// got, and how many sessions ever changed replica.
//
//   LLAMA_SERVER=/path/llama-server LLAMA_MODEL=/path/tiny.gguf node tests/bench/affinity_cache.mjs
// Knobs: SESSIONS (6), TURNS (8), NP (slots per replica, 4), SEED (1), MODES (affinity,round-robin)
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { startLlama } from '../real/llama.mjs';
import { startProxy } from '../integration/helpers.mjs';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const ROOT = path.resolve(HERE, '..', '..');
process.env.ANTHROXY_BIN ||= path.join(ROOT, 'build', 'anthroxy');
const SESSIONS = Number(process.env.SESSIONS || 6);
const TURNS = Number(process.env.TURNS || 8);
const NP = Number(process.env.NP || 4);
const MODES = (process.env.MODES || 'affinity,round-robin').split(',');
const SLOT_CTX = 8192;

let seed = Number(process.env.SEED || 1);
const rnd = () => { seed = (seed * 1103515245 + 12345) % 2147483648; return seed / 2147483648; };
const WORDS = ['const', 'return', 'if', 'value', 'buffer', 'request', 'session', 'token', 'window',
  'for', 'let', 'error', 'count', 'policy', 'cache', 'replica', 'x', 'i', '0', '1'];
const text = (bytes, tag) => {
  let s = '';
  while (s.length < bytes) s += WORDS[Math.floor(rnd() * WORDS.length)] + ' ';
  return `${tag}\n${s}`;
};

// The same workload for every mode: a shared system prompt (as Claude Code's), per session a
// first message and one user turn of 300-700 bytes a round, in a shuffled order per round.
const SYSTEM = text(1500, 'You are a coding agent. Tools and rules follow.');
const plan = [];
for (let s = 0; s < SESSIONS; s++) plan.push({ id: `bench-${s}`, turns: Array.from({ length: TURNS }, (_, t) => text(300 + Math.floor(rnd() * 400), `session ${s} turn ${t}:`)) });
const order = [];
for (let t = 0; t < TURNS; t++) {
  const round = plan.map((_, s) => s);
  for (let i = round.length - 1; i > 0; i--) { const j = Math.floor(rnd() * (i + 1)); [round[i], round[j]] = [round[j], round[i]]; }
  for (const s of round) order.push([s, t]);
}

const chain = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'anthroxy-aff-')), 'chain.lua');
fs.writeFileSync(chain, 'return {}\n'); // no policies: routing alone decides

async function runMode(mode) {
  const llamas = [];
  for (let i = 0; i < 2; i++) {
    const l = await startLlama({ ctx: SLOT_CTX * NP, np: NP, extraArgs: ['--slot-prompt-similarity', '0.1'] });
    if (!l) process.exit(0); // LLAMA_SERVER unset: the reason is logged
    llamas.push(l);
  }
  const proxy = await startProxy({ args: [
    '--upstream', `r0=${llamas[0].url}/v1,kind=llama-server,models=tiny`,
    '--upstream', `r1=${llamas[1].url}/v1,kind=llama-server,models=tiny`,
    '--route-balance', mode, '--policies', chain, '--log-level', 'info',
  ] });
  const convo = plan.map(() => []);
  const placed = plan.map(() => new Set());
  let prompt = 0, cached = 0, n = 0, warmPrompt = 0, warmCached = 0;
  const t0 = Date.now();
  try {
    for (const [s, t] of order) {
      convo[s].push({ role: 'user', content: plan[s].turns[t] });
      const res = await fetch(`${proxy.url}/v1/messages`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', 'x-claude-code-session-id': plan[s].id },
        body: JSON.stringify({ model: 'tiny', max_tokens: 24, system: SYSTEM, messages: convo[s], temperature: 0 }),
      });
      const j = await res.json();
      if (res.status !== 200) throw new Error(`${mode} session ${s} turn ${t}: ${res.status} ${JSON.stringify(j).slice(0, 300)}`);
      const reply = j.content.filter((b) => b.type === 'text').map((b) => b.text).join('') || '.';
      convo[s].push({ role: 'assistant', content: reply });
      const c = j.usage.cache_read_input_tokens || 0;
      const p = j.usage.input_tokens + c;
      prompt += p; cached += c; n++;
      if (t > 0) { warmPrompt += p; warmCached += c; }
    }
  } finally {
    await proxy.stop();
    // the summary lines, complete once the proxy has exited: which replica served each turn
    for (const l of proxy.log().split('\n')) {
      const m = /messages model=.* session=(bench-\d+) .* upstream=(r\d) /.exec(l);
      if (m) placed[Number(m[1].slice(6))].add(m[2]);
    }
    const per = ['r0', 'r1'].map((r) => (proxy.log().match(new RegExp(`upstream=${r} `, 'g')) || []).length);
    for (const l of llamas) await l.stop();
    return { mode, n, prompt, cached, warmPrompt, warmCached, per, moved: placed.filter((p) => p.size > 1).length, ms: Date.now() - t0 };
  }
}

console.log(`affinity_cache: 2 llama-server replicas (-np ${NP}, ${SLOT_CTX} tokens a slot), ${SESSIONS} sessions x ${TURNS} turns, shuffled rounds`);
console.log('mode          requests  prompt_tokens  cached_tokens  cached%  cached%(turns>1)  r0/r1  sessions_moved  wall_ms');
for (const mode of MODES) {
  const r = await runMode(mode);
  console.log(`${mode.padEnd(13)} ${String(r.n).padStart(8)}  ${String(r.prompt).padStart(13)}  ${String(r.cached).padStart(13)}  ` +
    `${(100 * r.cached / r.prompt).toFixed(1).padStart(6)}%  ${(100 * r.warmCached / r.warmPrompt).toFixed(1).padStart(15)}%  ` +
    `${r.per.join('/').padStart(5)}  ${String(r.moved).padStart(14)}  ${String(r.ms).padStart(7)}`);
}
