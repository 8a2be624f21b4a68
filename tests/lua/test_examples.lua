-- The example policies of examples/policies/: each does what its README says, and none
-- leaves a tool_use without its tool_result.
local T = require "anthroxy.testing"
local ax = require "anthroxy"
local conv = require "anthroxy.conv"

local function example(name, settings)
  return T.load("examples/policies/" .. name .. "/" .. name .. ".lua", settings)
end

local function conversation(n, size)
  local msgs = { T.user("the task") }
  for k = 1, n do
    msgs[#msgs + 1] = T.assistant({ T.text("step " .. k), T.tool_use("t" .. k, "Read", { k = k }) })
    msgs[#msgs + 1] = T.user({ T.tool_result("t" .. k, string.rep("x", size)) })
  end
  return T.request{ tools = { T.tool("Read") }, messages = msgs }
end

T.test("token_budget_window keeps the newest turns within the budget", function()
  local p = example("token_budget_window", { budget_tokens = 3000 })
  local req = conversation(20, 2000)
  local ctx = T.ctx()
  local out = T.run(p, "on_request", req, ctx)
  T.ok(ax.calibrated(ax.request_tokens(out), ctx) <= 3000, "within the budget")
  T.ok(#out.messages < #req.messages, "turns dropped")
  T.eq(out.messages[#out.messages], req.messages[#req.messages])
  T.eq(out.messages[1].content[1].text, "the task")
  T.ok(conv.is_marker_text(out.messages[1].content[2].text), "marker")
  T.eq(#conv.broken_pairs(out.messages), 0)
  local small = conversation(2, 100)
  T.eq((T.run(p, "on_request", small, T.ctx())), small, "under the budget: untouched")
end)

T.test("tool_narrowing sends the relevant tools only", function()
  local p = example("tool_narrowing", { max_tools = 3, always = "Read" })
  local tools = { T.tool("Read"), T.tool("Bash"), T.tool("WebFetch"), T.tool("NotebookEdit"),
                  T.tool("TodoWrite"), T.tool("Grep") }
  tools[3].description = "Fetch a web page by its URL"
  local req = T.request{ tools = tools, messages = {
    T.user("start"), T.assistant({ T.tool_use("g1", "Grep", { pattern = "x" }) }),
    T.user({ T.tool_result("g1", "none"), T.text("now fetch the page at that url") }) } }
  local out = T.run(p, "on_request", req, T.ctx())
  local names = {}
  for _, t in ipairs(out.tools) do names[#names + 1] = t.name end
  T.eq(names, { "Read", "WebFetch", "Grep" })
  local few = T.request{ tools = { T.tool("Read") }, messages = { T.user("hi") } }
  T.eq((T.run(p, "on_request", few, T.ctx())).tools, few.tools)
end)

T.test("loop_breaker tells the model, then stops tool calls", function()
  local p = example("loop_breaker")
  local function looped(n)
    local msgs = { T.user("go") }
    for k = 1, n do
      msgs[#msgs + 1] = T.assistant({ T.tool_use("l" .. k, "Bash", { cmd = "make" }) })
      msgs[#msgs + 1] = T.user({ T.tool_result("l" .. k, "error 2") })
    end
    return T.request{ tools = { T.tool("Bash") }, messages = msgs }
  end
  local out2 = T.run(p, "on_request", looped(2), T.ctx())
  T.eq(#out2.messages[#out2.messages].content, 1, "two repeats: no note")
  local out3 = T.run(p, "on_request", looped(3), T.ctx())
  local last = out3.messages[#out3.messages].content
  T.ok(last[2].text:find("loop detected", 1, true), "note appended")
  T.eq(out3.tool_choice, nil)
  local out5 = T.run(p, "on_request", looped(5), T.ctx())
  T.eq(out5.tool_choice, { type = "none" })
end)
