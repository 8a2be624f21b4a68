-- loop_breaker: a small model that calls the same tool with the same arguments again and
-- again (re-reading a file, re-running an unchanged failing command) burns its context until
-- it runs out. This policy fingerprints each tool call of the recent conversation (name +
-- normalised arguments: keys sorted, strings trimmed) and counts, within the last `window`
-- calls, how often the newest call's fingerprint came back with the same result as before
-- (a different result is progress and starts the count again, and so does a message of the
-- user's own). Escalates in three steps:
--   repeats     a note to the model, appended to the last user message;
--   release_at  a forced tool_choice (any / tool, from the client or the tool_choice policy)
--               is released to auto, so the model may stop;
--   finish_at   the turn is finished: no tool may be called (tool_choice none, the tools
--               left out upstream), max_tokens is small and the model is told to say, in a
--               few sentences, what it was repeating and to ask the user how to go on.
-- Off by default (not in default.lua's active set); place it after tool_choice.
local ax = require "anthroxy"
local conv = require "anthroxy.conv"
local profiles = require "anthroxy.profiles"

local M = {
  name = "loop_breaker",
  defaults = {
    window = 12,            -- the last N tool calls of the conversation are looked at
    repeats = 3,            -- same call, same result, this many times: a note
    release_at = 4,         -- ... release a forced tool_choice
    finish_at = 5,          -- ... finish the turn with a text for the user
    finish_max_tokens = 512,
    profiles = {},
  },
}

M.NOTE_TAG = "[anthroxy: loop detected]"

-- Canonical JSON of a plain value: object keys sorted, strings trimmed, so that the same
-- request written twice with other key order or spacing has one fingerprint.
local function canon(v, depth)
  depth = depth or 0
  if depth > 50 then return "…" end
  local jt = ax.json.type(v)
  if jt == "object" then
    local keys = {}
    for k in pairs(v) do keys[#keys + 1] = k end
    table.sort(keys)
    local parts = {}
    for i, k in ipairs(keys) do
      parts[i] = string.format("%q", k) .. ":" .. canon(v[k], depth + 1)
    end
    return "{" .. table.concat(parts, ",") .. "}"
  elseif jt == "array" then
    local parts = {}
    for i = 1, #v do parts[i] = canon(v[i], depth + 1) end
    return "[" .. table.concat(parts, ",") .. "]"
  elseif type(v) == "string" then
    return string.format("%q", (v:gsub("^%s+", ""):gsub("%s+$", "")))
  elseif type(v) == "number" then
    return string.format("%.17g", v)
  end
  return tostring(v)
end
M.canon = canon

-- name(canonical arguments) of one tool_use block.
function M.fingerprint(block)
  local input = block.input
  if ax.is_view(input) then input = ax.json.totable(input) end
  return tostring(block.name) .. "(" .. canon(input == nil and ax.json.object() or input) .. ")"
end

-- The text of each tool result, by tool_use id.
local function results_by_id(msgs, from)
  local out = {}
  for i = from, #msgs do
    local m = msgs[i]
    if m.role == "user" then
      local blocks = conv.blocks(m)
      for k = 1, blocks and #blocks or 0 do
        local b = blocks[k]
        if conv.is_object(b) and b.type == "tool_result" and type(b.tool_use_id) == "string" then
          out[b.tool_use_id] = (b.is_error == true and "E:" or "R:") .. conv.text(b.content)
        end
      end
    end
  end
  return out
end

-- How many times the newest tool call repeated with an unchanged result within the last
-- `window` calls, and its fingerprint. 0 when the conversation does not end in a tool call.
function M.loop_count(msgs, window)
  local last_a = conv.last_index_of(msgs, "assistant")
  if not last_a or not conv.has_block(msgs[last_a], "tool_use") then return 0, nil end
  -- Walk back to the message holding the window's oldest call.
  local from, seen = last_a, 0
  for i = last_a, 1, -1 do
    if msgs[i].role == "assistant" then
      local blocks = conv.blocks(msgs[i])
      for k = 1, blocks and #blocks or 0 do
        if conv.is_object(blocks[k]) and blocks[k].type == "tool_use" then seen = seen + 1 end
      end
      from = i
      if seen >= window then break end
    end
  end
  -- A message of the user's own (not only tool results) is new input: count from there, so
  -- that after a finished turn the user's "try again" starts afresh.
  for i = last_a - 1, from, -1 do
    local m = msgs[i]
    if m.role == "user" and not conv.has_block(m, "tool_result") then
      from = i
      break
    end
  end
  local calls = conv.tool_calls(msgs, from)
  local first = math.max(#calls - window + 1, 1)
  local results = results_by_id(msgs, from)
  local per = {}
  local newest_fp
  local blocks_last = conv.blocks(msgs[last_a])
  for k = 1, #blocks_last do
    local b = blocks_last[k]
    if conv.is_object(b) and b.type == "tool_use" then newest_fp = M.fingerprint(b) end
  end
  for c = first, #calls do
    local call = calls[c]
    local blk = conv.blocks(msgs[call.index])
    local fp
    for k = 1, #blk do
      if conv.is_object(blk[k]) and blk[k].type == "tool_use" and blk[k].id == call.id then
        fp = M.fingerprint(blk[k])
        break
      end
    end
    if fp then
      local res = results[call.id] or ""
      local e = per[fp]
      if e == nil or e.result ~= res then per[fp] = { count = 1, result = res }
      else e.count = e.count + 1 end
    end
  end
  local e = newest_fp and per[newest_fp]
  return e and e.count or 0, newest_fp
end

-- Index of the last message that is not a system one: Claude Code (2.1.332) sends reminders
-- as role "system" messages after the tool results.
local function last_turn(msgs)
  for i = #msgs, 1, -1 do
    if msgs[i].role ~= "system" then return i end
  end
  return nil
end

local function add_note(last, text)
  local block = { type = "text", text = text }
  if type(last.content) == "string" then
    last.content = { { type = "text", text = last.content }, block }
  else
    ax.insert(last.content, block)
  end
end

function M.on_request(req, ctx)
  if ctx.count_only then return end
  local msgs = req.messages
  if not conv.is_array(msgs) or #msgs == 0 then return end
  local li = last_turn(msgs)
  local last = li and msgs[li]
  if not last or last.role ~= "user" then return end
  local s = profiles.settings(ctx, M.name)
  local n, fp = M.loop_count(msgs, s.window)
  if n < s.repeats then return end
  local shown = fp:sub(1, 300)
  if n >= s.finish_at then
    add_note(last, string.format("%s You have made the same tool call %d times with the same "
      .. "result: %s. Tools are now disabled for this answer. Do not call any tool. In at most "
      .. "three sentences, tell the user that you were repeating this call without making "
      .. "progress, what you were trying to achieve, and ask how they want to continue.",
      M.NOTE_TAG, n, shown))
    req.tool_choice = { type = "none" }
    local th = req.thinking
    if conv.is_object(th) and th.type ~= "disabled" then req.thinking = { type = "disabled" } end
    ctx.state.finish = math.tointeger(s.finish_max_tokens) or 512
    ax.log.warn("loop_breaker: finish the turn: %d identical calls (%s)", n, shown:sub(1, 120))
    profiles.count("finish")
    return
  end
  add_note(last, string.format("%s You have made this same tool call %d times and got the "
    .. "same result each time: %s. Its result will not change. Do not repeat it: change the "
    .. "arguments, use a different tool, or explain what is blocking you.", M.NOTE_TAG, n, shown))
  local tc = req.tool_choice
  local forced = conv.is_object(tc) and tc.type
  if n >= s.release_at and (forced == "any" or forced == "tool") then
    req.tool_choice = { type = "auto" }
    ax.log.warn("loop_breaker: released tool_choice %s: %d identical calls (%s)", forced, n,
      shown:sub(1, 120))
    profiles.count("release")
    return
  end
  ax.log.warn("loop_breaker: note to the model: %d identical calls (%s)", n, shown:sub(1, 120))
  profiles.count("note")
end

-- Finishing: the tools are left out upstream too, so neither the server's tool-call parser
-- nor the text tool-call recogniser can produce one more call; and the answer is kept short
-- here, after every on_request (max_tokens' floor would raise it again).
function M.on_upstream_request(oreq, ctx)
  local cap = ctx.state.finish
  if not cap then return end
  oreq.tools = nil
  oreq.tool_choice = nil
  oreq.parallel_tool_calls = nil
  for _, k in ipairs{ "max_tokens", "max_completion_tokens" } do
    local v = oreq[k]
    if math.type(v) == "integer" and v > cap then oreq[k] = cap end
  end
end

return M
