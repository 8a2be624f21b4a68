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

T.test("summarising_pruner replaces the middle with the upstream's summary", function()
  local p = example("summarising_pruner", { keep_last = 2 })
  local asked
  T.fake_complete(function(oreq)
    asked = oreq
    return { choices = { { message = { role = "assistant", content = "- read files t1..t9" } } } }
  end)
  local req = conversation(10, 2000)
  local ctx = T.ctx{ context_window = math.floor(ax.request_tokens(req) / 0.8) }
  local out = T.run(p, "on_request", req, ctx)
  T.ok(asked and asked.messages[2].content:find("called Read", 1, true), "the transcript was sent")
  T.eq(#out.messages, 3, "head + the last turn")
  local note = out.messages[1].content[2].text
  T.ok(note:find("- read files t1..t9", 1, true), "the summary is in the first user message")
  T.eq(#conv.broken_pairs(out.messages), 0)
  T.fake_complete(function() return nil, "upstream busy" end)
  local out2 = T.run(p, "on_request", req, T.ctx{ context_window = ctx.context_window })
  T.eq(#out2.messages, 3, "dropped anyway without a summary")
  T.ok(conv.is_marker_text(out2.messages[1].content[2].text), "with the plain marker")
  T.fake_complete(nil)
end)

