-- drop_middle (the old proxy's pruning): below the threshold nothing; above it the head and
-- the last keep_last messages stay, middle units go (tool results first) until the target
-- fits; pairs stay intact; the note counts what went; an oversized tail gets its long tool
-- results cut and the whole middle dropped.
local T = require "anthroxy.testing"
local ax = require "anthroxy"
local conv = require "anthroxy.conv"

local p = T.load("drop_middle")

local function conversation(n, size)
  local msgs = { T.user("the task") }
  for k = 1, n do
    msgs[#msgs + 1] = T.assistant({ T.text("step " .. k), T.tool_use("t" .. k, "Read", { k = k }) })
    msgs[#msgs + 1] = T.user({ T.tool_result("t" .. k, string.rep("x", size)) })
  end
  return T.request{ tools = { T.tool("Read") }, messages = msgs }
end

T.test("under the threshold: untouched", function()
  local req = conversation(10, 400)
  local window = math.floor(ax.request_tokens(req) / 0.5)
  T.eq((T.run(p, "on_request", req, T.ctx{ context_window = window })), req)
end)

T.test("over the threshold: down to the target, head and tail kept, pairs intact", function()
  local req = conversation(20, 2000)
  local window = math.floor(ax.request_tokens(req) / 0.8)
  local ctx = T.ctx{ context_window = window }
  local out = T.run(p, "on_request", req, ctx)
  T.ok(ax.request_tokens(out) <= 0.65 * window, "fits the target")
  T.ok(#out.messages < #req.messages, "messages dropped")
  T.eq(out.messages[1].content[1].text, "the task")
  T.ok(conv.is_marker_text(out.messages[1].content[2].text), "the note")
  T.ok(out.messages[1].content[2].text:find("earlier messages", 1, true), "counts what went")
  for k = 0, 7 do
    T.eq(out.messages[#out.messages - k], req.messages[#req.messages - k], "tail " .. k)
  end
  T.eq(#conv.broken_pairs(out.messages), 0)
  T.ok(T.counters().default.test.prunes >= 1, "counted")
end)

T.test("the cut lands on the target every turn: the note changes with each turn", function()
  local r1 = conversation(20, 2000)
  local window = math.floor(ax.request_tokens(r1) / 0.8)
  local o1 = T.run(p, "on_request", r1, T.ctx{ context_window = window })
  local o2 = T.run(p, "on_request", conversation(21, 2000), T.ctx{ context_window = window })
  T.ok(o1.messages[1].content[2].text ~= o2.messages[1].content[2].text,
    "the first message differs: the prompt cache is lost (what prune's steps avoid)")
end)

T.test("a tail too big alone: its long results are cut, the middle goes", function()
  local wide = T.load("drop_middle", { keep_last = 20 })
  local req = conversation(12, 40000)   -- 25 messages, the last 20 are 5/6 of the prompt
  local window = math.floor(ax.request_tokens(req) / 0.9)
  local out = T.run(wide, "on_request", req, T.ctx{ context_window = window })
  T.eq(#out.messages, 1 + 20)
  local last = out.messages[#out.messages].content[1].content
  T.ok(type(last) == "string" and last:find("...[TRUNCATED]...", 1, true), "cut")
  T.eq(#last, 1000 + #"\n...[TRUNCATED]...\n" + 500)
  T.eq(#conv.broken_pairs(out.messages), 0)
end)

T.test("a short conversation is left alone", function()
  local req = conversation(1, 60000)
  local window = math.floor(ax.request_tokens(req) / 0.9)
  T.eq((T.run(p, "on_request", req, T.ctx{ context_window = window })), req)
end)
