-- anthroxy.conv - helpers for policies that read or reshape an Anthropic conversation:
-- walking content blocks, pairing tool_use with tool_result, cutting a conversation into
-- units that can be removed without orphaning either half of a pair, and the text of the
-- marker a pruner leaves behind. Everything works on the engine's request view and on plain
-- tables alike: fields are read by indexing, arrays walked with # and [i], types asked of
-- ax.json.type (a view is userdata, so type(v) == "table" would be wrong). No module state.
local ax = require "anthroxy"

local conv = {}

function conv.jtype(v)
  return ax.json.type(v)
end

function conv.is_array(v)
  return v ~= nil and ax.json.type(v) == "array"
end

function conv.is_object(v)
  return v ~= nil and ax.json.type(v) == "object"
end

function conv.is_string(v)
  return type(v) == "string"
end

-- The content blocks of a message, or nil when its content is a plain string.
function conv.blocks(msg)
  local c = msg and msg.content
  if conv.is_array(c) then return c end
  return nil
end

-- True when the message has at least one block of that type.
function conv.has_block(msg, btype)
  local blocks = conv.blocks(msg)
  if not blocks then return false end
  for i = 1, #blocks do
    local b = blocks[i]
    if conv.is_object(b) and b.type == btype then return true end
  end
  return false
end

