#!/usr/bin/env node
// make-tiny-gguf.mjs - writes the tiny test model for the real-llama-server tier (tests/real/).
//
//   node tests/real/make-tiny-gguf.mjs OUT.gguf [--ctx N] [--seed N]
//
// A valid GGUF v3 file for llama.cpp's `llama` architecture: n_embd 64, 2 layers, 4 heads (2 KV
// heads), n_ff 128, context_length 131072 by default, all F32 weights from a fixed-seed PRNG, so
// the same arguments always give the same bytes. Its tokenizer is byte-level BPE
// (`gpt2` model, `qwen2` pre-tokenizer): the 256 bytes in GPT-2's byte-to-unicode mapping (id =
// byte value), 49 merges, and Qwen2.5's special tokens, 316 tokens in all; its chat template is
// Qwen2.5's. The text it generates is meaningless. The weights only shape two things: the
// end-of-turn token <|im_end|> gets a logit bias so replies end on their own after a few dozen
// tokens (finish_reason "stop"), and the other special tokens and all bytes but printable ASCII and
// "\n" are suppressed (so the text is valid UTF-8).
// No dependencies: Node.js 20 only.
import fs from 'node:fs';

// ---- arguments --------------------------------------------------------------------------------
const argv = process.argv.slice(2);
let out = null;
let ctxLen = 131072;
let seed = 20260801;
for (let i = 0; i < argv.length; i++) {
  const a = argv[i];
  if (a === '--ctx') ctxLen = Number(argv[++i]);
  else if (a === '--seed') seed = Number(argv[++i]);
  else if (a === '-h' || a === '--help') { out = null; break; }
  else if (!out) out = a;
  else { console.error(`unexpected argument: ${a}`); process.exit(2); }
}
if (!out || !Number.isInteger(ctxLen) || ctxLen < 16 || !Number.isInteger(seed)) {
  console.error('usage: node make-tiny-gguf.mjs OUT.gguf [--ctx N (default 131072)] [--seed N]');
  process.exit(2);
}

// ---- model shape ------------------------------------------------------------------------------
const N_EMBD = 64;
const N_LAYER = 2;
const N_HEAD = 4;
const N_HEAD_KV = 2;
const HEAD_DIM = N_EMBD / N_HEAD; // 16
const N_FF = 128;
const RMS_EPS = 1e-6;
const ROPE_BASE = 1000000;
const ALIGN = 32;

// ---- tokenizer --------------------------------------------------------------------------------
// GPT-2's bytes_to_unicode(): printable bytes map to themselves, the rest to U+0100 onwards.
function byteToUnicode() {
  const bs = [];
  for (let b = 0x21; b <= 0x7e; b++) bs.push(b);
  for (let b = 0xa1; b <= 0xac; b++) bs.push(b);
  for (let b = 0xae; b <= 0xff; b++) bs.push(b);
  const cs = bs.slice();
  let n = 0;
  for (let b = 0; b < 256; b++) {
    if (!bs.includes(b)) { bs.push(b); cs.push(256 + n); n++; }
  }
  const map = new Array(256);
  bs.forEach((b, i) => { map[b] = String.fromCodePoint(cs[i]); });
  return map;
}
const B2U = byteToUnicode();
const tok = (s) => [...Buffer.from(s, 'utf8')].map((b) => B2U[b]).join('');

// Merges in rank order; each adds the token first+second (ids 256, 257, ...).
const MERGES = [
  [' ', 't'], [' ', 'a'], ['h', 'e'], ['i', 'n'], ['r', 'e'], ['o', 'n'], [' t', 'he'], ['e', 'r'],
  [' ', 's'], ['o', 'r'], ['a', 't'], ['e', 'n'], [' ', 'w'], ['e', 's'], ['i', 's'], [' ', 'o'],
  ['i', 't'], [' ', 'c'], ['a', 'l'], ['a', 'n'], [' ', 'b'], [' ', 'f'], [' ', 'p'], ['in', 'g'],
  ['e', 'd'], ['o', 'u'], [' ', 'm'], ['a', 'r'], [' ', 'in'], [' ', 'd'], ['i', 'c'], [' ', 'h'],
  ['l', 'e'], [' o', 'f'], [' t', 'o'], ['n', 'd'], [' a', 'nd'], ['a', 's'], ['\n', '\n'],
  [' ', ' '], ['  ', '  '], ['"', ':'], [' ', '"'], ['{', '"'], ['  ', ' '], ['m', 'e'],
  [' ', 'n'], ['s', 't'], [' ', 'l'],
].map(([a, b]) => [tok(a), tok(b)]);

