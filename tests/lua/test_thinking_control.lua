-- thinking_control: thinking off on tool-result turns (or always) through enable_thinking and
-- llama-server's reasoning_budget_tokens; a thinking-only max_tokens answer is noted in the session
-- and the next request goes without thinking.
local T = require "anthroxy.testing"

local p = T.load("thinking_control")

local function tool_turn()
  return T.request{ max_tokens = 8000, thinking = { type = "enabled", budget_tokens = 4000 },
    tools = { T.tool("Read") }, messages = {
      T.user("read a.txt"), T.assistant{ T.tool_use("t1", "Read", { file_path = "a.txt" }) },
      T.user{ T.tool_result("t1", "hello") } } }
end

local function oreq(kw)
  return { model = "qwen3-8b", messages = { { role = "user", content = "x" } },
           chat_template_kwargs = kw }
end

T.test("tool-result turn: thinking off, upstream switches set", function()
  local ctx = T.ctx()
  local out = T.run(p, "on_request", tool_turn(), ctx)
  T.eq(out.thinking, { type = "disabled" })
  local up = T.run(p, "on_upstream_request", oreq({ enable_thinking = true }), ctx)
  T.eq(up.chat_template_kwargs, { enable_thinking = false })
  T.eq(up.reasoning_budget_tokens, 0)
end)

T.test("a first turn keeps thinking in mode tool_turns", function()
  local req = T.request{ thinking = { type = "enabled", budget_tokens = 2000 },
                         messages = { T.user("design a cache") } }
  local ctx = T.ctx()
  T.eq(T.run(p, "on_request", req, ctx), req)
  local up = T.run(p, "on_upstream_request", oreq(nil), ctx)
  T.eq(up.chat_template_kwargs, nil)
  T.eq(up.reasoning_budget_tokens, nil)
end)

T.test("mode always turns it off on a first turn too; mode off leaves tool turns alone", function()
  local always = T.load("thinking_control", { mode = "always" })
  local req = T.request{ messages = { T.user("design a cache") } }
  T.eq((T.run(always, "on_request", req, T.ctx())).thinking, { type = "disabled" })
  local off = T.load("thinking_control", { mode = "off" })
  local t = tool_turn()
  T.eq(T.run(off, "on_request", t, T.ctx()), t)
end)

T.test("reasoning_budget = false sends only the template switch", function()
  local q = T.load("thinking_control", { reasoning_budget = false })
  local ctx = T.ctx()
  T.run(q, "on_request", tool_turn(), ctx)
  local up = T.run(q, "on_upstream_request", oreq(nil), ctx)
  T.eq(up.chat_template_kwargs, { enable_thinking = false })
  T.eq(up.reasoning_budget_tokens, nil)
end)

T.test("a runaway answer is noted in the session; the next request goes without thinking", function()
  local session = T.session()
  local ctx = T.ctx{ session = session, stream = true }
  local resp = { id = "m", stop_reason = "max_tokens", usage = { output_tokens = 4096 },
                 content = { { type = "thinking", thinking_length = 15000 } } }
  T.run(p, "on_response", resp, ctx)
  T.eq(session.thinking_runaways, 1)
  local off = T.load("thinking_control", { mode = "off" })
  local req = T.request{ thinking = { type = "enabled", budget_tokens = 2000 },
                         messages = { T.user("design a cache") } }
  local out = T.run(off, "on_request", req, T.ctx{ session = session })
  T.eq(out.thinking, { type = "disabled" }, "retry with thinking off")
  -- a normal answer resets the count
  T.run(p, "on_response", { stop_reason = "end_turn",
    content = { { type = "text", text_length = 40 } } }, T.ctx{ session = session })
  T.eq(session.thinking_runaways, 0)
  T.eq(T.run(off, "on_request", req, T.ctx{ session = session }), req)
end)

T.test("not runaways: text after thinking, a tool call, a normal stop", function()
  local session = T.session()
  local ctx = T.ctx{ session = session }
  local thinking = { type = "thinking", thinking = "hmm" }
  T.run(p, "on_response", { stop_reason = "max_tokens",
    content = { thinking, { type = "text", text = "The answer" } } }, ctx)
  T.run(p, "on_response", { stop_reason = "max_tokens",
    content = { thinking, { type = "tool_use", id = "x", name = "Read", input = {} } } }, ctx)
  T.run(p, "on_response", { stop_reason = "end_turn", content = { thinking } }, ctx)
  T.eq(session.thinking_runaways, 0)
  T.run(p, "on_response", { stop_reason = "max_tokens",
    content = { thinking, { type = "text", text = "  " } } }, ctx)
  T.eq(session.thinking_runaways, 1, "whitespace is no answer")
end)

T.test("Claude Code's own retry message turns thinking off", function()
  local off = T.load("thinking_control", { mode = "off" })
  local req = T.request{ thinking = { type = "adaptive" }, messages = {
    T.user("design a cache"),
    T.user("Output token limit hit while you were still reasoning, before this response "
      .. "produced any text or tool call. That reasoning was not kept.") } }
  T.eq((T.run(off, "on_request", req, T.ctx())).thinking, { type = "disabled" })
end)

T.test("a thinking-only assistant turn sent back is a retry too", function()
  local off = T.load("thinking_control", { mode = "off" })
  local req = T.request{ messages = { T.user("design a cache"),
    T.assistant{ { type = "thinking", thinking = "long...", signature = "" } },
    T.user("go on") } }
  T.eq((T.run(off, "on_request", req, T.ctx())).thinking, { type = "disabled" })
  local fine = T.request{ messages = { T.user("design a cache"),
    T.assistant{ { type = "thinking", thinking = "ok", signature = "" }, T.text("Use an LRU.") },
    T.user("go on") } }
  T.eq(T.run(off, "on_request", fine, T.ctx()), fine)
end)

T.test("profiles: always for Qwen3-Coder, never for Llama", function()
  local q = T.load("thinking_control", { profiles = {
    ["qwen3%-coder"] = { thinking_control = { mode = "always" } },
    ["llama"] = { thinking_control = { mode = "off", retry_runaway = false } } } })
  local first = T.request{ messages = { T.user("hello") } }
  T.eq((T.run(q, "on_request", first, T.ctx{ upstream_model = "qwen3-coder-30b" })).thinking,
    { type = "disabled" })
  local t = tool_turn()
  T.eq(T.run(q, "on_request", t, T.ctx{ upstream_model = "llama-3.1" }), t)
end)

T.test("count_tokens is never changed", function()
  local t = tool_turn()
  T.eq(T.run(p, "on_request", t, T.ctx{ count_only = true }), t)
end)

T.test("decisions are counted by kind", function()
  local c0 = ((T.counters().default or {}).test or {})
  local t0 = c0.tool_turn or 0
  T.run(p, "on_request", tool_turn(), T.ctx())
  T.eq(T.counters().default.test.tool_turn, t0 + 1)
end)

T.test("a trailing system message: still a tool-result turn", function()
  local req = tool_turn()
  req.messages[#req.messages + 1] = { role = "system", content = "reminder" }
  T.eq((T.run(p, "on_request", req, T.ctx())).thinking, { type = "disabled" })
end)
