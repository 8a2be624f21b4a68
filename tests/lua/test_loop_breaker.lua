-- loop_breaker: the same call (name + normalised arguments) with the same result, counted in
-- a window of recent calls; note, then release of a forced tool_choice, then a finished turn.
local T = require "anthroxy.testing"
local conv = require "anthroxy.conv"

local p = T.load("loop_breaker")

-- A conversation where the model called Read(a.txt) `n` times, each answered by `result(i)`.
local function looping(n, opts)
  opts = opts or {}
  local msgs = { T.user("fix the bug") }
  for i = 1, n do
    local input = (opts.vary_order and i % 2 == 0) and { limit = 10, file_path = " a.txt " }
      or { file_path = "a.txt", limit = 10 }
    msgs[#msgs + 1] = T.assistant{ T.tool_use("t" .. i, "Read", input) }
    local res = opts.result and opts.result(i) or "line 1\nline 2"
    msgs[#msgs + 1] = T.user{ T.tool_result("t" .. i, res) }
  end
  return T.request{ max_tokens = 16000, tools = { T.tool("Read"), T.tool("Edit") },
                    tool_choice = opts.tool_choice, messages = msgs }
end

local function last_text(out)
  return conv.text(out.messages[#out.messages].content)
end

T.test("two repeats: nothing happens", function()
  local req = looping(2)
  local out = T.run(p, "on_request", req, T.ctx())
  T.eq(out, req)
end)

T.test("three repeats: a note to the model, tools untouched", function()
  local out = T.run(p, "on_request", looping(3), T.ctx())
  local t = last_text(out)
  T.ok(t:find("[anthroxy: loop detected]", 1, true), t)
  T.ok(t:find("3 times", 1, true), t)
  T.ok(t:find('Read({"file_path":"a.txt","limit":10})', 1, true), t)
  T.eq(out.tool_choice, nil)
  T.eq(out.max_tokens, 16000)
end)

T.test("key order and surrounding spaces do not hide a repeat", function()
  local out = T.run(p, "on_request", looping(3, { vary_order = true }), T.ctx())
  T.ok(last_text(out):find("3 times", 1, true))
end)

T.test("a new result each time is progress, not a loop", function()
  local req = looping(6, { result = function(i) return "attempt " .. i end })
  local out = T.run(p, "on_request", req, T.ctx())
  T.eq(out, req)
end)

T.test("a changed result restarts the count", function()
  local req = looping(5, { result = function(i) return i <= 3 and "old" or "new" end })
  local out = T.run(p, "on_request", req, T.ctx())
  T.eq(out, req)   -- only 2 with the newest result
end)

T.test("repeats spread over the window still count; outside it they do not", function()
  local msgs = { T.user("go") }
  local function call(i, name, input, res)
    msgs[#msgs + 1] = T.assistant{ T.tool_use("c" .. i, name, input) }
    msgs[#msgs + 1] = T.user{ T.tool_result("c" .. i, res) }
  end
  call(1, "Bash", { command = "make" }, "error 1")
  call(2, "Read", { file_path = "x" }, "x")
  call(3, "Bash", { command = "make" }, "error 1")
  call(4, "Read", { file_path = "y" }, "y")
  call(5, "Bash", { command = "make" }, "error 1")
  local req = T.request{ messages = msgs, tools = { T.tool("Bash"), T.tool("Read") } }
  local out = T.run(p, "on_request", req, T.ctx())
  T.ok(last_text(out):find("Bash", 1, true))
  local narrow = T.load("loop_breaker", { window = 4 })
  T.eq(T.run(narrow, "on_request", req, T.ctx()), req)
end)

T.test("four repeats: a forced tool_choice is released", function()
  local out = T.run(p, "on_request", looping(4, { tool_choice = { type = "any" } }), T.ctx())
  T.eq(out.tool_choice, { type = "auto" })
  T.ok(last_text(out):find("4 times", 1, true))
  local free = T.run(p, "on_request", looping(4), T.ctx())
  T.eq(free.tool_choice, nil)   -- nothing forced, nothing to release
end)

T.test("five repeats: the turn is finished with text for the user, without tools", function()
  local ctx = T.ctx()
  local out = T.run(p, "on_request", looping(5, { tool_choice = { type = "any" } }), ctx)
  T.eq(out.tool_choice, { type = "none" })
  T.ok(last_text(out):find("tell the user", 1, true))
  local oreq = { model = "m", messages = {}, tools = { { type = "function" } }, tool_choice = "none",
                 max_tokens = 16384 }
  local up = T.run(p, "on_upstream_request", oreq, ctx)
  T.eq(up.tools, nil)
  T.eq(up.tool_choice, nil)
  T.eq(up.max_tokens, 512, "capped upstream, after every on_request")
  local short = T.run(p, "on_upstream_request", { model = "m", messages = {}, max_tokens = 100 }, ctx)
  T.eq(short.max_tokens, 100)
end)

T.test("without a finish decision on_upstream_request leaves the tools", function()
  local oreq = { model = "m", messages = {}, tools = { { type = "function" } } }
  local up = T.run(p, "on_upstream_request", oreq, T.ctx())
  T.eq(#up.tools, 1)
end)

T.test("a conversation ending in text or a user question is not a loop", function()
  local req = looping(5)
  req.messages[#req.messages + 1] = T.assistant("I keep reading the file.")
  req.messages[#req.messages + 1] = T.user("ok, try something else")
  T.eq(T.run(p, "on_request", req, T.ctx()), req)
end)

T.test("the user's own message starts the count afresh", function()
  local req = looping(5)
  req.messages[#req.messages + 1] = T.assistant("I was repeating Read(a.txt).")
  req.messages[#req.messages + 1] = T.user("the file is right, look at b.txt after reading a.txt")
  for i = 6, 7 do
    req.messages[#req.messages + 1] = T.assistant{ T.tool_use("t" .. i, "Read",
      { file_path = "a.txt", limit = 10 }) }
    req.messages[#req.messages + 1] = T.user{ T.tool_result("t" .. i, "line 1\nline 2") }
  end
  T.eq(T.run(p, "on_request", req, T.ctx()), req, "2 since the user's message")
  req.messages[#req.messages + 1] = T.assistant{ T.tool_use("t8", "Read",
    { file_path = "a.txt", limit = 10 }) }
  req.messages[#req.messages + 1] = T.user{ T.tool_result("t8", "line 1\nline 2") }
  T.ok(last_text(T.run(p, "on_request", req, T.ctx())):find("3 times", 1, true))
end)

T.test("profiles change the thresholds per model", function()
  local q = T.load("loop_breaker", { profiles = { ["qwen"] = { repeats = 2 } } })
  local out = T.run(q, "on_request", looping(2), T.ctx{ upstream_model = "qwen2.5-7b" })
  T.ok(last_text(out):find("2 times", 1, true))
  local req = looping(2)
  T.eq(T.run(q, "on_request", req, T.ctx{ upstream_model = "llama3" }), req)
end)

T.test("each decision is counted (ax.count, /v1/experiments)", function()
  local before = (T.counters().default or {}).test or {}
  local n0, f0 = before.note or 0, before.finish or 0
  T.run(p, "on_request", looping(3), T.ctx())
  T.run(p, "on_request", looping(5), T.ctx())
  T.run(p, "on_request", looping(1), T.ctx())
  local c = T.counters().default.test
  T.eq(c.note, n0 + 1)
  T.eq(c.finish, f0 + 1)
end)

T.test("a trailing system message (Claude Code's reminders) does not hide the loop", function()
  local req = looping(5)
  req.messages[#req.messages + 1] = { role = "system", content = "The user hasn't heard from you." }
  local out = T.run(p, "on_request", req, T.ctx())
  T.eq(out.tool_choice, { type = "none" })
  T.ok(conv.text(out.messages[#out.messages - 1].content):find("tell the user", 1, true),
    "the note goes to the last user message")
  T.eq(out.messages[#out.messages].content, "The user hasn't heard from you.")
end)