const TYPE_NORMAL = 1;
const TYPE_CONTROL = 3;
const TYPE_USER_DEFINED = 4;
// Qwen2.5's added tokens: <|...|> are special (control); <tool_call> is a plain added token.
const SPECIALS = [
  ['<|endoftext|>', TYPE_CONTROL], ['<|im_start|>', TYPE_CONTROL], ['<|im_end|>', TYPE_CONTROL],
  ['<tool_call>', TYPE_USER_DEFINED], ['</tool_call>', TYPE_USER_DEFINED],
  ['<|fim_prefix|>', TYPE_CONTROL], ['<|fim_middle|>', TYPE_CONTROL], ['<|fim_suffix|>', TYPE_CONTROL],
  ['<|fim_pad|>', TYPE_CONTROL], ['<|repo_name|>', TYPE_CONTROL], ['<|file_sep|>', TYPE_CONTROL],
];

const tokens = [];
const types = [];
for (let b = 0; b < 256; b++) { tokens.push(B2U[b]); types.push(TYPE_NORMAL); }
for (const [a, b] of MERGES) {
  if (!tokens.includes(a) || !tokens.includes(b)) throw new Error(`merge of unknown token: ${a} ${b}`);
  if (tokens.includes(a + b)) throw new Error(`duplicate merge result: ${a + b}`);
  tokens.push(a + b); types.push(TYPE_NORMAL);
}
const specialId = {};
for (const [s, t] of SPECIALS) { specialId[s] = tokens.length; tokens.push(s); types.push(t); }
const N_VOCAB = tokens.length;
if (N_VOCAB !== 316) throw new Error(`vocabulary has ${N_VOCAB} tokens, expected 316`);
const BOS = specialId['<|endoftext|>'];
const EOS = specialId['<|im_end|>'];
const PAD = specialId['<|endoftext|>'];

// Qwen2.5-7B-Instruct's chat template (llama.cpp's models/templates/Qwen-Qwen2.5-7B-Instruct.jinja).
const CHAT_TEMPLATE = "{%- if tools %}\n    {{- '<|im_start|>system\\n' }}\n    {%- if messages[0]['role'] == 'system' %}\n        {{- messages[0]['content'] }}\n    {%- else %}\n        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}\n    {%- endif %}\n    {{- \"\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>\" }}\n    {%- for tool in tools %}\n        {{- \"\\n\" }}\n        {{- tool | tojson }}\n    {%- endfor %}\n    {{- \"\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\\"name\\\": <function-name>, \\\"arguments\\\": <args-json-object>}\\n</tool_call><|im_end|>\\n\" }}\n{%- else %}\n    {%- if messages[0]['role'] == 'system' %}\n        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n    {%- else %}\n        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}\n    {%- endif %}\n{%- endif %}\n{%- for message in messages %}\n    {%- if (message.role == \"user\") or (message.role == \"system\" and not loop.first) or (message.role == \"assistant\" and not message.tool_calls) %}\n        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n    {%- elif message.role == \"assistant\" %}\n        {{- '<|im_start|>' + message.role }}\n        {%- if message.content %}\n            {{- '\\n' + message.content }}\n        {%- endif %}\n        {%- for tool_call in message.tool_calls %}\n            {%- if tool_call.function is defined %}\n                {%- set tool_call = tool_call.function %}\n            {%- endif %}\n            {{- '\\n<tool_call>\\n{\"name\": \"' }}\n            {{- tool_call.name }}\n            {{- '\", \"arguments\": ' }}\n            {{- tool_call.arguments | tojson }}\n            {{- '}\\n</tool_call>' }}\n        {%- endfor %}\n        {{- '<|im_end|>\\n' }}\n    {%- elif message.role == \"tool\" %}\n        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != \"tool\") %}\n            {{- '<|im_start|>user' }}\n        {%- endif %}\n        {{- '\\n<tool_response>\\n' }}\n        {{- message.content }}\n        {{- '\\n</tool_response>' }}\n        {%- if loop.last or (messages[loop.index0 + 1].role != \"tool\") %}\n            {{- '<|im_end|>\\n' }}\n        {%- endif %}\n    {%- endif %}\n{%- endfor %}\n{%- if add_generation_prompt %}\n    {{- '<|im_start|>assistant\\n' }}\n{%- endif %}";

