-- observation_masking: the last `keep` tool results stay verbatim, older ones become a
-- one-line placeholder; the mask moves in batches of `step`, so consecutive turns between two
-- moves send the same prefix (the prompt cache survives); tool calls and pairs stay intact.
local T = require "anthroxy.testing"
local conv = require "anthroxy.conv"

local p = T.load("observation_masking")

-- n tool turns, each result a distinct 2000-character output; extra results the last turn
local function conversation(n, size)
  local msgs = { T.user("fix the bug") }
  for k = 1, n do
    msgs[#msgs + 1] = T.assistant({ T.text("step " .. k), T.tool_use("t" .. k, "Read", { k = k }) })
    msgs[#msgs + 1] = T.user({ T.tool_result("t" .. k, string.rep(string.char(96 + k % 26), size or 2000),
      k == 2) })
  end
  return T.request{ tools = { T.tool("Read") }, messages = msgs }
end

local function results(req)
  local out = {}
  for _, m in ipairs(req.messages) do
    if type(m.content) == "table" then
      for _, b in ipairs(m.content) do
        if b.type == "tool_result" then out[#out + 1] = b end
      end
    end
  end
  return out
end

local function masked(b)
  return type(b.content) == "string" and b.content:find("masked by the proxy", 1, true) ~= nil
end

T.test("up to keep results: nothing changes", function()
  local req = conversation(5)
  T.eq((T.run(p, "on_request", req, T.ctx())), req)
end)

T.test("past keep + step: the oldest step results are masked, the last keep verbatim", function()
  local req = conversation(12)          -- 12 results, keep 5, step 5: mask 5 (7 verbatim)
  local out = T.run(p, "on_request", req, T.ctx())
  local rs = results(out)
  T.eq(#rs, 12)
  for k = 1, 5 do T.ok(masked(rs[k]), "result " .. k .. " masked") end
  for k = 6, 12 do T.ok(not masked(rs[k]), "result " .. k .. " verbatim") end
  T.eq(rs[12].content, req.messages[25].content[1].content)
  T.ok(rs[2].is_error == true and rs[2].content:find("error output", 1, true),
    "an error result keeps is_error and says it was an error")
  T.ok(rs[1].content:find("about %d+ tokens"), "the placeholder says how much went")
  T.eq(#conv.broken_pairs(out.messages), 0)
  -- the tool calls (what the agent did) all stay
  for k = 1, 12 do T.eq(out.messages[2 * k].content[2].input.k, k) end
  T.ok(T.counters().default.test.masked >= 5, "counted")
end)

T.test("the mask moves in batches: the prefix is byte-identical between two moves", function()
  local moves = function() return T.counters().default.test.moves or 0 end
  local m0 = moves()
  local a = T.run(p, "on_request", conversation(11), T.ctx())  -- mask 5
  local b = T.run(p, "on_request", conversation(14), T.ctx())  -- still 5
  T.eq(moves(), m0, "no move between 11 and 14 results")
  local c = T.run(p, "on_request", conversation(15), T.ctx())  -- 10: a move
  T.eq(moves(), m0 + 1, "the 15th result moved the mask")
  for i = 1, #a.messages do T.eq(b.messages[i], a.messages[i], "message " .. i) end
  local rc = results(c)
  T.ok(masked(rc[10]) and not masked(rc[11]), "moved by a whole step")
end)

T.test("a move is counted when a reminder follows the newest results", function()
  local moves = function() return T.counters().default.test.moves or 0 end
  local req = conversation(15)
  table.insert(req.messages, { role = "system", content = "a reminder after the results" })
  local m0 = moves()
  T.run(p, "on_request", req, T.ctx())
  T.eq(moves(), m0 + 1, "the 15th result moved the mask, reminder or not")
end)

T.test("step 1 masks one more result each turn (the cache-hostile setting)", function()
  local one = T.load("observation_masking", { keep = 3, step = 1 })
  local out = T.run(one, "on_request", conversation(7), T.ctx())
  local rs = results(out)
  T.ok(masked(rs[4]) and not masked(rs[5]), "exactly keep verbatim")
end)

T.test("small results are not worth a placeholder", function()
  local out = T.run(p, "on_request", conversation(12, 8), T.ctx())
  for _, b in ipairs(results(out)) do T.ok(not masked(b), "8 characters kept") end
end)

T.test("mask_count: multiples of step, never below keep", function()
  local mc = p.module.mask_count
  T.eq(mc(5, 5, 5), 0)
  T.eq(mc(9, 5, 5), 0)
  T.eq(mc(10, 5, 5), 5)
  T.eq(mc(14, 5, 5), 5)
  T.eq(mc(15, 5, 5), 10)
  T.eq(mc(7, 3, 0), 4) -- step 0 reads as 1
end)
