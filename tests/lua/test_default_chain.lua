-- The default chain (policies/default.lua itself) over every recorded request:
-- Claude Code's, the llama-server captures', and the translator's fixtures, malformed ones
-- included (policies run before translation validates). In windows from tiny to large, no
-- policy may raise: the only allowed failure is the deliberate "prompt is too long", and no
-- tool_use may lose its tool_result.
local T = require "anthroxy.testing"
local ax = require "anthroxy"
local conv = require "anthroxy.conv"

-- The shipped chain itself (policies/default.lua, loaded as the server loads it), with
-- tool_choice turned on to exercise it: it ships off.
local chain = T.load_chain("policies/default.lua", { tool_choice = { enabled = true } })
T.ok(#chain == 7, "the default chain has its seven policies")

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

local function pairs_ok(req)
  if ax.json.type(req) ~= "object" or ax.json.type(req.messages) ~= "array" then return true end
  for i = 1, #req.messages do
    if ax.json.type(req.messages[i]) ~= "object" then return true end -- malformed: skip
  end
  local before = #conv.broken_pairs(req.messages, true)
  return before
end

for _, rel in ipairs(fixtures) do
  T.test("default chain on " .. rel, function()
    local body = body_of(rel)
    local broken_before = pairs_ok(body)
    for _, window in ipairs({ 2048, 32768, 200000 }) do
      local session = T.session()
      local req = body
      for _, p in ipairs(chain) do
        local ctx = T.ctx{ context_window = window, user_agent = "claude-cli/2.1.197",
                           session = session }
        local ok, out = pcall(T.run, p, "on_request", req, ctx)
        if not ok then
          local msg = type(out) == "table" and out.fail and out.fail.message or tostring(out)
          T.ok(type(out) == "table" and out.fail and msg:find("^prompt is too long"),
            string.format("%s in %d: %s raised %s", rel, window, p.name, msg))
          break
        end
        req = out
      end
      T.eq(pairs_ok(req), broken_before, rel .. ": no new broken pair")
      if ax.json.type(req) == "object" and type(body.max_tokens) == "number"
         and body.max_tokens >= 1 and math.type(body.max_tokens) == "integer" then
        T.ok(math.type(req.max_tokens) == "integer" and req.max_tokens >= 1, "max_tokens >= 1")
      end
    end
  end)
end
