// record-helpers.mjs - shared by recording.test.mjs and replay.test.mjs: run Claude Code in
// print mode against a proxy, and read a recording directory the way docs/recording.md says
// a researcher's own tool would (rebuilding each body from its delta).
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { HERE, oaiText, claudeBin, claudeEnv } from './helpers.mjs';

/** Runs `claude -p task` in a fresh HOME under tmpRoot; returns { code, out, err, json }. */
export async function runClaude(task, { cwd, tmpRoot, baseUrl, apiKey = 'dummy', timeoutMs = 150000, maxTurns = 12 }) {
  const home = fs.mkdtempSync(path.join(tmpRoot, 'home-'));
  const args = ['-p', task, '--output-format', 'json', '--permission-mode', 'acceptEdits',
    '--allowedTools', 'Write,Read,Edit', '--max-turns', String(maxTurns)];
  const child = spawn(claudeBin(), args, {
    cwd,
    stdio: ['ignore', 'pipe', 'pipe'],
    env: claudeEnv(home, baseUrl, { apiKey }),
  });
  let out = '';
  let err = '';
  child.stdout.on('data', (d) => { out += d; });
  child.stderr.on('data', (d) => { err += d; });
  const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
  const code = await new Promise((resolve) => child.on('exit', (c, s) => resolve(c ?? s)));
  clearTimeout(timer);
  let json = null;
  try { json = JSON.parse(out.trim().split('\n').pop()); } catch { /* the caller reports */ }
  return { code, out, err, json };
}

const toolMsgs = (body) => body.messages.filter((m) => m.role === 'tool');
const allText = (body) => body.messages.map((m) => oaiText(m.content)).join('\n');
function findTool(body, props) {
  return (body.tools || []).map((t) => t.function).find((f) => f && f.parameters && f.parameters.properties &&
    props.every((p) => p in f.parameters.properties));
}

/**
 * Scripts the mock for a multi-turn task on `file` (marker: a word of the task): each turn
 * reads the file or edits a line, so the conversation grows by a tool call and its result per
 * turn; the last turn answers in text. Returns the main requests the mock saw.
 */
export function scriptEdits(mock, marker, file, nEdits) {
  const seen = [];
  mock.script((req) => {
    const body = req.body;
    if (!allText(body).includes(marker)) return { text: 'ok' }; // a side request
    const k = toolMsgs(body).length;
    seen.push(req);
    if (k >= nEdits * 2) return { text: `Done: ${nEdits} edits.` };
    if (k % 2 === 0) return { toolCalls: [{ name: findTool(body, ['file_path', 'offset']).name, arguments: { file_path: file } }] };
    const i = (k - 1) / 2;
    return {
      toolCalls: [{
        name: findTool(body, ['file_path', 'old_string', 'new_string']).name,
        arguments: { file_path: file, old_string: `line ${i}: todo`, new_string: `line ${i}: done` },
      }],
    };
  });
  return seen;
}

/** A file of n lines "line i: todo" padded, so that each Read result weighs a few KB. */
export function writeTodo(file, n) {
  const pad = ' lorem ipsum dolor sit amet'.repeat(20);
  fs.writeFileSync(file, Array.from({ length: n }, (_, i) => `line ${i}: todo${pad}`).join('\n') + '\n');
}

/** FNV-1a 64 of a Buffer, as 16 hex digits (docs/recording.md). */
export function fnv1a(buf) {
  let h = 0xcbf29ce484222325n;
  const prime = 0x100000001b3n;
  const mask = 0xffffffffffffffffn;
  for (const b of buf) h = ((h ^ BigInt(b)) * prime) & mask;
  return h.toString(16).padStart(16, '0');
}

/** Rebuilds a body from its delta and the previous bodies of its kind (Buffers). */
export function rebuild(delta, prevs) {
  if (typeof delta.snapshot === 'string') return Buffer.from(delta.snapshot, 'utf8');
  const base = prevs.find((b) => fnv1a(b) === delta.base);
  if (!base) return null;
  return Buffer.concat([base.subarray(0, delta.head), Buffer.from(delta.mid, 'utf8'),
    base.subarray(base.length - delta.tail)]);
}

/** Reads every *.jsonl of dir: [{ file, size, records: [{...line, body, upstreamBody}] }]. */
export function readRecordings(dir) {
  const out = [];
  for (const f of fs.readdirSync(dir).filter((x) => x.endsWith('.jsonl')).sort()) {
    const file = path.join(dir, f);
    if (!fs.statSync(file).isFile()) continue;
    const text = fs.readFileSync(file, 'utf8');
    const bodies = [];
    const ups = [];
    const records = [];
    for (const line of text.split('\n').filter(Boolean)) {
      let r;
      try { r = JSON.parse(line); } catch { continue; } // a torn line: the next snapshot resumes
      if (!r.request) continue; // not a record
      r.body = rebuild(r.request, bodies);
      if (r.body) { bodies.push(r.body); if (bodies.length > 4) bodies.shift(); }
      r.upstreamBody = r.upstream_request ? rebuild(r.upstream_request, ups) : null;
      if (r.upstreamBody) { ups.push(r.upstreamBody); if (ups.length > 4) ups.shift(); }
      records.push(r);
    }
    out.push({ file, size: fs.statSync(file).size, text, records });
  }
  return out;
}
