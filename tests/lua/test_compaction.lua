-- compaction: the trigger, one summary call with the policy's prompt and the client's
-- instructions, the cut that keeps the current turn (and its tool pairs), pause, a failed
-- summary, and compaction blocks sent back in the history.
local T = require "anthroxy.testing"
local ax = require "anthroxy"
local conv = require "anthroxy.conv"

local p = T.load("compaction")
local PREFIX = p.module.SUMMARY_PREFIX

local function loop(n, size, edit)
  local msgs = { T.user("Port the parser to Rust") }
  for k = 1, n do
    msgs[#msgs + 1] = T.assistant({ T.text("step " .. k), T.tool_use("toolu_" .. k, "Read", { path = "f" .. k }) })
    msgs[#msgs + 1] = T.user({ T.tool_result("toolu_" .. k, string.rep("x", size)) })
  end
  local req = T.request{ tools = { T.tool("Read") }, max_tokens = 100, messages = msgs }
  if edit then req.context_management = { edits = { edit } } end
  return req
end

local calls
local function summariser(text)
  calls = {}
  T.fake_complete(function(oreq)
    calls[#calls + 1] = oreq
    if text == nil then return nil, "upstream down" end
    return { choices = { { message = { role = "assistant", content = text } } },
             usage = { prompt_tokens = 900, completion_tokens = 40 } }
  end)
end

local EDIT = { type = "compact_20260112", trigger = { type = "input_tokens", value = 1000 } }

T.test("below the trigger: no call, nothing changes", function()
  summariser("S")
  local req = loop(2, 100, { type = "compact_20260112" })
  local out = T.run(p, "on_request", req, T.ctx())
  T.eq(#calls, 0)
  T.eq(out.messages, req.messages)
  T.eq(out.context_management.compaction, nil)
end)

T.test("past the trigger: one summary call, the head replaced, the current turn kept", function()
  summariser("THE SUMMARY")
  local req = loop(6, 2000, EDIT)
  local out = T.run(p, "on_request", req, T.ctx())
  T.eq(#calls, 1)
  T.eq(calls[1].messages[1].role, "system")
  T.ok(calls[1].messages[1].content:find("compacting the transcript", 1, true))
  T.ok(calls[1].messages[2].content:find("Port the parser to Rust", 1, true), "transcript has the task")
  T.ok(calls[1].messages[2].content:find("[called tool Read", 1, true))
  T.eq(out.context_management.compaction,
       { content = "THE SUMMARY", pause = false, usage = { input_tokens = 900, output_tokens = 40 } })
  -- summary, then the last assistant tool_use and its result
  T.eq(#out.messages, 3)
  T.eq(out.messages[1].content[1].text, PREFIX .. "THE SUMMARY")
  T.eq(out.messages[2].content[2].id, "toolu_6")
  T.eq(out.messages[3].content[1].tool_use_id, "toolu_6")
  T.eq(#conv.broken_pairs(out.messages, true), 0)
end)

T.test("instructions go to the summariser; pause keeps the conversation for the core", function()
  summariser("S2")
  local e = { type = "compact_20260112", trigger = { type = "input_tokens", value = 1000 },
              instructions = "Keep every file path.", pause_after_compaction = true }
  local req = loop(6, 2000, e)
  local out = T.run(p, "on_request", req, T.ctx())
  T.ok(calls[1].messages[1].content:find("Additional instructions:\nKeep every file path.", 1, true))
  T.eq(out.context_management.compaction.content, "S2")
  T.eq(out.context_management.compaction.pause, true)
end)

T.test("a failed summary reports content null and keeps the conversation", function()
  summariser(nil)
  local req = loop(6, 2000, EDIT)
  local out = T.run(p, "on_request", req, T.ctx())
  T.eq(out.context_management.compaction.content, ax.json.null)
  T.eq(#out.messages, #req.messages)
end)

T.test("trigger_share caps the trigger to the real window", function()
  summariser("S")
  local ps = T.load("compaction", { trigger_share = 0.5 })
  local req = loop(6, 4000, { type = "compact_20260112" }) -- default 150k would never fire
  T.eq(T.run(p, "on_request", req, T.ctx{ context_window = 4096 }).context_management.compaction, nil)
  T.eq(T.run(ps, "on_request", req, T.ctx{ context_window = 4096 }).context_management.compaction.content, "S")
end)

T.test("count_tokens never calls the summariser", function()
  summariser("S")
  T.run(p, "on_request", loop(6, 2000, EDIT), T.ctx{ count_only = true })
  T.eq(#calls, 0)
end)

T.test("a compaction block sent back replaces everything before it", function()
  summariser("unused")
  local msgs = loop(3, 100).messages
  msgs[#msgs + 1] = T.assistant({ { type = "compaction", content = "EARLIER" }, T.text("Going on.") })
  msgs[#msgs + 1] = T.user("next step")
  local out = T.run(p, "on_request", T.request{ messages = msgs }, T.ctx())
  T.eq(#calls, 0)
  T.eq(#out.messages, 3)
  T.eq(out.messages[1], { role = "user", content = { { type = "text", text = PREFIX .. "EARLIER" } } })
  T.eq(out.messages[2].content, { { type = "text", text = "Going on." } })
  T.eq(out.messages[3].content, "next step")
end)

T.test("a compaction block alone in its message: the summary joins the next user turn", function()
  local msgs = loop(2, 100).messages
  msgs[#msgs + 1] = T.assistant({ { type = "compaction", content = "EARLIER" } })
  msgs[#msgs + 1] = T.user("go on")
  local out = T.run(p, "on_request", T.request{ messages = msgs }, T.ctx())
  T.eq(#out.messages, 1)
  T.eq(out.messages[1].content, { { type = "text", text = PREFIX .. "EARLIER" }, { type = "text", text = "go on" } })
end)

T.test("a failed (null) compaction block is a no-op", function()
  local msgs = loop(2, 100).messages
  msgs[#msgs + 1] = T.assistant({ { type = "compaction", content = ax.json.null }, T.text("ok") })
  msgs[#msgs + 1] = T.user("go on")
  local out = T.run(p, "on_request", T.request{ messages = msgs }, T.ctx())
  T.eq(#out.messages, #msgs)
  T.eq(out.messages[#msgs - 1].content, { { type = "text", text = "ok" } })
end)

T.test("a malformed compaction block is left for the translator to refuse", function()
  local msgs = { T.assistant({ { type = "compaction", content = 7 } }), T.user("go on") }
  local out = T.run(p, "on_request", T.request{ messages = msgs }, T.ctx())
  T.eq(out.messages[1].content[1].content, 7)
end)

T.test("the compaction parameter: the whole conversation, instructions replace the prompt", function()
  summariser("ALL OF IT")
  local req = loop(2, 100)
  req.compaction = { type = "summarize", instructions = "Only the file names." }
  local out = T.run(p, "on_request", req, T.ctx())
  T.eq(#calls, 1)
  T.eq(calls[1].messages[1].content, "Only the file names.")
  T.ok(calls[1].messages[2].content:find("tool result", 1, true), "the last turn is summarised too")
  T.eq(out.context_management, { compaction = { content = "ALL OF IT", pause = true,
                                                 usage = { input_tokens = 900, output_tokens = 40 } } })
  T.eq(out.compaction, nil)
  req.compaction = { type = "summarize", instructions = "   " }
  T.run(p, "on_request", req, T.ctx())
  T.ok(calls[2].messages[1].content:find("compacting the transcript", 1, true), "blank: the default prompt")
  req.context_management = { edits = ax.json.array() }
  local e = T.fails(function() T.run(p, "on_request", req, T.ctx()) end)
  T.eq(e.fail.message, "compaction: cannot be combined with context_management")
  req.context_management = nil
  req.compaction = { type = "squash" }
  e = T.fails(function() T.run(p, "on_request", req, T.ctx()) end)
  T.eq(e.fail.message, "compaction.type: expected 'summarize'")
end)

T.test("bad compact edits are a 400 naming the field", function()
  for _, c in ipairs({
    { { type = "compact_20260112", trigger = { type = "tool_uses", value = 3 } }, "edits.0.trigger" },
    { { type = "compact_20260112", pause_after_compaction = "yes" }, "edits.0.pause_after_compaction" },
    { { type = "compact_20260112", instructions = 7 }, "edits.0.instructions" },
  }) do
    local e = T.fails(function() T.run(p, "on_request", loop(1, 10, c[1]), T.ctx()) end)
    T.eq(e.fail.status, 400)
    T.ok(e.fail.message:find("context_management." .. c[2], 1, true), e.fail.message)
  end
end)
