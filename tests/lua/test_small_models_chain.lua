-- Every policy of issue 11 on at once (tests/lua/small_models_chain.lua, with model
-- profiles) over every recorded request, in three windows and for two models: no policy
-- raises (but for the deliberate "prompt is too long"), no tool_use loses its tool_result,
-- max_tokens stays a positive integer; on_upstream_request and on_response run too.
local T = require "anthroxy.testing"
local ax = require "anthroxy"
local conv = require "anthroxy.conv"

local chain = T.load_chain("tests/lua/small_models_chain.lua")
T.ok(#chain == 10, "the chain has its ten policies")

local fixtures = {
  "claude-code/first-turn.json", "claude-code/after-tool-call.json",
  "claude-code/thinking-replay.json",
}
for _, n in ipairs({ "count_tokens", "count_tokens_tools", "error_no_max_tokens",
  "greedy_max_tokens", "nonstream", "stop_sequences", "thinking", "tool_result_followup",
  "tools_any_nonstream", "tools_auto_stream", "tools_named_nonstream",
  "tools_truncated_max_tokens_12" }) do
  fixtures[#fixtures + 1] = "llama-server/anthropic_" .. n .. ".json"
end
for _, n in ipairs({ "basic_knobs", "empty_assistant", "empty_system", "empty_text_blocks",
  "err_bad_role", "err_block_no_type", "err_content_type", "err_empty_messages",
  "err_image_source", "err_max_tokens_fraction", "err_max_tokens_string", "err_max_tokens_zero",
  "err_message_not_object", "err_messages_not_array", "err_mid_system_block", "err_model_type",
  "err_no_messages", "err_no_role", "err_not_object", "err_stop_sequences", "err_system_type",
  "err_temperature", "err_text_not_string", "err_tool_choice_type",
  "err_tool_choice_unknown_tool", "err_tool_no_name", "err_tool_result_no_id",
  "err_tool_schema_type", "err_tool_use_input", "err_tools_not_array", "err_unknown_block",
  "err_user_id", "images", "merge_and_orphans", "mid_system", "no_tools_choice_dropped",
  "plain_text_document", "system_blocks", "thinking_adaptive_stream", "thinking_disabled",
  "thinking_history", "tool_choice_any", "tool_choice_auto", "tool_choice_named",
  "tool_choice_named_llama", "tool_choice_none", "tool_result_image", "tool_roundtrip" }) do
  fixtures[#fixtures + 1] = "translate/" .. n .. ".anthropic.json"
end

local function body_of(rel)
  local f = T.fixture(rel)
  if ax.json.type(f) == "object" and ax.json.type(f.request) == "object" and f.request.body then
    return f.request.body
  end
  return f
end

local function broken(req)
  if ax.json.type(req) ~= "object" or ax.json.type(req.messages) ~= "array" then return 0 end
  for i = 1, #req.messages do
    if ax.json.type(req.messages[i]) ~= "object" then return 0 end -- malformed: skip
  end
  return #conv.broken_pairs(req.messages, true)
end

local function run_hook(hook, tree, rel, window, model, ctxs)
  for i, p in ipairs(chain) do
    local ok, out = pcall(T.run, p, hook, tree, ctxs[i])
    if not ok then
      local msg = type(out) == "table" and out.fail and out.fail.message or tostring(out)
      T.ok(type(out) == "table" and out.fail and msg:find("^prompt is too long"),
        string.format("%s in %d for %s: %s %s raised %s", rel, window, model, p.name, hook, msg))
      return nil
    end
    tree = out
  end
  return tree
end

for _, rel in ipairs(fixtures) do
  T.test("small-models chain on " .. rel, function()
    local body = body_of(rel)
    local before = broken(body)
    for _, model in ipairs({ "Qwen3-Coder-30B-A3B", "llama-3.1-8b" }) do
      for _, window in ipairs({ 2048, 32768, 200000 }) do
        local session = T.session()
        local ctxs = {}
        for i = 1, #chain do
          ctxs[i] = T.ctx{ context_window = window, user_agent = "claude-cli/2.1.332",
                           session = session, upstream_model = model }
        end
        local req = run_hook("on_request", body, rel, window, model, ctxs)
        if req ~= nil then
          T.eq(broken(req), before, rel .. ": no new broken pair")
          if ax.json.type(req) == "object" and math.type(body.max_tokens) == "integer"
             and body.max_tokens >= 1 then
            T.ok(math.type(req.max_tokens) == "integer" and req.max_tokens >= 1, "max_tokens >= 1")
          end
          local oreq = { model = model, messages = { { role = "user", content = "x" } },
                         tools = { { type = "function", ["function"] = { name = "Read" } } } }
          T.ok(run_hook("on_upstream_request", oreq, rel, window, model, ctxs) ~= nil)
          local resp = { id = "msg_1", stop_reason = "max_tokens", usage = { output_tokens = 9 },
                         content = { { type = "thinking", thinking_length = 100 } } }
          for i, p in ipairs(chain) do T.run(p, "on_response", resp, ctxs[i]) end
        end
      end
    end
  end)
end