-- The plain text of a content value: a string, a list of blocks (text, nested tool_result
-- content), or nil. Images and other blocks contribute nothing.
function conv.text(content)
  if content == nil then return "" end
  if type(content) == "string" then return content end
  if not conv.is_array(content) then return "" end
  local parts = {}
  for i = 1, #content do
    local b = content[i]
    if type(b) == "string" then
      parts[#parts + 1] = b
    elseif conv.is_object(b) then
      if b.type == "text" and type(b.text) == "string" then
        parts[#parts + 1] = b.text
      elseif b.type == "tool_result" then
        parts[#parts + 1] = conv.text(b.content)
      end
    end
  end
  return table.concat(parts, "\n")
end

-- Ids of the tool_use blocks of a message, in order.
function conv.tool_use_ids(msg)
  local ids = {}
  local blocks = conv.blocks(msg)
  if not blocks then return ids end
  for i = 1, #blocks do
    local b = blocks[i]
    if conv.is_object(b) and b.type == "tool_use" and type(b.id) == "string" then
      ids[#ids + 1] = b.id
    end
  end
  return ids
end

-- tool_use_id of each tool_result block of a message, in order.
function conv.tool_result_ids(msg)
  local ids = {}
  local blocks = conv.blocks(msg)
  if not blocks then return ids end
  for i = 1, #blocks do
    local b = blocks[i]
    if conv.is_object(b) and b.type == "tool_result" and type(b.tool_use_id) == "string" then
      ids[#ids + 1] = b.tool_use_id
    end
  end
  return ids
end

-- An assistant message that says something but calls no tool.
function conv.is_text_only_assistant(msg)
  if not msg or msg.role ~= "assistant" then return false end
  if type(msg.content) == "string" then return #msg.content > 0 end
  return not conv.has_block(msg, "tool_use")
end

-- Index of the last message with that role, or nil.
function conv.last_index_of(messages, role)
  for i = #messages, 1, -1 do
    if messages[i].role == role then return i end
  end
  return nil
end

-- Maps each tool_use id to the index of the message that carries it, and each tool_result
-- to its message index. Both tables are plain.
function conv.pair_index(messages)
  local uses, results = {}, {}
  for i = 1, #messages do
    local m = messages[i]
    for _, id in ipairs(conv.tool_use_ids(m)) do uses[id] = i end
    for _, id in ipairs(conv.tool_result_ids(m)) do results[id] = i end
  end
  return uses, results
end

-- Every broken pair: { kind = "use_without_result" | "result_without_use"
-- | "result_before_use", id = ..., index = message index }. Empty when the conversation is
-- consistent. The last assistant message may legitimately end in tool_use when the client
-- is asking for a continuation, so pass allow_open_tail = true to accept that.
function conv.broken_pairs(messages, allow_open_tail)
  local uses, results = conv.pair_index(messages)
  local problems = {}
  local n = #messages
  for id, i in pairs(uses) do
    if results[id] == nil then
      if not (allow_open_tail and i == n) then
        problems[#problems + 1] = { kind = "use_without_result", id = id, index = i }
      end
    elseif results[id] < i then
      problems[#problems + 1] = { kind = "result_before_use", id = id, index = results[id] }
    end
  end
  for id, j in pairs(results) do
    if uses[id] == nil then
      problems[#problems + 1] = { kind = "result_without_use", id = id, index = j }
    end
  end
  table.sort(problems, function(a, b) return a.index < b.index end)
  return problems
end

-- Cuts messages[first..#messages] into removable units, returned as a plain array of
-- { first = i, last = j }. A unit starts at each assistant message and runs through the
-- user messages answering it (a turn and its tool results); units are merged wherever a
-- tool_use and its tool_result would otherwise land in different units, so removing whole
-- units never orphans either half of a pair. Messages before the first assistant one form
-- a leading unit of their own.
function conv.units(messages, first)
  first = first or 1
  local n = #messages
  local start = {}
  for i = first, n do
    start[i] = (i == first) or messages[i].role == "assistant"
  end
  local uses, results = conv.pair_index(messages)
  for id, i in pairs(uses) do
    local j = results[id]
    if j and i >= first and j >= first then
      local lo, hi = math.min(i, j), math.max(i, j)
      for k = lo + 1, hi do start[k] = false end
    end
  end
  local units = {}
  for i = first, n do
    if start[i] then
      units[#units + 1] = { first = i, last = i }
    elseif #units > 0 then
      units[#units].last = i
    end
  end
  return units
end

-- Tool calls of the assistant messages from index `from` on, oldest first, as plain
-- { name, input (JSON text), id, index } records: what a loop detector compares.
function conv.tool_calls(messages, from)
  local calls = {}
  for i = from or 1, #messages do
    local m = messages[i]
    if m.role == "assistant" then
      local blocks = conv.blocks(m)
      if blocks then
        for k = 1, #blocks do
          local b = blocks[k]
          if conv.is_object(b) and b.type == "tool_use" then
            calls[#calls + 1] = {
              name = b.name, id = b.id, index = i,
              input = b.input ~= nil and ax.json.encode(b.input) or "{}",
            }
          end
        end
      end
    end
  end
  return calls
end

-- A string fingerprint of one assistant turn's tool calls (names and inputs, in order), or
-- nil when the turn calls no tool. Equal fingerprints mean the model asked for exactly the
-- same thing again.
function conv.turn_fingerprint(msg)
  if not msg or msg.role ~= "assistant" then return nil end
  local blocks = conv.blocks(msg)
  if not blocks then return nil end
  local parts = {}
  for k = 1, #blocks do
    local b = blocks[k]
    if conv.is_object(b) and b.type == "tool_use" then
      parts[#parts + 1] = tostring(b.name) .. "(" ..
        (b.input ~= nil and ax.json.encode(b.input) or "{}") .. ")"
    end
  end
  if #parts == 0 then return nil end
  return table.concat(parts, ";")
end

-- The marker a pruner leaves where it removed history. Starts with a fixed tag so other
-- policies (and the next pruning pass) can recognise it.
conv.MARKER_TAG = "[anthroxy: context pruned]"

-- Without stats: the constant marker the prune policy uses (no counts, so the prompt before the
-- cut stays the same from turn to turn and the server's prompt cache holds).
function conv.marker_text(stats)
  if stats == nil then
    return conv.MARKER_TAG .. " To stay within the model's context window the proxy removed "
      .. "earlier turns of this conversation between this point and the recent turns below. "
      .. "Re-read files or re-run commands if you need what was removed."
  end
  local what = {}
  if (stats.turns or 0) > 0 then
    what[#what + 1] = string.format("%d earlier message%s", stats.turns,
      stats.turns == 1 and "" or "s")
  end
  if (stats.results or 0) > 0 then
    what[#what + 1] = string.format("the output of %d older tool call%s", stats.results,
      stats.results == 1 and "" or "s")
  end
  if (stats.truncated or 0) > 0 then
    what[#what + 1] = string.format("part of %d long tool result%s", stats.truncated,
      stats.truncated == 1 and "" or "s")
  end
  if #what == 0 then what[1] = "nothing" end
  return string.format("%s To stay within the model's context window the proxy removed %s "
    .. "(about %d tokens) between this point and the recent turns below. Re-read files "
    .. "or re-run commands if you need what was removed.",
    conv.MARKER_TAG, table.concat(what, " and "), stats.tokens or 0)
end

function conv.is_marker_text(s)
  return type(s) == "string" and s:sub(1, #conv.MARKER_TAG) == conv.MARKER_TAG
end

-- The placeholder left inside a tool_result whose output was dropped.
function conv.elided_result_text(tokens)
  return string.format("[output of this tool call removed by the proxy to save context: "
    .. "about %d tokens]", tokens)
end

-- Shortens text to keep its beginning and end, so that the result is at most max_tokens by
-- ax.tokens; returns text unchanged when it already fits.
function conv.truncate_middle(text, max_tokens)
  local have = ax.tokens(text)
  if have <= max_tokens then return text end
  local note_fmt = "\n[... %d characters removed by the proxy ...]\n"
  local budget = math.max(max_tokens - ax.tokens(string.format(note_fmt, #text)), 1)
  -- Characters per token of this very text, so the cut lands close on the first try.
  local keep = math.floor(#text * budget / have)
  while true do
    local head_n = math.floor(keep * 2 / 3)
    local tail_n = keep - head_n
    -- Never cut inside a UTF-8 sequence: move to the start of a character.
    while head_n > 0 and (text:byte(head_n + 1) or 0) & 0xC0 == 0x80 do head_n = head_n - 1 end
    local tail_start = #text - tail_n + 1
    while tail_start <= #text and (text:byte(tail_start) or 0) & 0xC0 == 0x80 do
      tail_start = tail_start + 1
    end
    local out = text:sub(1, head_n) ..
      string.format(note_fmt, tail_start - head_n - 1) .. text:sub(tail_start)
    if ax.tokens(out) <= max_tokens or keep <= 0 then return out end
    keep = math.floor(keep * 0.9) - 1
    if keep < 0 then keep = 0 end
  end
end

return conv
