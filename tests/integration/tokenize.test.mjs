// tokenize.test.mjs - when a session's estimate is far off (its factor at a clamp, or wrong by
// more than --tokenize-off-ratio on the last turn), the prompt is counted with llama-server's
// /tokenize before the policies run, so proactive pruning fires at the threshold instead of
// the request overflowing (or passing unpruned above the threshold); bounded, with the
// estimate as the fallback.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startMock } from './mock-llama.mjs';
import { startProxy, waitUpstreamProbed, request } from './helpers.mjs';

const MODEL = 'claude-sonnet-4-5';
const N_CTX = 16384;
const TOOL = { name: 'lookup', description: 'Look something up', input_schema: { type: 'object', properties: { q: { type: 'string' } } } };

/** A long agent conversation: user task, then n rounds of tool_use + big tool_result. */
function longConversation(n, resultBytes, marker) {
  const msgs = [{ role: 'user', content: `${marker}: the original task` }];
  for (let i = 0; i < n; i++) {
    msgs.push({ role: 'assistant', content: [{ type: 'text', text: `step ${i}` }, { type: 'tool_use', id: `toolu_${marker}_${i}`, name: 'lookup', input: { q: `q${i}` } }] });
    msgs.push({ role: 'user', content: [{ type: 'tool_result', tool_use_id: `toolu_${marker}_${i}`, content: `result ${i} ` + 'r'.repeat(resultBytes) }] });
  }
  msgs.push({ role: 'assistant', content: 'Looked everything up.' });
  msgs.push({ role: 'user', content: `${marker}: now summarise` });
  return msgs;
}

const turn = (p, session, messages) => request(p, {
  method: 'POST', path: '/v1/messages', headers: { 'x-session-id': session },
  body: { model: MODEL, max_tokens: 200, tools: [TOOL], messages },
});

async function calibration(p, session) {
  const r = await request(p, { path: `/v1/context?session=${session}` });
  return r.json;
}

async function setup(mockOpts = {}, args = []) {
  // 2 bytes per token: the model's tokens are far shorter than the estimator assumes, so a
  // session's factor after one small turn (~1.7) is well short of the real ratio (~3.5).
  const mock = await startMock({ nCtx: N_CTX, bytesPerToken: 2, ...mockOpts });
  const p = await startProxy({ upstream: mock.base, args });
  assert.ok(await waitUpstreamProbed(p), p.tail());
  const r = await turn(p, 'tk', [{ role: 'user', content: 'T1 ' + 'word '.repeat(400) }]);
  assert.equal(r.status, 200, r.text);
  const c = (await calibration(p, 'tk')).calibration;
  assert.ok(c.last_forecast > 1.25, `the first turn's estimate was far off: ${JSON.stringify(c)}`);
  return { mock, p };
}

async function teardown({ mock, p }) {
  const exit = await p.stop();
  await mock.close();
  assert.equal(exit.code, 0, p.tail());
}

const paths = (mock, from) => mock.requests.slice(from).map((q) => q.path);

test('estimate far off on the last turn: the prompt is counted with /tokenize and pruned at the threshold', async () => {
  const env = await setup();
  const { mock, p } = env;
  try {
    // 24 rounds: ~15.7k real tokens, over 0.75 of 16384 and under the window. By the factor
    // alone (~1.7) the estimate is ~7.5k, and it went upstream unpruned (--tokenize-off-ratio
    // 0 does that still).
    const from = mock.requests.length;
    const r = await turn(p, 'tk', longConversation(24, 1100, 'T2'));
    assert.equal(r.status, 200, r.text);
    assert.deepEqual(paths(mock, from), ['/apply-template', '/tokenize', '/v1/chat/completions'],
      'counted before the policies ran, then sent once');
    const rec = mock.lastChat();
    assert.ok(rec.promptTokens <= 0.75 * N_CTX, `pruned below the threshold: ${rec.promptTokens} tokens`);
    const c = await calibration(p, 'tk');
    assert.equal(c.prune_count, 1);
    assert.equal(c.calibration.tokenized, 1);
    assert.match(p.log(), /prompt counted with the upstream's \/tokenize: \d+ tokens for an estimate of \d+/);
    // That turn's forecast was right: the next one is not counted again.
    const from3 = mock.requests.length;
    const msgs = longConversation(24, 1100, 'T2');
    msgs.push({ role: 'assistant', content: 'Summarised.' }, { role: 'user', content: 'T3: thanks' });
    assert.equal((await turn(p, 'tk', msgs)).status, 200);
    assert.deepEqual(paths(mock, from3), ['/v1/chat/completions']);
  } finally {
    await teardown(env);
  }
});

test('--tokenize-off-ratio 0: never counted (the estimate alone decides)', async () => {
  const env = await setup({}, ['--tokenize-off-ratio', '0']);
  const { mock, p } = env;
  try {
    const from = mock.requests.length;
    assert.equal((await turn(p, 'tk', longConversation(24, 1100, 'T2'))).status, 200);
    assert.deepEqual(paths(mock, from), ['/v1/chat/completions']);
    assert.ok(mock.lastChat().promptTokens > 0.75 * N_CTX, 'what the count fixes: sent over the threshold');
  } finally {
    await teardown(env);
  }
});

test('an upstream without /tokenize: the estimate stands and the request is served', async () => {
  const env = await setup({ endpoints: { tokenize: false } });
  const { mock, p } = env;
  try {
    const from = mock.requests.length;
    const r = await turn(p, 'tk', longConversation(8, 1100, 'T2'));
    assert.equal(r.status, 200, r.text);
    assert.deepEqual(paths(mock, from), ['/apply-template', '/tokenize', '/v1/chat/completions']);
    assert.match(p.log(), /the upstream could not count the prompt: the estimate stands/);
    assert.equal((await calibration(p, 'tk')).calibration.tokenized, 0);
  } finally {
    await teardown(env);
  }
});
