// status.test.mjs - the status page at GET / rendered in headless Chromium (Debian chromium):
// its sections are in the DOM once its script has fetched /v1/status (an upstream row with its
// health, a session with its context bar, the policy generation, "no experiment", a recent
// error), with a key given as /#key=KEY when keys are set, and a login form without one. A
// screenshot goes to $AX_STATUS_SCREENSHOT when set (the closing note's picture).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { startProxy, waitUpstreamProbed, request, sdkClient, userMsg } from './helpers.mjs';
import { startMock } from './mock-llama.mjs';

const CHROMIUM = ['chromium', 'chromium-browser'].find((c) => {
  try { return fs.existsSync(`/usr/bin/${c}`); } catch { return false; }
});

/** Runs headless Chromium on url with extra flags; resolves with its stdout. The virtual time
 * budget lets the page's fetch and render finish before the DOM is dumped. */
function chromium(url, flags) {
  assert.ok(CHROMIUM, 'chromium not found: install the Debian package chromium (scripts/setup.sh)');
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'ax-chromium-'));
  const args = ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-extensions',
    `--user-data-dir=${profile}`, '--virtual-time-budget=4000', ...flags, url];
  return new Promise((resolve, reject) => {
    const p = spawn(`/usr/bin/${CHROMIUM}`, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '', err = '';
    const timer = setTimeout(() => { p.kill('SIGKILL'); reject(new Error(`chromium timed out:\n${err}`)); }, 60000);
    p.stdout.on('data', (d) => { out += d; });
    p.stderr.on('data', (d) => { err += d; });
    p.on('exit', (code) => {
      clearTimeout(timer);
      fs.rmSync(profile, { recursive: true, force: true });
      if (code === 0) resolve(out); else reject(new Error(`chromium exit ${code}:\n${err}`));
    });
  });
}

async function withProxy(args, fn) {
  const mock = await startMock({ nCtx: 16384 });
  const proxy = await startProxy({ upstream: mock.base, args });
  try {
    await waitUpstreamProbed(proxy);
    await fn(proxy, mock);
  } finally {
    const exit = await proxy.stop();
    await mock.close();
    assert.equal(exit.code, 0, proxy.tail());
  }
}

test('the page renders upstreams, a session bar, policies, no experiment and an error', async () => {
  await withProxy([], async (proxy) => {
    const client = sdkClient(proxy, { defaultHeaders: { 'x-claude-code-session-id': 'status-session-1' } });
    await client.messages.create({ model: 'claude-sonnet-4-5', max_tokens: 32, messages: [userMsg('hello '.repeat(400))] });
    const bad = await request(proxy, { method: 'POST', path: '/v1/messages', body: { model: 'x', max_tokens: 1, messages: [] } });
    assert.equal(bad.status, 400);
    const head = await request(proxy, { method: 'HEAD', path: '/' }); // Claude Code's probe, as before
    assert.equal(head.status, 200);
    assert.equal(head.headers['content-type'], 'text/plain; charset=utf-8');
    const plain = await request(proxy, { path: '/' }); // curl and scripts: as before
    assert.equal(plain.text, 'anthroxy\n');

    const page = await request(proxy, { path: '/', headers: { accept: 'text/html' } });
    assert.equal(page.status, 200);
    assert.match(page.headers['content-type'], /^text\/html/);
    assert.doesNotMatch(page.text, /<(script|link|img)[^>]+(src|href)=/i, 'no external assets');

    const dom = await chromium(`${proxy.url}/`, ['--dump-dom']);
    assert.match(dom, /<span class="upstream-name"[^>]*>default<\/span>/, 'the upstream row');
    assert.match(dom, /class="state state-ok">ok</, 'its health');
    assert.match(dom, /0\/20 running, 0 queued/, 'its load');
    assert.match(dom, /<td>tiny<\/td>/, 'its models');
    assert.match(dom, /status-session-1/, 'the session');
    const bar = /class="bar" role="meter" aria-valuenow="(\d+)" aria-valuemax="(\d+)"[^>]*><div class="fill[^"]*" style="width: ([\d.]+)%;?"/.exec(dom);
    assert.ok(bar, 'a session bar');
    assert.equal(Number(bar[2]), 16384, 'against the window');
    assert.ok(Number(bar[1]) > 400, 'filled with the prompt');
    assert.ok(Math.abs(Number(bar[3]) - (100 * Number(bar[1])) / 16384) < 0.1);
    assert.match(dom, /<td>generation<\/td><td>1<\/td>/, 'the policy generation');
    assert.match(dom, /no reload error/);
    assert.match(dom, /<p class="empty">no experiment<\/p>/);
    assert.match(dom, /invalid_request_error: messages: expected a non-empty array/, 'the recent error');
    assert.doesNotMatch(dom, /<form id="login">/, 'no login form without keys');

    if (process.env.AX_STATUS_SCREENSHOT) {
      await chromium(`${proxy.url}/`, [`--screenshot=${process.env.AX_STATUS_SCREENSHOT}`, '--window-size=412,1400']);
      assert.ok(fs.statSync(process.env.AX_STATUS_SCREENSHOT).size > 1000);
    }
  });
});

test('with keys: the page asks for one, and /#key=KEY shows the data', async () => {
  await withProxy(['--api-key', 'status-key-1234'], async (proxy) => {
    const data = await request(proxy, { path: '/v1/status' });
    assert.equal(data.status, 401, 'the data needs the key');
    const page = await request(proxy, { path: '/', headers: { accept: 'text/html' } });
    assert.equal(page.status, 200, 'the shell does not');
    assert.doesNotMatch(page.text, /status-key-1234/);

    const locked = await chromium(`${proxy.url}/`, ['--dump-dom']);
    assert.match(locked, /<form id="login">/, 'the login form shows');
    assert.match(locked, /<main id="main" hidden="">/, 'the data does not');
    assert.doesNotMatch(locked, /<span class="upstream-name"/);

    const open = await chromium(`${proxy.url}/#key=status-key-1234`, ['--dump-dom']);
    assert.match(open, /<span class="upstream-name"[^>]*>default<\/span>/);
    assert.match(open, /<form id="login" hidden="">/);
    assert.doesNotMatch(proxy.log(), /status-key-1234/, 'the key reached no log line');
  });
});
