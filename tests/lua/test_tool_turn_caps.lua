-- tool_turn_caps: caps max_tokens and temperature on tool turns only, per model profile
-- (anthroxy.profiles: patterns on the model name, the more specific pattern winning).
local T = require "anthroxy.testing"
local profiles = require "anthroxy.profiles"

local PROFILES = {
  ["qwen3"] = { temperature = 0.6, tool_turn_caps = { max_tokens = 6000 } },
  ["qwen3%-coder"] = { tool_turn_caps = { max_tokens = 4096, temperature = 0.3 } },
  ["llama"] = { temperature = 0.1, tool_turn_caps = { max_tokens = 2048 } },
}
local p = T.load("tool_turn_caps", { profiles = PROFILES })
local plain = T.load("tool_turn_caps")

local function tool_turn(fields)
  local req = T.request{ max_tokens = 32000, tools = { T.tool("Read") }, messages = {
    T.user("read a.txt"),
    T.assistant{ T.tool_use("t1", "Read", { file_path = "a.txt" }) },
    T.user{ T.tool_result("t1", "hello") },
  } }
  for k, v in pairs(fields or {}) do req[k] = v end
  return req
end

T.test("a tool turn gets the default caps", function()
  local out = T.run(plain, "on_request", tool_turn(), T.ctx{ upstream_model = "some-model" })
  T.eq(out.max_tokens, 8192)
  T.eq(out.temperature, 0.2)
end)

T.test("a turn that is not a tool turn is left alone", function()
  local req = T.request{ max_tokens = 32000, temperature = 0.9, tools = { T.tool("Read") },
                         messages = { T.user("hello") } }
  local out = T.run(plain, "on_request", req, T.ctx())
  T.eq(out.max_tokens, 32000)
  T.eq(out.temperature, 0.9)
end)

T.test("lower client values are kept", function()
  local out = T.run(plain, "on_request", tool_turn{ max_tokens = 1000, temperature = 0.1 },
    T.ctx())
  T.eq(out.max_tokens, 1000)
  T.eq(out.temperature, 0.1)
end)

T.test("the thinking budget stays under the capped max_tokens", function()
  local out = T.run(plain, "on_request",
    tool_turn{ thinking = { type = "enabled", budget_tokens = 20000 } }, T.ctx())
  T.eq(out.max_tokens, 8192)
  T.eq(out.thinking.budget_tokens, 8191)
end)

T.test("count_tokens requests are not touched", function()
  local out = T.run(plain, "on_request", tool_turn(), T.ctx{ count_only = true })
  T.eq(out.max_tokens, 32000)
  T.eq(out.temperature, nil)
end)

T.test("profiles: Qwen3-Coder and Llama get their own caps", function()
  local coder = T.run(p, "on_request", tool_turn(),
    T.ctx{ upstream_model = "Qwen3-Coder-30B-A3B-Instruct-Q4_K_M.gguf" })
  T.eq(coder.max_tokens, 4096)
  T.eq(coder.temperature, 0.3)   -- qwen3%-coder's own wins over qwen3's shared 0.6
  local qwen = T.run(p, "on_request", tool_turn(), T.ctx{ upstream_model = "qwen3-8b" })
  T.eq(qwen.max_tokens, 6000)
  T.eq(qwen.temperature, 0.6)
  local llama = T.run(p, "on_request", tool_turn(), T.ctx{ upstream_model = "Llama-3.1-8B" })
  T.eq(llama.max_tokens, 2048)
  T.eq(llama.temperature, 0.1)
  local other = T.run(p, "on_request", tool_turn(), T.ctx{ upstream_model = "mistral-small" })
  T.eq(other.max_tokens, 8192)
  T.eq(other.temperature, 0.2)
end)

T.test("profiles: without an upstream model the client's model is matched", function()
  local out = T.run(p, "on_request", tool_turn(), T.ctx{ model = "llama-local" })
  T.eq(out.max_tokens, 2048)
end)

T.test("profiles.resolve: order, shared and own keys, bad patterns ignored", function()
  local s, matched = profiles.resolve({ a = 1, b = 2, profiles = {
    ["x"] = { a = 10, pol = { b = 20 }, other = { a = 99 } },
    ["x%-y"] = { a = 11 },
    ["[unclosed"] = { a = 666 },
  } }, "pol", "X-Y-model")
  T.eq(s.a, 11)
  T.eq(s.b, 20)
  T.eq(matched, "x,x%-y")
  local none, m2 = profiles.resolve({ a = 1 }, "pol", "anything")
  T.eq(none.a, 1)
  T.eq(m2, "")
end)

T.test("profiles.model_name prefers the OpenAI request's model", function()
  T.eq(profiles.model_name({ upstream_model = "u", model = "c" }, { model = "mapped" }), "mapped")
  T.eq(profiles.model_name({ upstream_model = "u", model = "c" }), "u")
  T.eq(profiles.model_name({ model = "c" }), "c")
end)

T.test("caps are counted", function()
  local c0 = ((T.counters().default or {}).test or {})
  local m0 = c0.max_tokens or 0
  T.run(plain, "on_request", tool_turn(), T.ctx())
  T.eq(T.counters().default.test.max_tokens, m0 + 1)
end)

T.test("a trailing system message: still a tool turn", function()
  local req = tool_turn()
  req.messages[#req.messages + 1] = { role = "system", content = "reminder" }
  T.eq((T.run(plain, "on_request", req, T.ctx())).max_tokens, 8192)
end)
