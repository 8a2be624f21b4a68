-- tool_turn_caps: on a tool turn (the last user message carries tool results, so the model
-- is inside an agent loop and its next output is usually one more tool call or a short
-- report) caps max_tokens and temperature. Small local models wander at the servers' default
-- temperature (0.8) and a generous max_tokens lets a derailed answer run for minutes; a
-- tool call needs neither. Per model profile (anthroxy.profiles): a Qwen3-Coder and a Llama
-- behind one anthroxy get their own caps. Off by default: not in default.lua's active set.
-- Place it after max_tokens (whose floor it lowers on tool turns).
local ax = require "anthroxy"
local conv = require "anthroxy.conv"
local profiles = require "anthroxy.profiles"

local M = {
  name = "tool_turn_caps",
  defaults = {
    max_tokens = 8192,   -- cap on tool turns; 0 leaves max_tokens alone
    temperature = 0.2,   -- cap on tool turns; a negative value leaves temperature alone
    profiles = {},       -- model-name pattern -> settings (docs/default-policies.md)
  },
}

-- Index of the last message that is not a system one: Claude Code (2.1.332) sends reminders
-- as role "system" messages after the tool results.
local function last_turn(msgs)
  for i = #msgs, 1, -1 do
    if msgs[i].role ~= "system" then return i end
  end
  return nil
end

-- True when the last message (system ones aside) is the user's and answers tool calls.
function M.is_tool_turn(req)
  local msgs = req.messages
  if not conv.is_array(msgs) or #msgs == 0 then return false end
  local li = last_turn(msgs)
  return li ~= nil and msgs[li].role == "user" and conv.has_block(msgs[li], "tool_result")
end

function M.on_request(req, ctx)
  if ctx.count_only or not M.is_tool_turn(req) then return end
  local s, matched = profiles.settings(ctx, M.name)
  local changed = {}
  local cap = tonumber(s.max_tokens) or 0
  local mt = req.max_tokens
  if cap > 0 and math.type(mt) == "integer" and mt > cap then
    cap = math.tointeger(math.floor(cap))
    req.max_tokens = cap
    -- Anthropic requires a thinking budget below max_tokens; keep the pair consistent.
    local th = req.thinking
    if conv.is_object(th) and type(th.budget_tokens) == "number" and th.budget_tokens >= cap then
      th.budget_tokens = math.max(cap - 1, 1)
    end
    changed[#changed + 1] = string.format("max_tokens %d -> %d", mt, cap)
    profiles.count("max_tokens")
  end
  local tcap = tonumber(s.temperature) or -1
  local t = req.temperature
  if tcap >= 0 and (type(t) ~= "number" or t > tcap) then
    req.temperature = tcap
    changed[#changed + 1] = string.format("temperature %s -> %s",
      type(t) == "number" and tostring(t) or "server default", tostring(tcap))
    profiles.count("temperature")
  end
  if #changed > 0 then
    ax.log.info("tool_turn_caps: tool turn, %s (model %s%s)", table.concat(changed, ", "),
      profiles.model_name(ctx), matched ~= "" and (", profile " .. matched) or "")
  end
end

return M