// ---- weights ----------------------------------------------------------------------------------
// mulberry32: a small deterministic PRNG; uniform(-a, a) values.
function prng(s) {
  let x = s >>> 0;
  return () => {
    x = (x + 0x6d2b79f5) >>> 0;
    let t = x;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
const rand = prng(seed);
const uniform = (a) => (rand() * 2 - 1) * a;

// Dimension 0 of the residual stream is a constant "bias channel": every token embedding has
// BIAS_C there, no layer reads it (column 0 of q/k/v/gate/up is zero) or writes it (row 0 of
// attn_output/ffn_down is zero), so after the final RMS norm it is a roughly constant input to
// output.weight, whose column 0 then works as a per-token logit bias.
const BIAS_C = 8;
const H0 = 5; // rough value of that channel after the final norm
const RESERVED = 1;
// Suppressed: bytes that are not printable ASCII (alone they make invalid UTF-8, which the
// server's output parser rejects with a 500) and all special tokens but <|im_end|>.
const SUPPRESS = -20;
const LOGIT_BIAS = new Map([[EOS, 1.0]]);
for (let b = 0; b < 256; b++) if ((b < 0x20 && b !== 0x0a) || b >= 0x7f) LOGIT_BIAS.set(b, SUPPRESS);
for (const [s] of SPECIALS) if (specialId[s] !== EOS) LOGIT_BIAS.set(specialId[s], SUPPRESS);

// ne = [ne0, ne1]: ne0 is the contiguous (input) dimension, as llama.cpp's create_tensor shapes.
// With zeroCols, columns below RESERVED stay zero (nothing reads the bias channel); with
// zeroRows, rows below RESERVED stay zero (nothing writes it).
function matrix(ne0, ne1, scale, { zeroCols = false, zeroRows = false } = {}) {
  const a = new Float32Array(ne0 * ne1);
  for (let r = 0; r < ne1; r++) {
    for (let c = 0; c < ne0; c++) {
      const v = uniform(scale);
      const keep = !(zeroCols && c < RESERVED) && !(zeroRows && r < RESERVED);
      a[r * ne0 + c] = keep ? v : 0;
    }
  }
  return a;
}
const ones = (n) => new Float32Array(n).fill(1);

const tensors = []; // { name, ne, data: Float32Array }
const add = (name, ne, data) => tensors.push({ name, ne, data });

const embd = matrix(N_EMBD, N_VOCAB, Math.sqrt(3), { zeroCols: true }); // std 1 per dimension
for (let t = 0; t < N_VOCAB; t++) embd[t * N_EMBD] = BIAS_C;
add('token_embd.weight', [N_EMBD, N_VOCAB], embd);

const nQ = HEAD_DIM * N_HEAD;
const nKV = HEAD_DIM * N_HEAD_KV;
for (let i = 0; i < N_LAYER; i++) {
  const p = `blk.${i}.`;
  const wq = matrix(N_EMBD, nQ, 0.3, { zeroCols: true });
  const wk = matrix(N_EMBD, nKV, 0.3, { zeroCols: true });
  const wv = matrix(N_EMBD, nKV, 0.3, { zeroCols: true });
  const wo = matrix(nQ, N_EMBD, 0.15, { zeroRows: true });
  add(p + 'attn_norm.weight', [N_EMBD], ones(N_EMBD));
  add(p + 'attn_q.weight', [N_EMBD, nQ], wq);
  add(p + 'attn_k.weight', [N_EMBD, nKV], wk);
  add(p + 'attn_v.weight', [N_EMBD, nKV], wv);
  add(p + 'attn_output.weight', [nQ, N_EMBD], wo);
  add(p + 'ffn_norm.weight', [N_EMBD], ones(N_EMBD));
  add(p + 'ffn_gate.weight', [N_EMBD, N_FF], matrix(N_EMBD, N_FF, 0.3, { zeroCols: true }));
  add(p + 'ffn_up.weight', [N_EMBD, N_FF], matrix(N_EMBD, N_FF, 0.3, { zeroCols: true }));
  add(p + 'ffn_down.weight', [N_FF, N_EMBD], matrix(N_FF, N_EMBD, 0.15, { zeroRows: true }));
}
add('output_norm.weight', [N_EMBD], ones(N_EMBD));
const outW = matrix(N_EMBD, N_VOCAB, 0.25, { zeroCols: true });
for (let t = 0; t < N_VOCAB; t++) outW[t * N_EMBD] = (LOGIT_BIAS.get(t) ?? 0) / H0;
add('output.weight', [N_EMBD, N_VOCAB], outW);

// ---- GGUF v3 writer ---------------------------------------------------------------------------
// Layout (ggml/src/gguf.cpp): "GGUF", u32 version, u64 n_tensors, u64 n_kv, the KV pairs, the
// tensor infos (name, u32 n_dims, u64 ne[], u32 ggml type, u64 offset in the data section), zero
// padding to general.alignment, then the tensor data, each tensor at an aligned offset.
const T = { U8: 0, I8: 1, U16: 2, I16: 3, U32: 4, I32: 5, F32: 6, BOOL: 7, STR: 8, ARR: 9, U64: 10, I64: 11, F64: 12 };
const GGML_TYPE_F32 = 0;
const LLAMA_FTYPE_ALL_F32 = 0;

const chunks = [];
let size = 0;
const push = (b) => { chunks.push(b); size += b.length; };
const u32 = (v) => { const b = Buffer.alloc(4); b.writeUInt32LE(v); push(b); };
const i32 = (v) => { const b = Buffer.alloc(4); b.writeInt32LE(v); push(b); };
const u64 = (v) => { const b = Buffer.alloc(8); b.writeBigUInt64LE(BigInt(v)); push(b); };
const f32 = (v) => { const b = Buffer.alloc(4); b.writeFloatLE(v); push(b); };
const str = (s) => { const b = Buffer.from(s, 'utf8'); u64(b.length); push(b); };
const pad = () => { const n = (ALIGN - (size % ALIGN)) % ALIGN; if (n) push(Buffer.alloc(n)); };

const kv = [];
const KV = (key, type, value, elemType) => kv.push({ key, type, value, elemType });
KV('general.architecture', T.STR, 'llama');
KV('general.name', T.STR, 'anthroxy-tiny');
KV('general.alignment', T.U32, ALIGN);
KV('general.file_type', T.U32, LLAMA_FTYPE_ALL_F32);
KV('llama.vocab_size', T.U32, N_VOCAB);
KV('llama.context_length', T.U32, ctxLen);
KV('llama.embedding_length', T.U32, N_EMBD);
KV('llama.block_count', T.U32, N_LAYER);
KV('llama.feed_forward_length', T.U32, N_FF);
KV('llama.attention.head_count', T.U32, N_HEAD);
KV('llama.attention.head_count_kv', T.U32, N_HEAD_KV);
KV('llama.rope.dimension_count', T.U32, HEAD_DIM);
KV('llama.rope.freq_base', T.F32, ROPE_BASE);
KV('llama.attention.layer_norm_rms_epsilon', T.F32, RMS_EPS);
KV('tokenizer.ggml.model', T.STR, 'gpt2');
KV('tokenizer.ggml.pre', T.STR, 'qwen2');
KV('tokenizer.ggml.tokens', T.ARR, tokens, T.STR);
KV('tokenizer.ggml.token_type', T.ARR, types, T.I32);
KV('tokenizer.ggml.merges', T.ARR, MERGES.map(([a, b]) => `${a} ${b}`), T.STR);
KV('tokenizer.ggml.bos_token_id', T.U32, BOS);
KV('tokenizer.ggml.eos_token_id', T.U32, EOS);
KV('tokenizer.ggml.padding_token_id', T.U32, PAD);
KV('tokenizer.ggml.add_bos_token', T.BOOL, false);
KV('tokenizer.chat_template', T.STR, CHAT_TEMPLATE);

function scalar(type, v) {
  switch (type) {
    case T.U32: return u32(v);
    case T.I32: return i32(v);
    case T.F32: return f32(v);
    case T.BOOL: return push(Buffer.from([v ? 1 : 0]));
    case T.STR: return str(v);
    default: throw new Error(`unsupported GGUF type ${type}`);
  }
}

push(Buffer.from('GGUF', 'ascii'));
u32(3);
u64(tensors.length);
u64(kv.length);
for (const { key, type, value, elemType } of kv) {
  str(key);
  u32(type);
  if (type === T.ARR) {
    u32(elemType);
    u64(value.length);
    for (const v of value) scalar(elemType, v);
  } else {
    scalar(type, value);
  }
}
let offset = 0;
for (const t of tensors) {
  str(t.name);
  u32(t.ne.length);
  for (const n of t.ne) u64(n);
  u32(GGML_TYPE_F32);
  u64(offset);
  t.offset = offset;
  offset += t.data.byteLength;
  offset += (ALIGN - (offset % ALIGN)) % ALIGN;
}
pad();
const dataStart = size;
for (const t of tensors) {
  const want = dataStart + t.offset;
  if (size < want) push(Buffer.alloc(want - size));
  push(Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength));
}
pad();

fs.writeFileSync(out, Buffer.concat(chunks, size));
const nParams = tensors.reduce((s, t) => s + t.data.length, 0);
console.log(`wrote ${out}: ${size} bytes, ${tensors.length} tensors, ${nParams} parameters, ` +
  `vocab ${N_VOCAB} (bos ${BOS}, eos ${EOS}), context_length ${ctxLen}, seed ${seed}`);
