-- compaction_steering: the scale's arithmetic, who gets it, and a simulated Claude Code
-- session showing that the client reaches its own compaction point before the proxy prunes.
local T = require "anthroxy.testing"
local ax = require "anthroxy"

local p = T.load("compaction_steering")
local prune = T.load("prune")
local CC = "claude-cli/2.1.197 (external, sdk-cli)"

local function small_req(max_tokens)
  return T.request{ max_tokens = max_tokens or 64000, tools = { T.tool("Read") },
                    messages = { T.user("hello") } }
end

local function scale_of(req, fields)
  local ctx = T.ctx(fields)
  T.run(p, "on_request", req, ctx)
  return ctx.report_scale, ctx
end

local function near(a, b, msg) T.ok(math.abs(a - b) < 1e-6 * math.max(1, math.abs(b)), msg or (a .. " ~ " .. b)) end

T.test("only Claude Code by default; every client with all_clients", function()
  T.eq((scale_of(small_req(), { context_window = 32768, user_agent = "python-httpx/0.27" })), 1.0)
  T.ok((scale_of(small_req(), { context_window = 32768, user_agent = CC })) > 1, "claude-cli")
  T.ok((scale_of(small_req(), { context_window = 32768, user_agent = "x claude-code/1.0" })) > 1)
  local all = T.load("compaction_steering", { all_clients = true })
  local ctx = T.ctx{ context_window = 32768, user_agent = "python-httpx/0.27" }
  T.run(all, "on_request", small_req(), ctx)
  T.ok(ctx.report_scale > 1, "all clients")
  local off = T.load("compaction_steering", { enabled = false })
  local c2 = T.ctx{ context_window = 32768, user_agent = CC }
  T.run(off, "on_request", small_req(), c2)
  T.eq(c2.report_scale, 1.0, "a setting away from off")
end)

T.test("arithmetic: the client's trigger lands at steer_at of the real window", function()
  -- Claude Code's trigger on its 200k window: 200000 - 20000 - 13000.
  near((scale_of(small_req(64000), { context_window = 32768, user_agent = CC })),
       167000 / (0.65 * 32768))
  near((scale_of(small_req(50), { context_window = 32768, user_agent = CC })),
       167000 / (0.65 * 32768), "a side request's small max_tokens changes nothing")
  -- One figure: CLAUDE_CODE_AUTO_COMPACT_WINDOW (= client_window, as the README says) wins
  -- over the context-1m beta in the client, so the beta (older clients) changes nothing.
  near((scale_of(small_req(64000), { context_window = 32768, user_agent = CC,
         anthropic_beta = "claude-code-20250219,context-1m-2025-08-07" })),
       167000 / (0.65 * 32768), "the context-1m beta changes nothing")
  -- What 2.1.332 sends (its recorded headers: no context-1m).
  near((scale_of(small_req(64000), { context_window = 32768,
         user_agent = "claude-cli/2.1.332 (external, sdk-cli)",
         anthropic_beta = "claude-code-20250219,interleaved-thinking-2025-05-14,context-management-2025-06-27" })),
       167000 / (0.65 * 32768), "2.1.332")
  -- Never at or past the prune threshold: kept 0.05 under it.
  near((scale_of(small_req(64000), { context_window = 32768, user_agent = CC,
         prune_threshold = 0.66 })), 167000 / (0.61 * 32768))
end)

T.test("never under-reports; the fixed part stays under half the trigger", function()
  T.eq((scale_of(small_req(), { context_window = 1000000, user_agent = CC })), 1.0)
  local big = T.request{ max_tokens = 64000, system = string.rep("policy text ", 12000),
                         messages = { T.user("hi") } }
  local s, ctx = scale_of(big, { context_window = 32768, user_agent = CC })
  local fixed = ax.calibrated(ax.request_tokens(big) - ax.message_tokens(big.messages[1]), ctx)
  T.ok(s < 167000 / (0.70 * 32768), "limited")
  near(s * fixed, 0.5 * 167000, "scaled fixed part = half the trigger")
end)

-- One Claude Code session: each turn adds a tool call with `grow` characters of output. The
-- upstream is taken to count like the (calibrated) estimator. Returns the turn at which the
-- client would compact (reported input >= its trigger) and the prune count and real
-- utilization at that point, or at the turn where pruning first happened.
local function simulate(req, window, steer, grow, calibration)
  local trigger = 200000 - 20000 - 13000
  for turn = 1, 400 do
    local session = T.session{ calibration = calibration or 1.0 }
    local ctx = T.ctx{ context_window = window, user_agent = CC, session = session }
    local sent_real = ax.calibrated(ax.request_tokens(req), ctx)
    local cur = req
    if steer then
      cur = T.run(p, "on_request", cur, ctx)
      ctx.settings, ctx.state = nil, nil
    end
    cur = T.run(prune, "on_request", cur, ctx)
    local real = ax.calibrated(ax.request_tokens(cur), ctx)
    local reported = real * ctx.report_scale
    if session.prune_count > 0 then
      return { turn = turn, pruned = true, utilization = sent_real / window }
    end
    if reported >= trigger then
      return { turn = turn, pruned = false, utilization = real / window,
               reported = reported }
    end
    local id = "toolu_sim" .. turn
    local msgs = req.messages
    msgs[#msgs + 1] = { role = "assistant", content = { T.tool_use(id, "Read", { n = turn }) } }
    msgs[#msgs + 1] = { role = "user", content = { T.tool_result(id, string.rep("data ", grow // 5)) } }
  end
  error("neither compaction nor pruning in 400 turns")
end

T.test("the client compacts before the proxy prunes (small window)", function()
  local r = simulate(small_req(), 32768, true, 3000)
  T.eq(r.pruned, false, "compaction came first")
  T.ok(r.utilization < 0.75, "below the prune threshold: " .. r.utilization)
  T.ok(r.utilization > 0.60, "and not needlessly early: " .. r.utilization)
  -- Without steering the proxy has to prune first and history is lost silently.
  local r2 = simulate(small_req(), 32768, false, 3000)
  T.eq(r2.pruned, true, "without steering, pruning comes first")
end)

T.test("the client compacts first on the real Claude Code request, calibrated", function()
  local req = T.fixture("claude-code/after-tool-call.json")
  local r = simulate(req, 65536, true, 4000, 1.25)
  T.eq(r.pruned, false, "compaction came first")
  T.ok(r.utilization < 0.75, "below the prune threshold: " .. r.utilization)
end)

T.test("after pruning, the client is told what it sent", function()
  -- Big steps jump over the compaction point: prune cuts, and the report still
  -- reflects the full size the client sent, so the client compacts right after.
  local req = small_req()
  local k = 0
  while ax.request_tokens(req) < 0.8 * 32768 do
    k = k + 1
    req.messages[#req.messages + 1] = T.assistant({ T.tool_use("b" .. k, "Read", { k = k }) })
    req.messages[#req.messages + 1] = T.user({ T.tool_result("b" .. k, string.rep("data ", 2000)) })
  end
  local ctx = T.ctx{ context_window = 32768, user_agent = CC }
  local sent = ax.request_tokens(req)
  local out = T.run(p, "on_request", req, ctx)
  local scale = ctx.report_scale
  ctx.settings, ctx.state = nil, nil
  out = T.run(prune, "on_request", out, ctx)
  T.eq(ctx.session.prune_count, 1)
  near(ax.request_tokens(out) * ctx.report_scale, sent * scale, "reported = scaled sent size")
  T.ok(sent * scale >= 167000, "past the client's trigger")
end)
