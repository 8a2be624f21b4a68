-- tool_choice: forces a tool call (Anthropic tool_choice {type = "any"}, "required"
-- upstream) while the model is inside an agent loop, for local models that tend to answer
-- with a description of the next step instead of taking it. Shipped switched OFF: with
-- "required", llama-server's grammar admits nothing but tool calls, so a forced model can
-- never end its turn; only the release rules below let it finish. docs/default-policies.md
-- says when to turn it on.
--
-- Forces when the request offers tools, the client set no tool_choice of its own, and
-- either the last assistant turn was text only, or the conversation is in a tool loop
-- (tool results present, more than two messages). Releases (leaves the choice to the
-- model) after max_forced consecutive forced turns, when the same tool call repeats
-- loop_repeats times in a row (a loop, not progress), or when the prompt fills
-- release_utilization of the context window (the answer must be allowed to be short).
local ax = require "anthroxy"
local conv = require "anthroxy.conv"

local M = {
  name = "tool_choice",
  defaults = {
    enabled = false,
    max_forced = 3,
    loop_repeats = 3,
    release_utilization = 0.85,
  },
}

local function has_tool_results(messages)
  for i = 1, #messages do
    if messages[i].role == "user" and conv.has_block(messages[i], "tool_result") then
      return true
    end
  end
  return false
end

-- Why the seed's rules would force this turn, or nil.
local function reason_to_force(messages)
  local last_a = conv.last_index_of(messages, "assistant")
  if last_a and conv.is_text_only_assistant(messages[last_a]) then
    return "the last assistant turn was text only"
  end
  if #messages > 2 and has_tool_results(messages) then
    return "an agent loop with tool results is in progress"
  end
  return nil
end

-- The same tool call (names and inputs) in each of the last `repeats` assistant turns, read
-- from the conversation itself, or from the monitor's fingerprints of this session's
-- answers when those show the repetition.
local function looping(messages, session, repeats)
  if repeats < 2 then return false end
  local seen, first = 0, nil
  for i = #messages, 1, -1 do
    local m = messages[i]
    if m.role == "assistant" then
      local fp = conv.turn_fingerprint(m)
      if fp == nil then break end
      if first == nil then first = fp elseif fp ~= first then break end
      seen = seen + 1
      if seen >= repeats then return true end
    end
  end
  local fps = session and session.tool_fingerprints
  if fps and #fps >= repeats then
    local n = #fps
    for k = n - repeats + 2, n do
      if fps[k] ~= fps[n - repeats + 1] then return false end
    end
    return true
  end
  return false
end

function M.on_request(req, ctx)
  local s = ctx.settings
  if not s.enabled then return end
  -- The monitor counts consecutive answered turns whose upstream tool_choice was forced
  -- (and resets on any other turn), so this policy only reads the count.
  local session = ctx.session or {}
  local forced = session.forced_tool_turns or 0
  -- The client decided, or there is nothing to call: never override either.
  if req.tool_choice ~= nil and req.tool_choice ~= ax.json.null then return end
  if not (conv.is_array(req.tools) and #req.tools > 0) then return end
  local messages = req.messages
  if not conv.is_array(messages) then return end

  local why = reason_to_force(messages)
  local release
  if why == nil then
    release = nil
  elseif forced >= s.max_forced then
    release = string.format("%d consecutive forced turns", forced)
  elseif looping(messages, session, s.loop_repeats) then
    release = "the same tool call is repeating"
  else
    local window = ctx.context_window or 0
    if window > 0 then
      local used = ax.request_tokens(req, ctx) / window
      if used >= s.release_utilization then
        release = string.format("the context is %.0f%% full", used * 100)
      end
    end
  end

  if why == nil or release ~= nil then
    if release then ax.log.info("tool_choice left to the model: %s", release) end
    return
  end
  req.tool_choice = { type = "any" }
  ax.log.info("tool_choice forced (%s), forced turn %d of at most %d", why, forced + 1,
    s.max_forced)
end

return M
