-- contamination_reset: after `faults` faults read from the conversation (leaked template
-- tokens, loops, malformed calls), the history is cut to the task and the last turns, with
-- a marker; the cut stays put on later turns; leaked tokens are scrubbed from what is kept.
local T = require "anthroxy.testing"
local conv = require "anthroxy.conv"

local p = T.load("contamination_reset")

-- Builds a conversation of turns; each spec: { text = ..., call = {name, input}, result = ...,
-- error = bool }.
local function convo(specs)
  local msgs = { T.user("the task: fix the build") }
  for i, sp in ipairs(specs) do
    local blocks = {}
    if sp.text then blocks[#blocks + 1] = T.text(sp.text) end
    local input = sp.input or { n = i }
    blocks[#blocks + 1] = T.tool_use("t" .. i, sp.name or "Bash", input)
    msgs[#msgs + 1] = T.assistant(blocks)
    msgs[#msgs + 1] = T.user{ T.tool_result("t" .. i, sp.result or ("ok " .. i), sp.error) }
  end
  return T.request{ tools = { T.tool("Bash"), T.tool("Read") }, messages = msgs }
end

local function leak(i) return { text = "step " .. i .. "<|im_start|>assistant" } end

T.test("two faults: nothing is cut", function()
  local req = convo{ {}, leak(2), {}, leak(4), {} }
  T.eq(T.run(p, "on_request", req, T.ctx()), req)
end)

T.test("three leaked tokens: task + last two turns + marker, tokens scrubbed", function()
  local req = convo{ {}, leak(2), {}, leak(4), {}, leak(6) }
  local out = T.run(p, "on_request", req, T.ctx())
  T.eq(#out.messages, 5)
  T.eq(out.messages[1].content[1].text, "the task: fix the build")
  T.ok(out.messages[1].content[2].text:find("[anthroxy: history reset]", 1, true))
  T.eq(conv.tool_use_ids(out.messages[2])[1], "t5")
  T.eq(out.messages[4].content[1].text, "step 6assistant", "scrubbed")
  T.eq(#conv.broken_pairs(out.messages), 0, "pairs intact")
end)

T.test("the cut stays at the same point on the next turns", function()
  local req = convo{ {}, leak(2), {}, leak(4), {}, leak(6), {}, {} }
  local out = T.run(p, "on_request", req, T.ctx())
  T.eq(conv.tool_use_ids(out.messages[2])[1], "t5", "same first kept turn as when it triggered")
  T.eq(#out.messages, 9)
end)

T.test("malformed calls reported by the client count", function()
  local bad = function(i) return { result = "<tool_use_error>InputValidationError: Bash failed: "
    .. "the required parameter `command` is missing</tool_use_error>", error = true,
    input = { cmd = i } } end
  local req = convo{ {}, bad(2), {}, bad(4), {}, bad(6) }
  local out = T.run(p, "on_request", req, T.ctx())
  T.eq(#out.messages, 5)
  -- an ordinary failing command is no fault
  local fail = function() return { result = "exit 1", error = true } end
  local req2 = convo{ {}, fail(), {}, fail(), {}, fail() }
  T.eq(T.run(p, "on_request", req2, T.ctx()), req2)
end)

T.test("a loop counts from its third identical turn", function()
  local same = { input = { command = "make" }, result = "error" }
  local req = convo{ {}, same, same, same, same, same }
  local out = T.run(p, "on_request", req, T.ctx())
  T.ok(#out.messages < #req.messages)
  local req2 = convo{ {}, same, same, same, same }   -- two loop faults only
  T.eq(T.run(p, "on_request", req2, T.ctx()), req2)
end)

T.test("settings: faults and keep_turns", function()
  local q = T.load("contamination_reset", { faults = 1, keep_turns = 1 })
  local req = convo{ {}, {}, leak(3) }
  local out = T.run(q, "on_request", req, T.ctx())
  T.eq(#out.messages, 3)
  T.eq(conv.tool_use_ids(out.messages[2])[1], "t3")
end)

T.test("count_tokens and short conversations are left alone", function()
  local req = convo{ {}, leak(2), {}, leak(4), {}, leak(6) }
  T.eq(T.run(p, "on_request", req, T.ctx{ count_only = true }), req)
  local short = T.request{ messages = { T.user("hi") } }
  T.eq(T.run(p, "on_request", short, T.ctx()), short)
end)

T.test("a new reset point and every cut request are counted", function()
  local c0 = ((T.counters().default or {}).test or {})
  local r0, k0 = c0.reset or 0, c0.cut or 0
  T.run(p, "on_request", convo{ {}, leak(2), {}, leak(4), {}, leak(6) }, T.ctx())
  T.run(p, "on_request", convo{ {}, leak(2), {}, leak(4), {}, leak(6), {}, {} }, T.ctx())
  local c = T.counters().default.test
  T.eq(c.reset, r0 + 1)
  T.eq(c.cut, k0 + 2)
end)
