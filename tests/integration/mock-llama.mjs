// mock-llama.mjs - a scripted mock of llama.cpp's llama-server for the integration tests.
//
// Answers in the exact shapes recorded in tests/fixtures/llama-server/ (see its README):
// chat completions (JSON and SSE), /props, /slots, /health, /v1/models, /tokenize,
// /apply-template and the server's own error bodies. Every request is recorded so tests can
// assert what the proxy sent upstream. Replies are chosen by a script function that looks at
// the request's content (its last message), never at call order.
//
//   const mock = await startMock({ nCtx: 8192 });
//   mock.script((req) => req.lastText.includes('weather') ? { toolCalls: [...] } : null);
//   ... mock.requests, mock.chats() ...
//   await mock.close();
//
// Run standalone (for trying the proxy by hand): node mock-llama.mjs [--port 8080] [--n-ctx N]

import http from 'node:http';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const HERE = path.dirname(fileURLToPath(import.meta.url));
export const FIXTURES = path.join(HERE, '..', 'fixtures');
const LLAMA_FIXTURES = path.join(FIXTURES, 'llama-server');

function fixtureBody(name) {
  return JSON.parse(fs.readFileSync(path.join(LLAMA_FIXTURES, name), 'utf8')).body;
}

const JSON_TYPE = 'application/json; charset=utf-8';
const FINGERPRINT = 'b10587-3f545becc';
const DEFAULT_SYSTEM = 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.';
const SPECIAL_TOKENS = { '<|endoftext|>': 256, '<|im_start|>': 306, '<|im_end|>': 307 };
const SPECIAL_RE = /(<\|endoftext\|>|<\|im_start\|>|<\|im_end\|>)/;
const ALNUM = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789';

/** 32 random alphanumerics: llama-server's id alphabet and length. */
export function alnum32() {
  const bytes = crypto.randomBytes(32);
  let s = '';
  for (const b of bytes) s += ALNUM[b % ALNUM.length];
  return s;
}

/** JSON as Python's json.dumps prints it (", " and ": "), as the Jinja tojson filter does. */
export function pyDumps(v) {
  if (v === null || typeof v !== 'object') return JSON.stringify(v);
  if (Array.isArray(v)) return '[' + v.map(pyDumps).join(', ') + ']';
  return '{' + Object.entries(v).map(([k, x]) => JSON.stringify(k) + ': ' + pyDumps(x)).join(', ') + '}';
}

/** Text of an OpenAI message content (string or parts); images become the media marker. */
function contentText(content, marker) {
  if (content == null) return '';
  if (typeof content === 'string') return content;
  if (!Array.isArray(content)) return JSON.stringify(content);
  return content.map((p) => {
    if (p && p.type === 'text') return p.text ?? '';
    if (p && (p.type === 'image_url' || p.type === 'input_image')) return marker;
    return '';
  }).join('');
}

/**
 * Renders messages (+ tools) the way Qwen2.5's chat template does (the fixture model's template),
 * with the generation prompt. Deterministic, so a count from /apply-template + /tokenize equals
 * the prompt_tokens the mock reports for the same request.
 */
