-- contamination_reset: once a small model's answers go wrong they tend to stay wrong: it
-- imitates its own malformed tool calls, loops and stray chat-template tokens
-- (`<|im_start|>` in the text) that are now part of its prompt. After `faults` such faults
-- in a session, this policy cuts the history to the first user message (the task) and the
-- last `keep_turns` turns, with a marker in the first message, and scrubs leaked template
-- tokens from the assistant text it keeps.
--
-- Faults are read from the conversation the client sends, so the decision needs no memory
-- and is the same on every turn: an assistant text holding one of `tokens`; an assistant
-- turn that repeats the previous one's tool calls for the `loop_repeats`-th time or more;
-- a tool result the client marked as an error for a malformed call (Claude Code's
-- InputValidationError, "No such tool available", invalid JSON). Counting from the start,
-- the point where the count reaches `faults` is a reset point (the count then starts
-- again); the cut keeps the turns from `keep_turns` before the newest reset point, on this
-- turn and the following ones, so the prompt before the cut stays the same from turn to turn
-- (the server's prompt cache holds) until faults pile up again.
-- Off by default (not in default.lua's active set); place it before prune.
local ax = require "anthroxy"
local conv = require "anthroxy.conv"
local profiles = require "anthroxy.profiles"

local M = {
  name = "contamination_reset",
  defaults = {
    faults = 3,
    keep_turns = 2,
    loop_repeats = 3,
    scrub = true,       -- remove leaked tokens from the assistant text kept
    tokens = { "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|eot_id|>",
               "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>", "<|python_tag|>",
               "<|end|>", "<|user|>", "<|assistant|>", "[INST]", "[/INST]", "<start_of_turn>",
               "<end_of_turn>", "<｜end▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>",
               "<|channel|>", "<|message|>", "<|return|>" },
    profiles = {},
  },
}

M.MARKER_TAG = "[anthroxy: history reset]"
M.MARKER = M.MARKER_TAG .. " The proxy removed the earlier turns of this conversation between "
  .. "this task and the recent turns below, because the answers there had gone wrong "
  .. "(malformed tool calls, repeated calls or stray chat-template tokens). Continue the task "
  .. "from the recent turns; re-read files or re-run commands if you need what was removed. "
  .. "Call tools only through the tool-calling interface, with arguments that match their schemas."

-- Texts of a client's error result that mean the call itself was malformed.
M.MALFORMED = { "InputValidationError", "No such tool available", "Invalid tool parameters",
                "invalid JSON", "Invalid JSON", "is not valid JSON", "must be of type" }

local function leaked_token(text, tokens)
  for i = 1, #tokens do
    local tok = tokens[i]
    if type(tok) == "string" and tok ~= "" and text:find(tok, 1, true) then return tok end
  end
  return nil
end

local function malformed_result(b)
  if b.is_error ~= true then return false end
  local text = conv.text(b.content)
  for _, pat in ipairs(M.MALFORMED) do
    if text:find(pat, 1, true) then return true end
  end
  return false
end

-- Every fault of the conversation, oldest first: { index, kind }.
function M.faults(msgs, s)
  local out = {}
  local tokens = s.tokens or M.defaults.tokens
  local run, prev_fp = 0, nil
  for i = 2, #msgs do
    local m = msgs[i]
    if m.role == "assistant" then
      local tok = leaked_token(conv.text(m.content), tokens)
      if tok then out[#out + 1] = { index = i, kind = "leaked " .. tok } end
      local fp = conv.turn_fingerprint(m)
      if fp ~= nil and fp == prev_fp then run = run + 1 else run = fp and 1 or 0 end
      prev_fp = fp
      if run >= (s.loop_repeats or 3) then out[#out + 1] = { index = i, kind = "loop" } end
    elseif m.role == "user" then
      local blocks = conv.blocks(m)
      for k = 1, blocks and #blocks or 0 do
        local b = blocks[k]
        if conv.is_object(b) and b.type == "tool_result" and malformed_result(b) then
          out[#out + 1] = { index = i, kind = "malformed call" }
        end
      end
    end
  end
  return out
end

-- The newest reset point (message index) and the faults that made it, or nil.
function M.reset_point(faults, threshold)
  local count, at, kinds, last_kinds = 0, nil, {}, nil
  for _, f in ipairs(faults) do
    count = count + 1
    kinds[#kinds + 1] = f.kind
    if count >= threshold then
      at, last_kinds = f.index, kinds
      count, kinds = 0, {}
    end
  end
  return at, last_kinds
end

local function scrub_text(text, tokens)
  for i = 1, #tokens do
    local tok = tokens[i]
    if type(tok) == "string" and tok ~= "" then
      local at = text:find(tok, 1, true)
      while at do
        text = text:sub(1, at - 1) .. text:sub(at + #tok)
        at = text:find(tok, at, true)
      end
    end
  end
  return text
end

-- Removes leaked tokens from the text of the assistant messages from `from` on.
local function scrub(msgs, from, tokens)
  local n = 0
  for i = from, #msgs do
    local m = msgs[i]
    if m.role == "assistant" then
      if type(m.content) == "string" then
        if leaked_token(m.content, tokens) then
          m.content = scrub_text(m.content, tokens)
          n = n + 1
        end
      else
        local blocks = conv.blocks(m)
        for k = 1, blocks and #blocks or 0 do
          local b = blocks[k]
          if conv.is_object(b) and b.type == "text" and type(b.text) == "string"
              and leaked_token(b.text, tokens) then
            b.text = scrub_text(b.text, tokens)
            n = n + 1
          end
        end
      end
    end
  end
  return n
end

local function add_marker(first)
  local block = { type = "text", text = M.MARKER }
  if type(first.content) == "string" then
    first.content = { { type = "text", text = first.content }, block }
  elseif conv.is_array(first.content) then
    ax.insert(first.content, block)
  end
end

function M.on_request(req, ctx)
  if ctx.count_only then return end
  local msgs = req.messages
  if not conv.is_array(msgs) or #msgs < 4 or msgs[1].role ~= "user" then return end
  local s, matched = profiles.settings(ctx, M.name)
  local threshold = math.tointeger(s.faults) or 3
  if threshold < 1 then return end
  local faults = M.faults(msgs, s)
  local at, kinds = M.reset_point(faults, threshold)
  if not at then return end
  local units = conv.units(msgs, 2)
  local t
  for k, u in ipairs(units) do
    if u.first <= at and at <= u.last then t = k; break end
  end
  if not t then return end
  local keep_from = math.max(t - (math.tointeger(s.keep_turns) or 2) + 1, 1)
  local cut_first, cut_last = units[1].first, units[keep_from].first - 1
  local removed = 0
  for i = cut_last, cut_first, -1 do
    if msgs[i].role ~= "system" then ax.remove(msgs, i); removed = removed + 1 end
  end
  local tokens = s.tokens or M.defaults.tokens
  local scrubbed = s.scrub and scrub(msgs, 2, tokens) or 0
  if removed == 0 and scrubbed == 0 then return end
  if removed > 0 then add_marker(msgs[1]) end
  local fresh = t == #units
  ax.log.info("contamination_reset: %s: removed %d messages, kept the task and %d turns%s "
    .. "(faults: %s)%s", fresh and "reset" or "history kept cut", removed, #units - keep_from + 1,
    scrubbed > 0 and string.format(", scrubbed template tokens from %d texts", scrubbed) or "",
    table.concat(kinds, ", "), matched ~= "" and (", profile " .. matched) or "")
  if fresh then profiles.count("reset") end
  profiles.count("cut")
end

return M
