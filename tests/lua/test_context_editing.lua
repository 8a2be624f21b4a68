-- context_editing: each knob of clear_tool_uses_20250919 and clear_thinking_20251015, the
-- steps that keep the cut in place, the operator's edits, validation, and what is reported.
local T = require "anthroxy.testing"
local ax = require "anthroxy"
local conv = require "anthroxy.conv"

local p = T.load("context_editing")
local PH = p.module.PLACEHOLDER

-- A task, then n tool turns (tool names cycle through `names`), results of `size` chars.
local function loop(n, size, opts)
  opts = opts or {}
  local names = opts.names or { "Read" }
  local msgs = { T.user("Fix the failing test") }
  for k = 1, n do
    local blocks = {}
    if opts.thinking then
      blocks[#blocks + 1] = { type = "thinking", thinking = string.rep("hmm ", 50), signature = "s" }
    end
    blocks[#blocks + 1] = T.text("step " .. k)
    blocks[#blocks + 1] = T.tool_use("toolu_" .. k, names[(k - 1) % #names + 1],
                                     { path = "file" .. k .. ".c", pad = string.rep("p", 200) })
    msgs[#msgs + 1] = T.assistant(blocks)
    msgs[#msgs + 1] = T.user({ T.tool_result("toolu_" .. k, string.rep("line of output\n", size // 15)) })
  end
  local req = T.request{ tools = { T.tool("Read"), T.tool("Bash") }, max_tokens = 1000,
                         messages = msgs }
  if opts.edits then req.context_management = { edits = opts.edits } end
  return req
end

local function results(req)
  local out = {}
  for _, m in ipairs(req.messages) do
    if type(m.content) == "table" then
      for _, b in ipairs(m.content) do
        if b.type == "tool_result" then out[#out + 1] = b.content end
      end
    end
  end
  return out
end

local function cleared_count(req)
  local n = 0
  for _, c in ipairs(results(req)) do if c == PH then n = n + 1 end end
  return n
end

local function applied(out, typ)
  local cm = out.context_management
  if not cm or not cm.applied_edits then return nil end
  for _, a in ipairs(cm.applied_edits) do if a.type == typ then return a end end
end

local CTU = "clear_tool_uses_20250919"

T.test("below the default trigger (100k) nothing is cleared or reported", function()
  local out = T.run(p, "on_request", loop(10, 3000, { edits = { { type = CTU } } }), T.ctx())
  T.eq(cleared_count(out), 0)
  T.eq(out.context_management.applied_edits, nil)
end)

T.test("past the trigger: all but keep (3) go, in steps of 5, and the report counts them", function()
  local req = loop(12, 3000, { edits = { { type = CTU, trigger = { type = "input_tokens", value = 1000 } } } })
  local out = T.run(p, "on_request", req, T.ctx())
  -- 12 eligible - 3 kept = 9, stepped down to 5
  T.eq(cleared_count(out), 5)
  local r = results(out)
  for k = 1, 5 do T.eq(r[k], PH, "result " .. k) end
  for k = 6, 12 do T.ok(r[k] ~= PH, "result " .. k .. " kept") end
  local a = applied(out, CTU)
  T.eq(a.cleared_tool_uses, 5)
  T.ok(a.cleared_input_tokens > 5 * 500, "tokens freed: " .. a.cleared_input_tokens)
  T.eq(#conv.broken_pairs(out.messages, true), 0)
end)

T.test("the cut stays put between two steps, then moves by a whole step", function()
  local edits = { { type = CTU, trigger = { type = "input_tokens", value = 1000 } } }
  local counts = {}
  for n = 8, 14 do
    counts[#counts + 1] = cleared_count(T.run(p, "on_request", loop(n, 3000, { edits = edits }), T.ctx()))
  end
  -- eligible-keep = 5..11 -> 5,5,5,5,5,10,10
  T.eq(counts, { 5, 5, 5, 5, 5, 10, 10 })
end)

T.test("less than a whole step to clear: nothing moves", function()
  local req = loop(7, 3000, { edits = { { type = CTU, trigger = { type = "input_tokens", value = 1 } } } })
  T.eq(cleared_count(T.run(p, "on_request", req, T.ctx())), 0)
end)

T.test("step = 1 clears exactly to keep; keep is honoured", function()
  local p1 = T.load("context_editing", { step = 1 })
  local req = loop(9, 3000, { edits = { { type = CTU, keep = { type = "tool_uses", value = 2 },
                                          trigger = { type = "input_tokens", value = 1 } } } })
  local out = T.run(p1, "on_request", req, T.ctx())
  T.eq(cleared_count(out), 7)
end)

T.test("trigger by tool uses", function()
  local edits = { { type = CTU, trigger = { type = "tool_uses", value = 8 } } }
  T.eq(cleared_count(T.run(p, "on_request", loop(8, 100, { edits = edits }), T.ctx())), 0)
  T.eq(cleared_count(T.run(p, "on_request", loop(9, 100, { edits = edits }), T.ctx())), 5)
end)

T.test("clear_at_least: nothing unless that much would be freed", function()
  local function run(least)
    return T.run(p, "on_request", loop(12, 600, { edits = { { type = CTU,
      trigger = { type = "input_tokens", value = 1 },
      clear_at_least = { type = "input_tokens", value = least } } } }), T.ctx())
  end
  T.eq(cleared_count(run(100)), 5)
  T.eq(cleared_count(run(800)), 9)     -- the step frees too little: all 9 that may go
  T.eq(cleared_count(run(1000000)), 0)
  T.eq(run(1000000).context_management.applied_edits, nil)
end)

T.test("exclude_tools are never cleared nor counted for keep", function()
  local req = loop(16, 3000, { names = { "Read", "Bash" }, edits = { { type = CTU,
    trigger = { type = "input_tokens", value = 1 }, exclude_tools = { "Bash" } } } })
  local out = T.run(p, "on_request", req, T.ctx())
  -- 8 Read uses eligible - 3 = 5
  T.eq(cleared_count(out), 5)
  for i, m in ipairs(out.messages) do
    if m.role == "assistant" then
      local tu = m.content[2]
      local res = out.messages[i + 1].content[1].content
      if tu.name == "Bash" then T.ok(res ~= PH, "Bash result kept") end
    end
  end
end)

T.test("clear_tool_inputs true empties cleared calls' inputs; a list only those tools'", function()
  local function run(cti)
    return T.run(p, "on_request", loop(10, 3000, { names = { "Read", "Bash" }, edits = { { type = CTU,
      trigger = { type = "input_tokens", value = 1 }, clear_tool_inputs = cti } } }), T.ctx())
  end
  local out = run(true)
  T.eq(out.messages[2].content[2].input, {})
  T.eq(out.messages[2].content[2].id, "toolu_1")      -- the pair stays
  T.eq(out.messages[#out.messages - 1].content[2].input.path, "file10.c")
  out = run({ "Bash" })
  T.eq(out.messages[2].content[2].input.path, "file1.c") -- Read: input kept
  T.eq(out.messages[4].content[2].input, {})             -- Bash: emptied
  out = run(false)
  T.eq(out.messages[2].content[2].input.path, "file1.c")
end)

T.test("clear_thinking: keep N turns, 'all', and the default of 1", function()
  local function run(keep)
    local e = { type = "clear_thinking_20251015", keep = keep }
    return T.run(p, "on_request", loop(5, 100, { thinking = true, edits = { e } }), T.ctx())
  end
  local function with_thinking(out)
    local n = 0
    for _, m in ipairs(out.messages) do
      if m.role == "assistant" and m.content[1].type == "thinking" then n = n + 1 end
    end
    return n
  end
  local out = run({ type = "thinking_turns", value = 2 })
  T.eq(with_thinking(out), 2)
  T.eq(out.messages[#out.messages - 1].content[1].type, "thinking") -- the last turns keep it
  local a = applied(out, "clear_thinking_20251015")
  T.eq(a.cleared_thinking_turns, 3)
  T.ok(a.cleared_input_tokens > 0)
  T.eq(with_thinking(run("all")), 5)
  T.eq(run("all").context_management.applied_edits, nil)
  T.eq(with_thinking(run(nil)), 1)
end)

T.test("what Claude Code 2.1.332 sends (keep all) changes nothing", function()
  local req = T.fixture("claude-code/2.1.332/first-turn.json")
  local out = T.run(p, "on_request", req, T.ctx())
  T.eq(out.messages, req.messages)
  T.eq(out.context_management, req.context_management)
end)

T.test("operator edits apply to clients that never ask, with the window's share", function()
  local po = T.load("context_editing", { clear_tool_uses = true, trigger_share = 0.25, keep = 2 })
  local req = loop(9, 6000)
  T.eq(cleared_count(T.run(po, "on_request", req, T.ctx{ context_window = 1000000 })), 0)
  local out = T.run(po, "on_request", req, T.ctx{ context_window = 32768 })
  T.eq(cleared_count(out), 5)
  T.eq(applied(out, CTU).cleared_tool_uses, 5)
  -- the client's own edit wins over the operator's
  req.context_management = { edits = { { type = CTU, keep = { type = "tool_uses", value = 8 },
                                         trigger = { type = "input_tokens", value = 1 } } } }
  T.eq(cleared_count(T.run(po, "on_request", req, T.ctx{ context_window = 32768 })), 0)
end)

T.test("honour_client = false ignores the client's edits", function()
  local pn = T.load("context_editing", { honour_client = false })
  local req = loop(12, 3000, { edits = { { type = CTU, trigger = { type = "input_tokens", value = 1 } } } })
  T.eq(cleared_count(T.run(pn, "on_request", req, T.ctx())), 0)
end)

T.test("a client cannot forge applied_edits", function()
  local req = loop(2, 100)
  req.context_management = { edits = ax.json.array(), applied_edits = { { type = CTU, cleared_tool_uses = 99 } } }
  T.eq(T.run(p, "on_request", req, T.ctx()).context_management.applied_edits, nil)
end)

T.test("bad edits are a 400 naming the field", function()
  local function fails(edits, pattern)
    local e = T.fails(function() T.run(p, "on_request", loop(2, 100, { edits = edits }), T.ctx()) end)
    T.eq(e.fail.status, 400)
    T.ok(e.fail.message:find(pattern, 1, true), e.fail.message)
  end
  fails({ { type = "clear_everything" } }, "context_management.edits.0.type: unknown edit type 'clear_everything'")
  fails({ { type = CTU, keep = 3 } }, "context_management.edits.0.keep")
  fails({ { type = CTU, trigger = { type = "input_tokens", value = -1 } } }, "edits.0.trigger.value")
  fails({ { type = CTU, clear_tool_inputs = "yes" } }, "edits.0.clear_tool_inputs")
  fails({ { type = CTU, exclude_tools = "Bash" } }, "edits.0.exclude_tools")
  fails({ { type = "clear_thinking_20251015", keep = { type = "thinking_turns" } } }, "edits.0.keep.value")
  local req = loop(1, 10)
  req.context_management = "clear it"
  local e = T.fails(function() T.run(p, "on_request", req, T.ctx()) end)
  T.eq(e.fail.message, "context_management: expected an object")
  req.context_management = { edits = "all" }
  e = T.fails(function() T.run(p, "on_request", req, T.ctx()) end)
  T.eq(e.fail.message, "context_management.edits: expected an array")
end)