export function renderPrompt(messages, tools, marker = '<__media__>') {
  let out = '';
  const msgs = Array.isArray(messages) ? messages : [];
  let first = 0;
  let system = DEFAULT_SYSTEM;
  if (msgs.length > 0 && msgs[0] && msgs[0].role === 'system') {
    system = contentText(msgs[0].content, marker);
    first = 1;
  }
  out += '<|im_start|>system\n' + system;
  if (Array.isArray(tools) && tools.length > 0) {
    out += '\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n' +
      'You are provided with function signatures within <tools></tools> XML tags:\n<tools>';
    for (const t of tools) out += '\n' + pyDumps(t);
    out += '\n</tools>\n\nFor each function call, return a json object with function name and ' +
      'arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n' +
      '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>';
  }
  out += '<|im_end|>\n';
  for (let i = first; i < msgs.length; i++) {
    const m = msgs[i] || {};
    if (m.role === 'assistant') {
      out += '<|im_start|>assistant';
      const text = contentText(m.content, marker);
      if (text) out += '\n' + text;
      for (const tc of m.tool_calls || []) {
        const f = tc.function || tc;
        let args = f.arguments;
        if (typeof args === 'string') {
          try { args = JSON.parse(args); } catch { /* rendered as the string it is */ }
        }
        out += '\n<tool_call>\n{"name": "' + f.name + '", "arguments": ' + pyDumps(args) + '}\n</tool_call>';
      }
      out += '<|im_end|>\n';
    } else if (m.role === 'tool') {
      if (i === 0 || msgs[i - 1].role !== 'tool') out += '<|im_start|>user';
      out += '\n<tool_response>\n' + contentText(m.content, marker) + '\n</tool_response>';
      if (i === msgs.length - 1 || msgs[i + 1].role !== 'tool') out += '<|im_end|>\n';
    } else {
      out += '<|im_start|>' + m.role + '\n' + contentText(m.content, marker) + '<|im_end|>\n';
    }
  }
  return out + '<|im_start|>assistant\n';
}

/**
 * A deterministic tokenizer: special tokens are one token each, other text one token per
 * `bytesPerToken` UTF-8 bytes (1 = byte level, as the fixture's byte-level BPE mostly is).
 * Returns [{id, piece}].
 */
export function tokenize(text, bytesPerToken = 4) {
  const out = [];
  for (const part of String(text).split(SPECIAL_RE)) {
    if (part === '') continue;
    if (part in SPECIAL_TOKENS) {
      out.push({ id: SPECIAL_TOKENS[part], piece: part });
      continue;
    }
    const bytes = Buffer.from(part, 'utf8');
    for (let i = 0; i < bytes.length; i += bytesPerToken) {
      const chunk = bytes.subarray(i, i + bytesPerToken);
      const id = bytesPerToken === 1 ? chunk[0] : 320 + (chunk.reduce((h, b) => (h * 31 + b) >>> 0, 7) % 100000);
      out.push({ id, piece: chunk.toString('utf8') });
    }
  }
  return out;
}

/** Splits text into stream pieces of up to n code points (never inside a surrogate pair). */
export function pieces(text, n = 3) {
  const cps = Array.from(String(text));
  const out = [];
  for (let i = 0; i < cps.length; i += n) out.push(cps.slice(i, i + n).join(''));
  return out;
}

/** Text of the last message of an OpenAI request, for scripts that choose by content. */
function lastMessageText(body) {
  const msgs = body && Array.isArray(body.messages) ? body.messages : [];
  const last = msgs[msgs.length - 1];
  return last ? contentText(last.content, '<__media__>') : '';
}

function sleep(ms) {
  return new Promise((r) => setTimeout(r, ms));
}

/** llama-server's error body: {"error":{"code","message","type", ...extra}}. */
export function llamaError(code, message, type, extra = {}) {
  return { error: { code, message, type, ...extra } };
}

/**
 * Starts the mock on 127.0.0.1 (port 0 unless opts.port).
 * opts: model ('tiny'), models (ids listed at /v1/models; the first is the alias),
 * nCtx (per-slot window, 32768), totalSlots (2), bytesPerToken (4), cached (cached_tokens, 0),
 * prefixCache (false; true: cached_tokens is, as llama-server's prompt cache, the longest
 * common prefix in tokens of the prompt with the one its slot held, each slot keeping its last
 * prompt and a request going to the slot sharing most with it, else the least recently used),
 * loading (answer 503 everywhere), script (fn), defaultReply ({text}), endpoints ({props,
 * slots, tokenize, applyTemplate, health}: false answers 404, as vLLM or Ollama would),
 * flavor ('llama' | 'vllm' | 'ollama'): which server's own endpoints to imitate (below).
 *
 * flavor 'vllm' (vllm/entrypoints/openai/protocol.py): no llama-server endpoints; GET /health
 * is 200 with an empty body; /v1/models lists ModelCards {id, object, created, owned_by
 * "vllm", root, parent, max_model_len (= nCtx), permission[]}; unknown paths are FastAPI's
 * 404 {"detail":"Not Found"}.
 * flavor 'ollama' (ollama/ollama api/types.go): no llama-server endpoints; GET / is
 * "Ollama is running"; GET /api/tags {models:[{name, model, modified_at, size, digest,
 * details}]}; POST /api/show {model} -> {license, modelfile, parameters, template, details,
 * model_info {"general.architecture", "<arch>.context_length" (= nCtx), ...}, capabilities,
 * modified_at}; GET /api/version; /v1/models {object:"list", data:[{id, object, created,
 * owned_by:"library"}]}; unknown paths are a text/plain "404 page not found".
 */
