-- thinking_control: hybrid models (Qwen3, GLM 4.5, DeepSeek V3.1 ...) think before every
-- answer unless told not to; a small one can think for minutes before a tool call whose
-- arguments it already had, or spend the whole max_tokens thinking and answer nothing.
-- This policy turns thinking off upstream:
--   mode "tool_turns"  on tool-result turns (the last user message carries tool results:
--                      the next step is usually mechanical), the default;
--   mode "always"      on every request;
--   mode "off"         never proactively (the runaway retry below still applies).
-- Off means the Qwen3-style switch chat_template_kwargs.enable_thinking = false (the
-- request's Anthropic `thinking` becomes disabled, which the translator maps to it) and, for
-- llama-server, reasoning_budget_tokens = 0 (its per-request form of --reasoning-budget, a
-- field it type-checks; "reasoning_budget" it would ignore; other servers ignore both: turn
-- the setting off for one that rejects unknown fields). A runaway (the answer stopped at
-- max_tokens with thinking and no text nor tool call) is noted in the session
-- (ctx.session.thinking_runaways) by on_response; the next request (Claude Code's automatic
-- "Output token limit hit while you were still reasoning" retry, or the user's next
-- message) is sent with thinking off.
-- Off by default (not in default.lua's active set). Per model profile: e.g. "always" for a
-- Qwen3-Coder served with thinking, nothing for a Llama (which has no switch).
local ax = require "anthroxy"
local conv = require "anthroxy.conv"
local profiles = require "anthroxy.profiles"

local M = {
  name = "thinking_control",
  defaults = {
    mode = "tool_turns",        -- "tool_turns" | "always" | "off"
    retry_runaway = true,       -- after a thinking-only max_tokens answer: thinking off
    reasoning_budget = true,    -- also send llama-server's reasoning_budget_tokens = 0
    profiles = {},
  },
}

-- What Claude Code (2.1.x) sends after an answer that only reasoned until max_tokens.
M.CLIENT_RETRY_TEXT = "Output token limit hit while you were still reasoning"

local function last_user_text(msgs)
  local i = conv.last_index_of(msgs, "user")
  return i and conv.text(msgs[i].content) or ""
end

-- An assistant turn that holds thinking and nothing else (a client that keeps such a turn).
local function thinking_only(msg)
  local blocks = conv.blocks(msg)
  if not blocks or #blocks == 0 then return false end
  local thinking = false
  for k = 1, #blocks do
    local b = blocks[k]
    local t = conv.is_object(b) and b.type
    if t == "thinking" or t == "redacted_thinking" then
      thinking = true
    elseif t == "text" then
      if type(b.text) == "string" and b.text:find("%S") then return false end
    else
      return false
    end
  end
  return thinking
end

-- Index of the last message that is not a system one: Claude Code (2.1.332) sends reminders
-- as role "system" messages after the tool results.
local function last_turn(msgs)
  for i = #msgs, 1, -1 do
    if msgs[i].role ~= "system" then return i end
  end
  return nil
end

-- Why thinking goes off for this request, or nil.
function M.decide(req, ctx, s)
  local msgs = req.messages
  if not conv.is_array(msgs) or #msgs == 0 then return nil end
  if s.retry_runaway then
    local session = ctx.session or {}
    if (session.thinking_runaways or 0) > 0 then
      return "retry: the last answer spent max_tokens thinking", "retry"
    end
    if last_user_text(msgs):find(M.CLIENT_RETRY_TEXT, 1, true) then
      return "retry: the client reports an answer that only reasoned", "retry"
    end
    local last_a = conv.last_index_of(msgs, "assistant")
    local li = last_turn(msgs)
    if last_a and li and last_a == li - 1 and thinking_only(msgs[last_a]) then
      return "retry: the last answer was thinking only", "retry"
    end
  end
  if s.mode == "always" then return "mode always", "always" end
  if s.mode == "tool_turns" then
    local li = last_turn(msgs)
    local last = li and msgs[li]
    if last and last.role == "user" and conv.has_block(last, "tool_result") then
      return "tool-result turn", "tool_turn"
    end
  end
  return nil
end

function M.on_request(req, ctx)
  if ctx.count_only then return end
  local s = profiles.settings(ctx, M.name)
  local why, kind = M.decide(req, ctx, s)
  if not why then return end
  local th = req.thinking
  local asked = conv.is_object(th) and th.type ~= "disabled"
  req.thinking = { type = "disabled" }
  ctx.state.off = why
  ax.log.info("thinking_control: thinking off (%s)%s", why,
    asked and ", the client had asked for it" or "")
  profiles.count(kind)
end

function M.on_upstream_request(oreq, ctx)
  if not ctx.state.off then return end
  local s = profiles.settings(ctx, M.name, oreq)
  local kw = oreq.chat_template_kwargs
  if conv.is_object(kw) then
    kw.enable_thinking = false
  else
    oreq.chat_template_kwargs = { enable_thinking = false }
  end
  if s.reasoning_budget then oreq.reasoning_budget_tokens = 0 end
end

-- A runaway: stopped at max_tokens, thinking and no text nor tool call. The streaming summary
-- gives text blocks as {type = "text", text_length = n}, the full answer as {text = "..."}.
function M.is_runaway(resp)
  if resp.stop_reason ~= "max_tokens" then return false end
  local content = resp.content
  if not conv.is_array(content) then return false end
  local thinking = false
  for k = 1, #content do
    local b = content[k]
    local t = conv.is_object(b) and b.type
    if t == "thinking" or t == "redacted_thinking" then
      thinking = true
    elseif t == "text" then
      local n = b.text_length or (type(b.text) == "string" and #(b.text:match("^%s*(.-)%s*$")))
      if (n or 0) > 0 then return false end
    elseif t == "tool_use" then
      return false
    end
  end
  return thinking
end

function M.on_response(resp, ctx)
  local session = ctx.session
  if not session then return end
  if M.is_runaway(resp) then
    session:note_thinking_runaway()
    ax.log.warn("thinking_control: the answer spent max_tokens thinking and said nothing "
      .. "(%d in a row): the next request goes without thinking", session.thinking_runaways)
    profiles.count("runaway")
  elseif (session.thinking_runaways or 0) > 0 then
    session:reset_thinking_runaways()
  end
end

return M
