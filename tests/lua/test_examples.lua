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