export async function startMock(opts = {}) {
  const models = opts.models || [opts.model || 'tiny'];
  const state = {
    alias: models[0],
    nCtx: opts.nCtx ?? 32768,
    totalSlots: opts.totalSlots ?? 2,
    bytesPerToken: opts.bytesPerToken ?? 4,
    cached: opts.cached ?? 0,
    prefixCache: !!opts.prefixCache,
    slotPrompts: [],
    loading: !!opts.loading,
    script: opts.script || null,
    defaultReply: opts.defaultReply || { text: 'Hello from the mock.' },
    // llama-server's own endpoints; switch some off (404) to look like vLLM or Ollama.
    endpoints: { props: true, slots: true, tokenize: true, applyTemplate: true, health: true, ...(opts.endpoints || {}) },
    flavor: opts.flavor || 'llama',
    // llama-server started without --jinja: any request with `tools` is refused (500)
    noJinja: !!opts.noJinja,
  };
  if (state.flavor !== 'llama') {
    Object.assign(state.endpoints, { props: false, slots: false, tokenize: false, applyTemplate: false, health: false });
  }
  const props = fixtureBody('props.json');
  const slots = fixtureBody('slots.json');
  const modelsBody = fixtureBody('v1_models.json');
  const requests = [];
  const sockets = new Set();
  const waiters = [];

  const mock = {
    requests,
    get url() { return `http://127.0.0.1:${mock.port}`; },
    get base() { return `http://127.0.0.1:${mock.port}/v1`; },
    /** Chat completion requests received so far (parsed), oldest first. */
    chats() { return requests.filter((r) => r.path === '/v1/chat/completions' || r.path === '/chat/completions'); },
    lastChat() { const c = mock.chats(); return c[c.length - 1]; },
    script(fn) { state.script = fn; },
    setLoading(v) { state.loading = !!v; },
    setNCtx(n) { state.nCtx = n; },
    setCached(n) { state.cached = n; },
    countTokens(text) { return tokenize(text, state.bytesPerToken).length; },
    promptTokens(body) { return tokenize(renderPrompt(body.messages, body.tools, props.media_marker), state.bytesPerToken).length; },
    reset() { requests.length = 0; },
    /** Resolves with the first recorded request (past or future) matching pred. */
    waitFor(pred, timeoutMs = 5000) {
      const hit = requests.find(pred);
      if (hit) return Promise.resolve(hit);
      return new Promise((resolve, reject) => {
        const w = { pred, resolve, timer: null };
        w.timer = setTimeout(() => {
          waiters.splice(waiters.indexOf(w), 1);
          reject(new Error(`mock: no matching request within ${timeoutMs} ms`));
        }, timeoutMs);
        waiters.push(w);
      });
    },
    close() {
      for (const s of sockets) s.destroy();
      return new Promise((r) => server.close(() => r()));
    },
  };

  function record(rec) {
    requests.push(rec);
    for (const w of [...waiters]) {
      if (w.pred(rec)) {
        clearTimeout(w.timer);
        waiters.splice(waiters.indexOf(w), 1);
        w.resolve(rec);
      }
    }
  }

  function sendJson(res, status, body, headers = {}) {
    const data = typeof body === 'string' ? body : JSON.stringify(body);
    res.writeHead(status, { 'Content-Type': JSON_TYPE, 'Content-Length': Buffer.byteLength(data), ...headers });
    res.end(data);
  }

  const server = http.createServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      const raw = Buffer.concat(chunks).toString('utf8');
      const u = new URL(req.url, 'http://x');
      const rec = {
        method: req.method,
        path: u.pathname,
        query: Object.fromEntries(u.searchParams),
        headers: req.headers,
        raw,
        body: undefined,
        time: Date.now(),
        clientClosed: false, // the client closed its connection before the answer ended
        closedAt: null,
        finished: false,
      };
      if (raw.length > 0) {
        try { rec.body = JSON.parse(raw); } catch { rec.bodyError = true; }
      }
      // Set before anyone waiting on the request sees it: scripts and tests pick by content.
      rec.lastText = lastMessageText(rec.body);
      if (rec.body && Array.isArray(rec.body.messages)) {
        const msgs = rec.body.messages;
        rec.lastRole = msgs.length ? msgs[msgs.length - 1].role : undefined;
        rec.promptTokens = mock.promptTokens(rec.body);
      }
      res.on('close', () => {
        if (!res.writableFinished) {
          rec.clientClosed = true;
          rec.closedAt = Date.now();
        }
      });
      res.on('finish', () => { rec.finished = true; });
      record(rec);
      route(rec, req, res).catch((e) => {
        if (!res.headersSent) sendJson(res, 500, llamaError(500, String(e && e.message), 'server_error'));
        else res.destroy();
      });
    });
  });
  server.on('connection', (s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  // No timeouts: a silent-upstream scenario must be able to stay silent.
  server.requestTimeout = 0;
  server.headersTimeout = 0;
  server.keepAliveTimeout = 60000;

  async function route(rec, req, res) {
    const p = rec.path;
    if (state.loading) {
      return sendJson(res, 503, llamaError(503, 'Loading model', 'unavailable_error'));
    }
    if (req.method === 'GET' && (p === '/health' || p === '/v1/health') && state.endpoints.health) {
      return sendJson(res, 200, { status: 'ok' });
    }
    if (req.method === 'GET' && p === '/props' && state.endpoints.props) {
      const b = structuredClone(props);
      b.default_generation_settings.n_ctx = state.nCtx;
      b.total_slots = state.totalSlots;
      b.model_alias = state.alias;
      return sendJson(res, 200, b);
    }
    if (req.method === 'GET' && p === '/slots' && state.endpoints.slots) {
      const b = [];
      for (let i = 0; i < state.totalSlots; i++) {
        const s = structuredClone(slots[i % slots.length]);
        s.id = i;
        s.n_ctx = state.nCtx;
        b.push(s);
      }
      return sendJson(res, 200, b);
    }
    if (state.flavor === 'vllm') {
      const r = vllmRoute(rec, req, res);
      if (r !== undefined) return r;
    } else if (state.flavor === 'ollama') {
      const r = ollamaRoute(rec, req, res);
      if (r !== undefined) return r;
    }
    if (req.method === 'GET' && (p === '/v1/models' || p === '/models')) {
      const b = structuredClone(modelsBody);
      const tmplM = b.models[0];
      const tmplD = b.data[0];
      b.models = models.map((id) => ({ ...structuredClone(tmplM), name: id, model: id }));
      b.data = models.map((id) => {
        const d = structuredClone(tmplD);
        d.id = id;
        d.aliases = [id];
        d.meta.n_ctx = state.nCtx;
        return d;
      });
      return sendJson(res, 200, b);
    }
    if (req.method === 'POST' && p === '/tokenize' && state.endpoints.tokenize) {
      if (rec.bodyError) return badJson(res, rec.raw);
      const toks = tokenize(rec.body.content ?? '', state.bytesPerToken);
      return sendJson(res, 200, { tokens: rec.body.with_pieces ? toks : toks.map((t) => t.id) });
    }
    if (req.method === 'POST' && p === '/apply-template' && state.endpoints.applyTemplate) {
      if (rec.bodyError) return badJson(res, rec.raw);
      if (!Array.isArray(rec.body.messages)) {
        return sendJson(res, 400, llamaError(400, "'messages' is required", 'invalid_request_error'));
      }
      return sendJson(res, 200, { prompt: renderPrompt(rec.body.messages, rec.body.tools, props.media_marker) });
    }
    if (req.method === 'POST' && (p === '/v1/chat/completions' || p === '/chat/completions')) {
      return chat(rec, req, res);
    }
    if (state.flavor === 'vllm') return sendJson(res, 404, { detail: 'Not Found' }, { 'Content-Type': 'application/json' });
    if (state.flavor === 'ollama') {
      res.writeHead(404, { 'Content-Type': 'text/plain', 'Content-Length': 18 });
      return res.end('404 page not found');
    }
    return sendJson(res, 404, { error: { message: 'File Not Found', type: 'not_found_error', code: 404 } });
  }

  // vLLM's own endpoints; undefined: not one of them.
  function vllmRoute(rec, req, res) {
    const p = rec.path;
    if (req.method === 'GET' && p === '/health') {
      res.writeHead(200, { 'Content-Length': 0 });
      return res.end();
    }
    if (req.method === 'GET' && (p === '/v1/models' || p === '/models')) {
      const created = Math.floor(Date.now() / 1000);
      return sendJson(res, 200, {
        object: 'list',
        data: models.map((id) => ({
          id, object: 'model', created, owned_by: 'vllm', root: id, parent: null, max_model_len: state.nCtx,
          permission: [{
            id: 'modelperm-' + crypto.randomUUID().replace(/-/g, ''), object: 'model_permission', created,
            allow_create_engine: false, allow_sampling: true, allow_logprobs: true, allow_search_indices: false,
            allow_view: true, allow_fine_tuning: false, organization: '*', group: null, is_blocking: false,
          }],
        })),
      }, { 'Content-Type': 'application/json' });
    }
    return undefined;
  }

  // Ollama's own endpoints; undefined: not one of them.
  function ollamaDetails() {
    return { parent_model: '', format: 'gguf', family: 'qwen2', families: ['qwen2'], parameter_size: '7.6B', quantization_level: 'Q4_K_M' };
  }
  function ollamaRoute(rec, req, res) {
    const p = rec.path;
    const modified = '2026-08-01T10:00:00.000000000Z';
    if ((req.method === 'GET' || req.method === 'HEAD') && p === '/') {
      res.writeHead(200, { 'Content-Type': 'text/plain; charset=utf-8', 'Content-Length': 17 });
      return res.end('Ollama is running');
    }
    if (req.method === 'GET' && p === '/api/version') return sendJson(res, 200, { version: '0.12.3' }, { 'Content-Type': 'application/json; charset=utf-8' });
    if (req.method === 'GET' && p === '/api/tags') {
      return sendJson(res, 200, {
        models: models.map((id) => ({ name: id, model: id, modified_at: modified, size: 4683087332, digest: crypto.createHash('sha256').update(id).digest('hex'), details: ollamaDetails() })),
      }, { 'Content-Type': 'application/json; charset=utf-8' });
    }
    if (req.method === 'POST' && p === '/api/show') {
      const name = rec.body && (rec.body.model || rec.body.name);
      if (!models.includes(name)) return sendJson(res, 404, { error: `model '${name}' not found` }, { 'Content-Type': 'application/json; charset=utf-8' });
      return sendJson(res, 200, {
        license: 'Apache License 2.0',
        modelfile: `# Modelfile generated by "ollama show"\nFROM ${name}\n`,
        parameters: 'stop                           "<|im_start|>"\nstop                           "<|im_end|>"',
        template: '{{- if .Messages }}...{{ end }}',
        details: ollamaDetails(),
        model_info: {
          'general.architecture': 'qwen2', 'general.file_type': 15, 'general.parameter_count': 7615616512,
          'general.quantization_version': 2, 'qwen2.attention.head_count': 28, 'qwen2.attention.head_count_kv': 4,
          'qwen2.block_count': 28, 'qwen2.context_length': state.nCtx, 'qwen2.embedding_length': 3584,
          'qwen2.feed_forward_length': 18944, 'tokenizer.ggml.model': 'gpt2',
        },
        capabilities: ['completion', 'tools'],
        modified_at: modified,
      }, { 'Content-Type': 'application/json; charset=utf-8' });
    }
    if (req.method === 'GET' && (p === '/v1/models' || p === '/models')) {
      const created = Math.floor(Date.now() / 1000);
      return sendJson(res, 200, { object: 'list', data: models.map((id) => ({ id, object: 'model', created, owned_by: 'library' })) },
        { 'Content-Type': 'application/json' });
    }
    return undefined;
  }

  function badJson(res, raw) {
    const lastRead = raw.slice(0, 3);
    return sendJson(res, 500, llamaError(500,
      `[json.exception.parse_error.101] parse error at line 1, column 3: syntax error while parsing object key - invalid literal; last read: '${lastRead}'; expected string literal`,
      'server_error'));
  }

  /** The prompt-cache hit of this prompt (tokens), updating the slots (prefixCache). */
  function slotCache(body) {
    const ids = tokenize(renderPrompt(body.messages, body.tools, props.media_marker), state.bytesPerToken).map((t) => t.id);
    const slots = state.slotPrompts;
    let best = -1;
    let bestN = 0;
    for (let k = 0; k < slots.length; k++) {
      const old = slots[k].ids;
      let n = 0;
      while (n < old.length && n < ids.length && old[n] === ids[n]) n++;
      if (n > bestN) { best = k; bestN = n; }
    }
    if (best < 0) {
      if (slots.length < Math.max(state.totalSlots, 1)) best = slots.push({ ids, used: 0 }) - 1;
      else best = slots.reduce((lru, sl, k) => (sl.used < slots[lru].used ? k : lru), 0);
    }
    slots[best].ids = ids;
    slots[best].used = Date.now() + Math.random();
    return bestN;
  }

  async function chat(rec, req, res) {
    if (rec.bodyError) return badJson(res, rec.raw);
    const body = rec.body;
    if (!body || !Array.isArray(body.messages)) {
      return sendJson(res, 400, llamaError(400, "'messages' is required", 'invalid_request_error'));
    }
    if (state.noJinja && Array.isArray(body.tools) && body.tools.length > 0) {
      return sendJson(res, 500, llamaError(500, 'tools param requires --jinja flag', 'server_error'));
    }

    let reply = null;
    if (state.script) reply = await state.script(rec);
    if (!reply) reply = state.defaultReply;
    rec.reply = reply;
    // reply.respond(res, rec): the script writes the whole answer itself (any status, headers
    // and bytes: ill-formed UTF-8, NULs, echoed headers).
    if (reply.respond) return reply.respond(res, rec);

    if (reply.firstByteDelayMs) await sleep(reply.firstByteDelayMs);
    if (reply.silent) return; // never answers; the client's close is recorded
    // Fault modes (tests/integration/faults.test.mjs): a reset before any byte, or a raw
    // answer written by the test: raw(res, rec) gets the response and writes what it likes
    // (HTML with 200, invalid UTF-8, huge lines, endless or byte-by-byte streams).
    if (reply.resetBeforeHeaders) { rec.reset = true; res.socket.destroy(); return; }
    if (reply.raw) return reply.raw(res, rec);
    if (rec.clientClosed) return;

    if (reply.status && reply.status !== 200) {
      return sendJson(res, reply.status, reply.body ?? llamaError(reply.status, 'mock error', 'server_error'),
        reply.headers || {});
    }
    // The overflow check is prompt tokens >= per-slot n_ctx, answered as plain JSON even for
    // stream:true (the first result is an error).
    const nPrompt = reply.promptTokens ?? rec.promptTokens;
    if (nPrompt >= state.nCtx && !reply.ignoreContext) {
      return sendJson(res, 400, llamaError(400,
        `request (${nPrompt} tokens) exceeds the available context size (${state.nCtx} tokens), try increasing it`,
        'exceed_context_size_error', { n_prompt_tokens: nPrompt, n_ctx: state.nCtx }));
    }
    const gen = generate(body, reply);
    let cacheHit = reply.cached ?? state.cached;
    if (state.prefixCache && reply.cached === undefined) cacheHit = slotCache(body);
    const cached = Math.min(cacheHit, Math.max(nPrompt - 1, 0));
    const usage = {
      completion_tokens: reply.completionTokens ?? gen.nTokens,
      prompt_tokens: nPrompt,
      total_tokens: nPrompt + (reply.completionTokens ?? gen.nTokens),
      prompt_tokens_details: { cached_tokens: cached },
    };
    rec.usage = usage;
    const timings = {
      cache_n: cached, prompt_n: nPrompt - cached, prompt_ms: 1.5, prompt_per_token_ms: 0.1,
      prompt_per_second: 10000, predicted_n: usage.completion_tokens, predicted_ms: 2.5,
      predicted_per_token_ms: 0.2, predicted_per_second: 5000,
    };
    const id = 'chatcmpl-' + alnum32();
    const created = Math.floor(Date.now() / 1000);
    if (body.stream) return streamAnswer(rec, res, reply, gen, { id, created, usage, timings });

    const message = { role: 'assistant', content: gen.text };
    if (gen.reasoning) message.reasoning_content = gen.reasoning;
    if (gen.toolCalls.length > 0) {
      message.tool_calls = gen.toolCalls.map((tc) => ({
        type: 'function', function: { name: tc.name, arguments: tc.arguments }, id: tc.id,
      }));
    }
    const answer = {
      choices: [{ finish_reason: gen.finish, index: 0, message }],
      created, model: state.alias, system_fingerprint: FINGERPRINT, object: 'chat.completion',
      usage, id, timings,
    };
    if (reply.chunkDelayMs) await sleep(reply.chunkDelayMs);
    return sendJson(res, 200, answer);
  }

  /**
   * Works out what the "model" generates for a reply: text, reasoning, tool calls, each as
   * stream pieces, honouring the request's stop strings and max_tokens as llama-server does.
   */
  function generate(body, reply) {
    const n = reply.pieceSize || 3;
    let finish = reply.finish || null;
    const reasoningPieces = reply.reasoning ? (reply.reasoningPieces || pieces(reply.reasoning, n)) : [];
    let text = reply.text ?? '';
    let stopped = false;
    const stops = body.stop == null ? [] : Array.isArray(body.stop) ? body.stop : [body.stop];
    for (const s of stops) {
      const at = s ? text.indexOf(s) : -1;
      if (at >= 0) { text = text.slice(0, at); stopped = true; }
    }
    let textPieces = reply.pieces && !stopped ? reply.pieces : pieces(text, n);
    if (reply.repeat) textPieces = new Array(reply.repeat.count).fill(reply.repeat.piece); // bulk, cheaply
    const toolCalls = (reply.toolCalls || []).map((tc) => {
      const args = typeof tc.arguments === 'string' ? tc.arguments : JSON.stringify(tc.arguments ?? tc.input ?? {});
      const rest = args.startsWith('{') ? args.slice(1) : args;
      return {
        id: tc.id || alnum32(), name: tc.name, arguments: args,
        pieces: [args.startsWith('{') ? '{' : '', ...pieces(rest, n)],
      };
    });
    if (stopped) toolCalls.length = 0;
    let nTokens = reasoningPieces.length + textPieces.length +
      toolCalls.reduce((a, tc) => a + tc.pieces.length, 0);
    const max = body.max_completion_tokens ?? body.max_tokens;
    if (typeof max === 'number' && max > 0 && nTokens > max && !reply.ignoreMaxTokens) {
      // Cut like the real server: whatever was generated up to max tokens, finish "length".
      let left = max;
      reasoningPieces.splice(Math.min(left, reasoningPieces.length));
      left -= reasoningPieces.length;
      textPieces = textPieces.slice(0, Math.max(left, 0));
      left -= textPieces.length;
      for (const tc of toolCalls) {
        tc.pieces = tc.pieces.slice(0, Math.max(left, 0));
        left -= tc.pieces.length;
        tc.arguments = tc.pieces.join('');
      }
      while (toolCalls.length && toolCalls[toolCalls.length - 1].pieces.length === 0) toolCalls.pop();
      nTokens = max;
      finish = 'length';
    }
    if (!finish) finish = toolCalls.length > 0 ? 'tool_calls' : 'stop';
    return {
      reasoning: reasoningPieces.join(''),
      reasoningPieces,
      text: textPieces.join(''),
      textPieces,
      toolCalls,
      finish,
      nTokens,
    };
  }

  async function streamAnswer(rec, res, reply, gen, { id, created, usage, timings }) {
    const includeUsage = !!(rec.body.stream_options && rec.body.stream_options.include_usage);
    const delay = reply.chunkDelayMs || 0;
    const chunk = (choices, extra = {}) => ({
      choices, created, id, model: state.alias, system_fingerprint: FINGERPRINT,
      object: 'chat.completion.chunk', ...extra,
    });
    const delta = (d) => chunk([{ finish_reason: null, index: 0, delta: d }]);
    const events = [delta({ role: 'assistant', content: null })];
    for (const p of gen.reasoningPieces) events.push(delta({ reasoning_content: p }));
    for (const p of gen.textPieces) events.push(delta({ content: p }));
    gen.toolCalls.forEach((tc, index) => {
      tc.pieces.forEach((p, k) => {
        if (k === 0) {
          events.push(delta({ tool_calls: [{ index, id: tc.id, type: 'function', function: { name: tc.name, arguments: p } }] }));
        } else {
          events.push(delta({ tool_calls: [{ index, function: { arguments: p } }] }));
        }
      });
    });
    if (includeUsage) {
      events.push(chunk([{ finish_reason: gen.finish, index: 0, delta: {} }]));
      events.push(chunk([], { usage, timings }));
    } else {
      events.push(chunk([{ finish_reason: gen.finish, index: 0, delta: {} }], { timings }));
    }
    if (reply.streamError) {
      // An error inside the stream, as llama-server sends one: data: {"error":{...}}, then the end.
      events.splice(reply.streamError.after ?? events.length - 1);
      events.push(reply.streamError.body);
    }
    res.writeHead(200, { 'Content-Type': 'text/event-stream', 'Cache-Control': 'no-cache' });
    rec.events = 0;
    for (let i = 0; i < events.length; i++) {
      if (rec.clientClosed) return;
      if (reply.stallAfter !== undefined && i >= reply.stallAfter) {
        rec.stalled = true;
        return; // keeps the connection open and says nothing more
      }
      if (reply.resetAfter !== undefined && i >= reply.resetAfter) {
        rec.reset = true;
        res.socket.destroy(); // a reset mid-stream
        return;
      }
      if (delay && i > 0) await sleep(delay);
      // Honour backpressure, as a blocking socket write would: a proxy that pauses its
      // transfer then holds the mock here, and closing the connection shows as clientClosed.
      if (!res.write('data: ' + JSON.stringify(events[i]) + '\n\n')) {
        await new Promise((r) => {
          const done = () => { res.off('drain', done); res.off('close', done); r(); };
          res.on('drain', done);
          res.on('close', done);
        });
      }
      rec.events++;
    }
    if (rec.clientClosed) return;
    if (!reply.streamError && !reply.noDone) res.write('data: [DONE]\n\n');
    res.end();
  }

  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port || 0, '127.0.0.1', () => resolve());
  });
  mock.port = server.address().port;
  return mock;
}

// Standalone: node mock-llama.mjs [--port N] [--n-ctx N] [--model NAME]
if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const arg = (name, dflt) => {
    const i = process.argv.indexOf(name);
    return i >= 0 ? process.argv[i + 1] : dflt;
  };
  const mock = await startMock({
    port: Number(arg('--port', 8080)),
    nCtx: Number(arg('--n-ctx', 32768)),
    model: arg('--model', 'tiny'),
  });
  console.error(`mock llama-server listening on ${mock.url}`);
}
