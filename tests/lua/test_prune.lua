-- prune: threshold edges, what goes first, orphan-pair protection, the tail, the fixed part,
-- the overflow retry by real numbers, and the real Claude Code request inflated to overflow.
local T = require "anthroxy.testing"
local ax = require "anthroxy"
local conv = require "anthroxy.conv"

local p = T.load("prune")

-- A task, then n tool turns whose results are `size` characters each.
local function loop_conversation(n, size, opts)
  opts = opts or {}
  local msgs = { T.user("Fix the failing test in src/parser.c") }
  for k = 1, n do
    local say = "Looking at step " .. k .. (opts.talk and string.rep(" and thinking aloud", opts.talk // 18) or "")
    msgs[#msgs + 1] = T.assistant({ T.text(say),
                                    T.tool_use("toolu_" .. k, "Read", { path = "f" .. k .. ".c" }) })
    local body = (opts.sizes and opts.sizes[k] or size)
    msgs[#msgs + 1] = T.user({ T.tool_result("toolu_" .. k,
      string.rep(string.format("line %d of file %d;\n", k, k), body // 20)) })
  end
  return T.request{ system = opts.system or "You are a coding agent.",
                    tools = { T.tool("Read"), T.tool("Bash") }, max_tokens = 8000,
                    messages = msgs }
end

local function tokens(req, ctx) return ax.calibrated(ax.request_tokens(req), ctx) end

local function no_broken_pairs(req)
  local problems = conv.broken_pairs(req.messages, true)
  T.eq(#problems, 0, #problems > 0 and (problems[1].kind .. " " .. problems[1].id) or nil)
end

local function marker_of(req)
  local c = req.messages[1].content
  if type(c) ~= "table" then return nil end
  for _, b in ipairs(c) do
    if b.type == "text" and conv.is_marker_text(b.text) then return b.text end
  end
end

T.test("threshold edge: just below is left alone, at the threshold prunes", function()
  local req = loop_conversation(20, 2000)
  local raw = ax.request_tokens(req)
  local at = math.floor(raw / 0.75)          -- raw >= 0.75 * at
  local below = at + 1                       -- raw < 0.75 * below
  local ctx1 = T.ctx{ context_window = below }
  local out1 = T.run(p, "on_request", req, ctx1)
  T.eq(#out1.messages, #req.messages)
  T.eq(out1, req, "untouched below the threshold")
  T.eq(ctx1.session.prune_count, 0)
  local ctx2 = T.ctx{ context_window = at }
  local out2 = T.run(p, "on_request", req, ctx2)
  T.ok(tokens(out2, ctx2) <= 0.65 * at, "fits the target")
  T.eq(ctx2.session.prune_count, 1)
end)

T.test("oldest tool results go first, the conversation keeps its shape", function()
  local req = loop_conversation(20, 2000)
  local raw = ax.request_tokens(req)
  -- Just over the threshold: dropping a few outputs is enough.
  local w = math.floor(raw / 0.76)
  local ctx = T.ctx{ context_window = w }
  local out = T.run(p, "on_request", req, ctx)
  T.eq(#out.messages, #req.messages, "no message removed")
  T.ok(tokens(out, ctx) <= 0.65 * w, "fits the target")
  local r2 = out.messages[3].content[1]
  T.eq(r2.type, "tool_result")
  T.ok(r2.content:find("^%[output of this tool call removed"), "the oldest output went")
  local last = out.messages[#out.messages].content[1]
  T.eq(last.content, req.messages[#req.messages].content[1].content, "the newest stayed")
  T.eq(marker_of(out), nil, "no marker: each elided output carries its own placeholder")
  no_broken_pairs(out)
end)

T.test("a large overflow removes whole turns, oldest first, pairs intact", function()
  local req = loop_conversation(30, 100, { talk = 3000 }) -- mostly talk, little tool output
  local raw = ax.request_tokens(req)
  local w = math.floor(raw / 1.5)           -- far over the window, even without tool output
  local ctx = T.ctx{ context_window = w }
  local out = T.run(p, "on_request", req, ctx)
  T.ok(#out.messages < #req.messages, "turns removed")
  T.ok(tokens(out, ctx) <= 0.65 * w, "fits the target")
  T.eq(out.messages[1].content[1].text, req.messages[1].content, "first user message kept")
  T.eq(out.messages[#out.messages], req.messages[#req.messages], "last turn kept")
  T.eq(out.messages[#out.messages - 1], req.messages[#req.messages - 1], "last turn kept")
  T.eq(marker_of(out), conv.marker_text(), "the constant marker, no counts")
  -- What stayed is the newest turns: tool ids form a run ending at the last one.
  local ids = {}
  for i = 2, #out.messages do
    for _, id in ipairs(conv.tool_use_ids(out.messages[i])) do ids[#ids + 1] = tonumber(id:match("%d+")) end
  end
  T.ok(#ids >= 1 and ids[#ids] == 30, "newest kept")
  for k = 2, #ids do T.eq(ids[k], ids[k - 1] + 1, "a contiguous run of the newest turns") end
  T.ok(ids[1] > 1, "the oldest went")
  no_broken_pairs(out)
  -- Roles still alternate after the first user message.
  for i = 2, #out.messages do
    T.ok(out.messages[i].role ~= out.messages[i - 1].role, "alternating roles at " .. i)
  end
end)

T.test("orphan-pair protection over many windows and awkward pairings", function()
  -- Two calls in one turn answered in two user messages; a result that comes a turn late.
  local msgs = { T.user("start") }
  for k = 1, 12 do
    local a, b = "a" .. k, "b" .. k
    msgs[#msgs + 1] = T.assistant({ T.tool_use(a, "Read", { n = k }), T.tool_use(b, "Bash", { n = k }) })
    msgs[#msgs + 1] = T.user({ T.tool_result(a, string.rep("A", 3000)) })
    msgs[#msgs + 1] = T.assistant({ T.text("and the other one?" .. string.rep(" please", 200)) })
    msgs[#msgs + 1] = T.user({ T.tool_result(b, string.rep("B", 3000)), T.text("here") })
  end
  local req = T.request{ system = "s", tools = { T.tool("Read") }, messages = msgs }
  local raw = ax.request_tokens(req)
  local fs = { 0.74 }
  for k = 0, 60 do fs[#fs + 1] = 0.75 + k * 0.1 end
  for _, f in ipairs(fs) do
    local w = math.floor(raw / f)
    local ctx = T.ctx{ context_window = w }
    local ok, out = pcall(T.run, p, "on_request", req, ctx)
    if ok then
      no_broken_pairs(out)
      if f >= 0.75 then T.ok(tokens(out, ctx) <= 0.65 * w, "fits at " .. f) end
    else
      T.ok(type(out) == "table" and out.fail, "only a deliberate rejection: " .. tostring(out))
    end
  end
end)

T.test("conv.units never splits a pair", function()
  local msgs = { T.user("x"),
    T.assistant({ T.tool_use("t1", "Read") }), T.user({ T.text("wait") }),
    T.assistant({ T.text("ok") }), T.user({ T.tool_result("t1", "late") }),
    T.assistant({ T.tool_use("t2", "Read") }), T.user({ T.tool_result("t2", "ok") }) }
  local units = conv.units(msgs, 2)
  T.eq(units, { { first = 2, last = 5 }, { first = 6, last = 7 } })
  T.eq(#conv.broken_pairs(msgs), 0)
  local broken = { T.user("x"), T.assistant({ T.tool_use("t9", "Read") }), T.user("no result") }
  T.eq(conv.broken_pairs(broken)[1].kind, "use_without_result")
end)

T.test("a tail too big alone: its long tool results are shortened", function()
  local req = loop_conversation(3, 1000, { sizes = { 1000, 1000, 120000 } })
  local w = 16384
  local ctx = T.ctx{ context_window = w }
  T.ok(tokens(req, ctx) > w, "the last result alone overflows")
  local out = T.run(p, "on_request", req, ctx)
  T.ok(tokens(out, ctx) <= 0.65 * w, "fits the target")
  local last = out.messages[#out.messages].content[1]
  T.eq(last.tool_use_id, "toolu_3")
  T.ok(last.content:find("characters removed by the proxy", 1, true), "shortened in the middle")
  T.ok(last.content:find("^line 3 of file 3"), "its beginning kept")
  T.ok(last.content:find("line 3 of file 3;\n$"), "its end kept")
  T.eq(marker_of(out), nil, "nothing removed whole: no marker")
  no_broken_pairs(out)
end)

T.test("the fixed part alone over the window: prompt is too long", function()
  local req = loop_conversation(4, 500, { system = string.rep("You must obey rule 7. ", 8000) })
  local ctx = T.ctx{ context_window = 8192 }
  local err = T.fails(function() T.run(p, "on_request", req, ctx) end)
  T.eq(err.fail.status, 400)
  T.eq(err.fail.type, "invalid_request_error")
  local n, m, k = err.fail.message:match(
    "^prompt is too long: (%d+) tokens > (%d+) maximum %(the tools and system prompt alone take (%d+) tokens%)$")
  T.ok(n, "Anthropic's wording: " .. err.fail.message)
  T.eq(tonumber(n), tokens(req, ctx))
  T.eq(tonumber(m), 8192)
  T.ok(tonumber(k) > 8192, "the system prompt alone is too big")
end)

-- Turn after turn the client sends its whole history; count the turns whose pruned request
-- starts with the previous turn's pruned request (the server's prompt cache survives).
local function cache_run(settings, turns)
  local q = T.load("prune", settings)
  local req = loop_conversation(40, 1500)
  -- Pruning from the first turn on; each turn adds well under a step (a tenth of the window).
  local w = math.floor(ax.request_tokens(req) / 0.76)
  local prev, kept, prunes = nil, 0, 0
  for turn = 1, turns do
    local k = 40 + turn
    req.messages[#req.messages + 1] = T.assistant({ T.tool_use("toolu_" .. k, "Read", { k = k }) })
    req.messages[#req.messages + 1] = T.user({ T.tool_result("toolu_" .. k,
      string.rep("text of result " .. k .. "\n", 60)) })
    local ctx = T.ctx{ context_window = w }
    local out = T.run(q, "on_request", req, ctx)
    T.ok(tokens(out, ctx) < 0.75 * w, "under the threshold at turn " .. turn)
    if ctx.session.prune_count > 0 then
      T.ok(tokens(out, ctx) <= 0.65 * w, "fits the target at turn " .. turn)
      no_broken_pairs(out)
      if prev then
        prunes = prunes + 1
        local same = true
        for i = 1, #prev.messages do
          if ax.json.encode(prev.messages[i]) ~= ax.json.encode(out.messages[i]) then same = false; break end
        end
        if same then kept = kept + 1 end
      end
      prev = out
    end
  end
  return kept, prunes
end

T.test("the cut moves in steps: the pruned prompt stays a prefix turn after turn", function()
  local kept, prunes = cache_run(nil, 40)
  T.ok(prunes >= 20, "pruned on most turns: " .. prunes)
  T.ok(kept >= prunes * 0.7, string.format("prefix kept on %d of %d pruned turns", kept, prunes))
  local kept0, prunes0 = cache_run({ step = 0 }, 40)
  print(string.format("prefix kept: %d/%d with steps, %d/%d without", kept, prunes, kept0, prunes0))
  T.ok(kept0 * 2 < kept, string.format("without steps: prefix kept on %d of %d, with: %d of %d",
    kept0, prunes0, kept, prunes))
end)

T.test("count_tokens requests are measured, never cut or refused", function()
  local req = loop_conversation(30, 3000)
  local ctx = T.ctx{ context_window = 4096, count_only = true }
  T.eq((T.run(p, "on_request", req, ctx)), req)
  T.eq(ctx.session.prune_count, 0)
end)

T.test("threshold: the server's by default, the setting when given, calibrated", function()
  local req = loop_conversation(20, 2000)
  local raw = ax.request_tokens(req)
  local w = math.floor(raw / 0.7)           -- at 0.70
  T.eq((T.run(p, "on_request", req, T.ctx{ context_window = w })), req, "0.70 < 0.75")
  local c1 = T.ctx{ context_window = w, prune_threshold = 0.6 }
  T.run(p, "on_request", req, c1)
  T.eq(c1.session.prune_count, 1, "the server's threshold 0.6")
  local q = T.load("prune", { threshold = 0.65, target = 0.5 })
  local c2 = T.ctx{ context_window = w }
  local out = T.run(q, "on_request", req, c2)
  T.eq(c2.session.prune_count, 1, "the setting's threshold 0.65")
  T.ok(tokens(out, c2) <= 0.5 * w, "the setting's target")
  local c3 = T.ctx{ context_window = w, session = T.session{ calibration = 1.2 } }
  T.run(p, "on_request", req, c3)
  T.eq(c3.session.prune_count, 1, "0.70 * 1.2 = 0.84: over once calibrated")
end)

T.test("the client is told the size it sent (report_scale)", function()
  local req = loop_conversation(30, 3000)
  local raw = ax.request_tokens(req)
  local ctx = T.ctx{ context_window = math.floor(raw / 1.2), report_scale = 2.0 }
  local out = T.run(p, "on_request", req, ctx)
  local after = ax.request_tokens(out)
  T.ok(math.abs(ctx.report_scale - 2.0 * raw / after) < 1e-9, "scaled by before/after")
  local q = T.load("prune", { report_sent_size = false })
  local c2 = T.ctx{ context_window = math.floor(raw / 1.2) }
  T.run(q, "on_request", req, c2)
  T.eq(c2.report_scale, 1.0)
end)

T.test("overflow retry: pruned by the upstream's real numbers", function()
  local req = loop_conversation(30, 3000)
  local raw = ax.request_tokens(req)
  local w = math.floor(raw / 0.7)
  -- Below our threshold by the estimate, but the upstream counted 50 % more than we did.
  local ctx = T.ctx{ context_window = w }
  T.ok(raw < 0.75 * w, "the estimate did not trigger pruning")
  local n_prompt = math.floor(raw * 1.5)
  T.ok(n_prompt > w, "the real size overflows")
  local err = { status = 400, type = "invalid_request_error", message = "too long",
                n_prompt_tokens = n_prompt, n_ctx = w }
  local out, retry = T.run(p, "on_upstream_error", req, err, ctx)
  T.eq(retry, true)
  local real_after = ax.request_tokens(out) * n_prompt / raw
  T.ok(real_after <= 0.65 * w, "fits the target in real tokens")
  T.ok(out.max_tokens <= w - real_after, "the answer fits too")
  no_broken_pairs(out)
  T.eq(ctx.session.prune_count, 1)
end)

T.test("overflow retry refused when even the fixed part cannot fit", function()
  local req = loop_conversation(2, 500, { system = string.rep("rule ", 20000) })
  local raw = ax.request_tokens(req)
  local err = { status = 400, type = "invalid_request_error", message = "too long",
                n_prompt_tokens = raw, n_ctx = math.floor(raw / 2) }
  local out, retry = T.run(p, "on_upstream_error", req, err, T.ctx())
  T.ok(not retry, "no retry")
  T.eq(out, req, "request unchanged")
  local _, r2 = T.run(p, "on_upstream_error", req,
    { status = 500, type = "api_error", message = "boom" }, T.ctx())
  T.ok(not r2, "not an overflow: no retry")
end)

T.test("the real Claude Code request, inflated to overflow", function()
  local req = T.fixture("claude-code/after-tool-call.json")
  local msgs = req.messages
  -- Insert 40 earlier Read turns with 6 KB outputs before the last pair.
  local last_a, last_u = msgs[#msgs - 1], msgs[#msgs]
  msgs[#msgs], msgs[#msgs - 1] = nil, nil
  for k = 1, 40 do
    local id = string.format("toolu_01Inflated%04d", k)
    msgs[#msgs + 1] = { role = "assistant", content = { { type = "tool_use", id = id, name = "Read",
      input = { file_path = "/src/file" .. k .. ".c" } } } }
    msgs[#msgs + 1] = { role = "user", content = { { type = "tool_result", tool_use_id = id,
      content = string.rep("int f" .. k .. "(void) { return " .. k .. "; }\n", 200) } } }
  end
  msgs[#msgs + 1] = last_a
  msgs[#msgs + 1] = last_u
  local w = 65536
  local ctx = T.ctx{ context_window = w, user_agent = "claude-cli/2.1.197 (external, sdk-cli)" }
  T.ok(tokens(req, ctx) > w, "inflated past the window")
  local out = T.run(p, "on_request", req, ctx)
  T.ok(tokens(out, ctx) <= 0.65 * w, "fits the target")
  no_broken_pairs(out)
  T.eq(out.messages[2], req.messages[2], "the system message inside the conversation stays")
  T.eq(out.messages[1].content[2], req.messages[1].content[2], "the first user message stays")
  T.eq(out.messages[#out.messages], last_u, "the last turn stays")
  T.eq(out.messages[#out.messages - 1], last_a, "the last turn stays")
  T.eq(#out.tools, #req.tools)
  T.ok((#out.messages < #req.messages) == (marker_of(out) ~= nil), "a marker exactly when turns went")
end)

-- Decisions of issue 13 (docs/default-policies.md, "prune": what it never does).
T.test("the last turn alone over the target, under the window: sent unchanged", function()
  local req = T.request{ max_tokens = 100, messages = { T.user(string.rep("please read this ", 6000)) } }
  local w = math.floor(tokens(req, T.ctx{}) / 0.80)
  local ctx = T.ctx{ context_window = w }
  local out = T.run(p, "on_request", req, ctx)
  T.eq(out, req, "the user's own words are not cut; max_tokens refuses if no answer fits")
end)

local function image(n)
  return { type = "image", source = { type = "base64", media_type = "image/png",
           data = string.rep("iVBORw0KGgo", n) } }
end

T.test("image-only tool results are elided like text ones", function()
  local req = loop_conversation(12, 2000)
  req.messages[3].content[1].content = { image(3000) }
  local raw = ax.request_tokens(req)
  local w = math.floor(raw / 0.80)
  local out = T.run(p, "on_request", req, T.ctx{ context_window = w })
  local r = out.messages[3].content[1]
  T.ok(type(r.content) == "string" and r.content:find("^%[output of this tool call removed"),
       "the screenshot went first, as the oldest output")
  no_broken_pairs(out)
end)

T.test("shortening a mixed text+image result keeps the image", function()
  local req = loop_conversation(3, 1000, { sizes = { 1000, 1000, 120000 } })
  local last_in = req.messages[#req.messages].content[1]
  last_in.content = { T.text(last_in.content), image(100) }
  local out = T.run(p, "on_request", req, T.ctx{ context_window = 16384 })
  local last = out.messages[#out.messages].content[1]
  T.ok(type(last.content) == "table", "still blocks")
  T.ok(last.content[1].text:find("characters removed by the proxy", 1, true), "text shortened")
  T.eq(last.content[2].type, "image", "the image stays")
end)

T.test("old thinking blocks go with the old tool outputs, the recent ones stay", function()
  local req = loop_conversation(12, 2000)
  for i = 2, #req.messages, 2 do
    ax.insert(req.messages[i].content, 1, { type = "thinking", thinking = string.rep("hmm ", 300),
      signature = "sig" })
  end
  local w = math.floor(ax.request_tokens(req) / 0.78)
  local out = T.run(p, "on_request", req, T.ctx{ context_window = w })
  T.eq(out.messages[2].content[1].type, "text", "the oldest turn's thinking went")
  T.eq(out.messages[#out.messages - 1].content[1].type, "thinking", "the last turn's stays")
  no_broken_pairs(out)
end)

-- The server's prompt cache is valid up to the first changed token: over a growing session past
-- the threshold, the pruned prompt of one turn must be a prefix of the next one's on most turns.
T.test("the cut moves rarely and the head never changes once turns go", function()
  local sizes = {}
  for k = 1, 60 do sizes[k] = ({ 600, 2500, 900, 6000, 1500, 3500 })[(k - 1) % 6 + 1] * 4 end
  local w = math.floor(ax.request_tokens(loop_conversation(20, 0, { sizes = sizes })) / 0.76)
  local prev, moves, heads, n = nil, 0, {}, 0
  for turn = 20, 60 do
    local out = T.run(p, "on_request", loop_conversation(turn, 0, { sizes = sizes }),
                      T.ctx{ context_window = w })
    local enc = {}
    for i = 1, #out.messages do enc[i] = ax.json.encode(out.messages[i]) end
    if prev then
      local same = true
      for i = 1, #prev - 1 do if prev[i] ~= enc[i] then same = false; break end end
      if not same then moves = moves + 1 end
    end
    if marker_of(out) then heads[enc[1]] = true end
    prev, n = enc, n + 1
  end
  local distinct = 0
  for _ in pairs(heads) do distinct = distinct + 1 end
  T.ok(distinct <= 1, "one head message once turns are dropped")
  T.ok(moves <= n // 3, string.format("the cut moved on %d of %d turns", moves, n))
end)
