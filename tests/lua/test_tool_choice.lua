-- tool_choice: off by default; the seed's two forcing rules; never over an explicit client
-- choice or without tools; capped consecutive forced turns; released on a loop or a nearly
-- full context.
local T = require "anthroxy.testing"
local ax = require "anthroxy"

local off = T.load("tool_choice")
local p = T.load("tool_choice", { enabled = true })
local tools = { T.tool("Bash"), T.tool("Read") }

local function loop_req(inputs, fields)
  local msgs = { T.user("make the tests pass") }
  for k, input in ipairs(inputs) do
    msgs[#msgs + 1] = T.assistant({ T.tool_use("t" .. k, "Bash", input) })
    msgs[#msgs + 1] = T.user({ T.tool_result("t" .. k, "FAILED 1 test") })
  end
  local req = T.request{ tools = tools, messages = msgs }
  for k, v in pairs(fields or {}) do req[k] = v end
  return req
end

local text_only = T.request{ tools = tools, messages = {
  T.user("fix it"), T.assistant({ T.text("The bug is in parse(); I would change line 3.") }),
  T.user("go on") } }

T.test("shipped off: nothing forced", function()
  local out = T.run(off, "on_request", text_only, T.ctx())
  T.eq(out.tool_choice, nil)
end)

T.test("forced after a text-only assistant turn", function()
  local ctx = T.ctx()
  local out = T.run(p, "on_request", text_only, ctx)
  T.eq(out.tool_choice, { type = "any" })
  T.eq(ctx.session.forced_tool_turns, 0, "the monitor counts, on the answer, not the policy")
end)

T.test("forced in an active tool loop", function()
  local out = T.run(p, "on_request", loop_req({ { cmd = "make" }, { cmd = "make test" } }), T.ctx())
  T.eq(out.tool_choice, { type = "any" })
end)

T.test("not forced on a first turn", function()
  local req = T.request{ tools = tools, messages = { T.user("hello") } }
  T.eq((T.run(p, "on_request", req, T.ctx())).tool_choice, nil)
end)

T.test("an explicit client tool_choice is never overridden", function()
  for _, choice in ipairs({ { type = "auto" }, { type = "none" }, { type = "tool", name = "Read" } }) do
    local req = loop_req({ { cmd = "make" } }, { tool_choice = choice })
    local ctx = T.ctx{ session = T.session{ forced_tool_turns = 0 } }
    local out = T.run(p, "on_request", req, ctx)
    T.eq(out.tool_choice, choice)
  end
end)

T.test("never without tools", function()
  local req = T.request{ messages = text_only.messages }
  T.eq((T.run(p, "on_request", req, T.ctx())).tool_choice, nil)
  local empty = T.request{ tools = ax.json.array(), messages = text_only.messages }
  T.eq((T.run(p, "on_request", empty, T.ctx())).tool_choice, nil)
end)

T.test("capped consecutive forced turns, then released once", function()
  local req = loop_req({ { cmd = "a" }, { cmd = "b" } })
  local count = 0
  local seen = {}
  for turn = 1, 5 do
    local ctx = T.ctx{ session = T.session{ forced_tool_turns = count } }
    local out = T.run(p, "on_request", req, ctx)
    seen[turn] = out.tool_choice and "forced" or "free"
    -- What the monitor does with the answer (core/monitor.c ax_session_note_tool_calls).
    count = out.tool_choice and count + 1 or 0
  end
  T.eq(seen, { "forced", "forced", "forced", "free", "forced" })
  local q = T.load("tool_choice", { enabled = true, max_forced = 1 })
  local ctx = T.ctx{ session = T.session{ forced_tool_turns = 1 } }
  T.eq((T.run(q, "on_request", req, ctx)).tool_choice, nil)
end)

T.test("released when the same tool call repeats", function()
  local same = { cmd = "pytest -x" }
  local looping = loop_req({ { cmd = "ls" }, same, same, same })
  T.eq((T.run(p, "on_request", looping, T.ctx())).tool_choice, nil)
  local progressing = loop_req({ same, same, { cmd = "pytest -x tests/a.py" } })
  T.eq((T.run(p, "on_request", progressing, T.ctx())).tool_choice, { type = "any" })
  local twice = loop_req({ { cmd = "ls" }, same, same })
  T.eq((T.run(p, "on_request", twice, T.ctx())).tool_choice, { type = "any" }, "2 < loop_repeats")
end)

T.test("released when the monitor's fingerprints repeat", function()
  local req = loop_req({ { cmd = "a" }, { cmd = "b" } })
  local fp = "00ff00ff00ff00ff"
  local ctx = T.ctx{ session = T.session{ tool_fingerprints = { "1111222233334444", fp, fp, fp } } }
  T.eq((T.run(p, "on_request", req, ctx)).tool_choice, nil)
  local ctx2 = T.ctx{ session = T.session{ tool_fingerprints = { fp, fp, "1111222233334444" } } }
  T.eq((T.run(p, "on_request", req, ctx2)).tool_choice, { type = "any" })
end)

T.test("released when the context is nearly full", function()
  local req = loop_req({ { cmd = "a" }, { cmd = "b" } })
  local used = ax.request_tokens(req)
  local full = T.ctx{ context_window = math.floor(used / 0.9) }
  T.eq((T.run(p, "on_request", req, full)).tool_choice, nil)
  local roomy = T.ctx{ context_window = math.floor(used / 0.8) }
  T.eq((T.run(p, "on_request", req, roomy)).tool_choice, { type = "any" })
end)
