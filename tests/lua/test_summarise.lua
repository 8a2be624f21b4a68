-- summarise: past the threshold the middle is replaced by the upstream's summary (ax.complete,
-- at temperature 0); the summarised part grows in steps of `step` turns, so consecutive
-- requests between two moves send the same transcript; a failed summary still drops the
-- middle with the plain marker; count_tokens requests never call the upstream.
local T = require "anthroxy.testing"
local ax = require "anthroxy"
local conv = require "anthroxy.conv"

local function conversation(n, size)
  local msgs = { T.user("the task") }
  for k = 1, n do
    msgs[#msgs + 1] = T.assistant({ T.text("step " .. k), T.tool_use("t" .. k, "Read", { k = k }) })
    msgs[#msgs + 1] = T.user({ T.tool_result("t" .. k, string.rep("x", size)) })
  end
  return T.request{ tools = { T.tool("Read") }, messages = msgs }
end

local asked
local function fake_ok()
  asked = {}
  T.fake_complete(function(oreq)
    asked[#asked + 1] = oreq
    return { choices = { { message = { role = "assistant", content = "- read files t1..t9" } } } }
  end)
end

T.test("the middle becomes the upstream's summary, pairs intact", function()
  local p = T.load("summarise", { keep_last = 2, step = 1 })
  fake_ok()
  local req = conversation(10, 2000)
  local ctx = T.ctx{ context_window = math.floor(ax.request_tokens(req) / 0.8) }
  local out = T.run(p, "on_request", req, ctx)
  T.ok(asked[1] and asked[1].messages[2].content:find("called Read", 1, true),
    "the transcript was sent")
  T.eq(asked[1].temperature, 0)
  T.eq(#out.messages, 3, "head + the last turn")
  local note = out.messages[1].content[2].text
  T.ok(note:find("- read files t1..t9", 1, true), "the summary is in the first user message")
  T.eq(#conv.broken_pairs(out.messages), 0)
  T.eq(T.counters().default.test.summaries, 1)
  T.fake_complete(function() return nil, "upstream busy" end)
  local out2 = T.run(p, "on_request", req, T.ctx{ context_window = ctx.context_window })
  T.eq(#out2.messages, 3, "dropped anyway without a summary")
  T.ok(conv.is_marker_text(out2.messages[1].content[2].text), "with the plain marker")
  T.eq(T.counters().default.test.summary_failures, 1)
  T.fake_complete(nil)
end)

T.test("the summarised part grows in steps: the same transcript between two moves", function()
  local p = T.load("summarise", { keep_last = 2, step = 4 })
  fake_ok()
  local r9 = conversation(9, 2000)     -- 8 middle units: 8 summarised
  local window = math.floor(ax.request_tokens(r9) / 0.8)
  local o9 = T.run(p, "on_request", r9, T.ctx{ context_window = window })
  local o11 = T.run(p, "on_request", conversation(11, 2000), T.ctx{ context_window = window })
  T.eq(asked[1].messages[2].content, asked[2].messages[2].content, "same transcript")
  T.eq(o9.messages[1], o11.messages[1], "same first message: the prompt prefix holds")
  T.eq(#o11.messages, 1 + 2 * 2 + 2, "units 9 and 10 wait for the next step")
  local o13 = T.run(p, "on_request", conversation(13, 2000), T.ctx{ context_window = window })
  T.ok(asked[3].messages[2].content ~= asked[2].messages[2].content, "moved at 12 units")
  T.eq(#o13.messages, 3)
  T.fake_complete(nil)
end)

T.test("count_tokens and small conversations never call the upstream", function()
  local p = T.load("summarise")
  fake_ok()
  local req = conversation(10, 2000)
  local window = math.floor(ax.request_tokens(req) / 0.8)
  T.eq((T.run(p, "on_request", req, T.ctx{ context_window = window, count_only = true })), req)
  T.eq((T.run(p, "on_request", conversation(2, 10), T.ctx{ context_window = window })).messages,
    conversation(2, 10).messages)
  T.eq(#asked, 0)
  T.fake_complete(nil)
end)
