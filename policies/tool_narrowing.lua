-- tool_narrowing: when a client offers more than `max_tools` tools (Claude Code sends 20-odd,
-- MCP servers add dozens), sends upstream only the most relevant ones. Every tool schema is
-- part of every prompt (Claude Code's are about 16k tokens), and small models pick worse
-- among many similar tools. Kept, in the client's order:
--   always   the tools named in `always`, the tool a client's tool_choice names, and every
--            tool already called in the conversation (the model knows them, and dropping one
--            it is using would break its plan);
--   relevant then the tools whose name and description share the most words with the recent
--            turns (the last user message counts double), up to `max_tools`.
-- Widens (sends up to `widen_to` tools, 0 = all) for one turn when the model asks for a tool
-- it was not given (its last answer names a dropped tool, or the client answered "No such
-- tool available"), or loops (the same tool call `loop_repeats` times in a row).
-- Off by default (not in default.lua's active set).
local ax = require "anthroxy"
local conv = require "anthroxy.conv"
local profiles = require "anthroxy.profiles"

local M = {
  name = "tool_narrowing",
  defaults = {
    max_tools = 12,
    recent_turns = 4,          -- assistant turns whose text counts for relevance
    always = "Read,Edit,Write,Bash,Grep,Glob",   -- comma-separated names
    widen_to = 0,              -- tools sent when widening; 0: all of them
    loop_repeats = 3,
    profiles = {},
  },
}

local TEXT_MAX = 4000 -- characters of each message read for relevance

-- Words that say nothing about which tool is meant.
local STOP = {}
for w in ([[the and for that this with you your are was were will from into not but can
  use used using tool tools call file files when then than them they what which also all any
  its has have had may must should would could each one only other more some such there
  here been being does done just like make made new now our out over very via]]):gmatch("%a+") do
  STOP[w] = true
end

local function add_words(set, text, weight)
  for w in tostring(text or ""):sub(1, TEXT_MAX):lower():gmatch("[%a][%w_]+") do
    if #w > 2 and not STOP[w] then set[w] = math.max(set[w] or 0, weight) end
  end
  return set
end

-- Words of a tool: its name split at case changes, underscores and dashes (MCP names such as
-- mcp__github__create_issue), plus its description's beginning.
local function tool_words(tool)
  local name = tostring(tool.name or ""):gsub("(%l)(%u)", "%1 %2"):gsub("[_%-]", " ")
  return add_words(add_words({}, name, 1), tostring(tool.description or ""):sub(1, 600), 1)
end

-- Words of the recent turns, each with a weight: the last user message 2, the rest 1.
local function recent_words(msgs, recent_turns)
  local set = {}
  local seen = 0
  local last_user = conv.last_index_of(msgs, "user")
  for i = #msgs, 1, -1 do
    local m = msgs[i]
    if m.role == "assistant" then
      seen = seen + 1
      if seen > recent_turns then break end
      add_words(set, conv.text(m.content), 1)
    elseif m.role == "user" and i ~= last_user then
      add_words(set, conv.text(m.content), 1)
    end
  end
  if last_user then add_words(set, conv.text(msgs[last_user].content), 2) end
  return set
end

-- Index of the last message that is not a system one: Claude Code (2.1.332) sends reminders
-- as role "system" messages after the tool results.
local function last_turn(msgs)
  for i = #msgs, 1, -1 do
    if msgs[i].role ~= "system" then return i end
  end
  return nil
end

-- Why to widen this turn, or nil: the newest assistant turn names a tool it was not sent,
-- the client answered a call with "No such tool available", or the model loops.
local function widen_reason(msgs, offered, loop_repeats)
  local last_a = conv.last_index_of(msgs, "assistant")
  if not last_a then return nil end
  local li = last_turn(msgs)
  local last = li and msgs[li]
  if last and last.role == "user" then
    local blocks = conv.blocks(last)
    for k = 1, blocks and #blocks or 0 do
      local b = blocks[k]
      if conv.is_object(b) and b.type == "tool_result" then
        local name = conv.text(b.content):match("No such tool available: ([%w_%-]+)")
        if name then return "the model called " .. name .. ", which it does not have", name end
      end
    end
  end
  local text = conv.text(msgs[last_a].content)
  if text ~= "" then
    for _, name in ipairs(offered) do
      local at = text:find(name, 1, true)
      if at and #name > 2 then
        -- named as a tool, not as a word: "WebFetch", <function=WebFetch>, WebFetch(...),
        -- `WebFetch`, "the WebFetch tool"
        local before = at > 1 and text:sub(at - 1, at - 1) or " "
        local after = text:sub(at + #name, at + #name + 4)
        if (before:match("[\"'`=]") or after:match("^[\"'`(>]") or after == " tool")
            and not before:match("[%w_]") then
          return "the model asked for " .. name .. ", which it was not sent", name
        end
      end
    end
  end
  if loop_repeats >= 2 then
    local n, fp = 0, nil
    for i = #msgs, 1, -1 do
      if msgs[i].role == "assistant" then
        local f = conv.turn_fingerprint(msgs[i])
        if f == nil or (fp ~= nil and f ~= fp) then break end
        fp = f
        n = n + 1
        if n >= loop_repeats then return "the same tool call repeats" end
      end
    end
  end
  return nil
end

function M.on_request(req, ctx)
  if ctx.count_only then return end
  local s, matched = profiles.settings(ctx, M.name)
  local tools, msgs = req.tools, req.messages
  local max_tools = math.tointeger(s.max_tools) or 12
  if not conv.is_array(tools) or #tools <= max_tools or not conv.is_array(msgs) then return end
  local n_tools = #tools

  local offered, keep, n_keep = {}, {}, 0
  for i = 1, n_tools do offered[tostring(tools[i].name)] = i end
  local function want(name, limit)
    if name and offered[name] and not keep[name] and (limit == nil or n_keep < limit) then
      keep[name] = true
      n_keep = n_keep + 1
    end
  end
  for name in tostring(s.always):gmatch("[^,%s]+") do want(name) end
  local tc = req.tool_choice
  if conv.is_object(tc) and tc.type == "tool" then want(tc.name) end
  -- names only: conv.tool_calls would encode every call's input, on every request
  for i = 1, #msgs do
    local m = msgs[i]
    if m.role == "assistant" then
      local blocks = conv.blocks(m)
      for k = 1, blocks and #blocks or 0 do
        local b = blocks[k]
        if conv.is_object(b) and b.type == "tool_use" and type(b.name) == "string" then
          want(b.name)
        end
      end
    end
  end

  local asked = recent_words(msgs, math.tointeger(s.recent_turns) or 4)
  local scored = {}
  for i = 1, n_tools do
    local t = tools[i]
    if not keep[t.name] then
      local score = 0
      for w in pairs(tool_words(t)) do score = score + (asked[w] or 0) end
      scored[#scored + 1] = { name = t.name, score = score, index = i }
    end
  end
  table.sort(scored, function(a, b)
    if a.score ~= b.score then return a.score > b.score end
    return a.index < b.index
  end)
  for _, c in ipairs(scored) do
    if c.score > 0 then want(c.name, max_tools) end
  end

  -- Widening: the model named a tool outside this selection, was told it has no such tool,
  -- or loops. The named tool comes in, and the selection grows to widen_to (0: everything).
  local missing = {}
  for i = 1, n_tools do
    if not keep[tools[i].name] then missing[#missing + 1] = tostring(tools[i].name) end
  end
  local why, named = widen_reason(msgs, missing, math.tointeger(s.loop_repeats) or 3)
  if why then
    local limit = math.tointeger(s.widen_to) or 0
    profiles.count("widen")
    if limit <= 0 or limit >= n_tools then
      ax.log.info("tool_narrowing: widened to all %d tools (%s)", n_tools, why)
      return
    end
    if named then want(named) end
    for _, c in ipairs(scored) do want(c.name, limit) end
  end

  local dropped = 0
  for i = n_tools, 1, -1 do
    if not keep[tools[i].name] then ax.remove(tools, i); dropped = dropped + 1 end
  end
  if dropped == 0 then return end
  ax.log.info("tool_narrowing: sent %d of %d tools%s%s", n_tools - dropped, n_tools,
    why and (" (widened: " .. why .. ")") or "", matched ~= "" and (", profile " .. matched) or "")
  profiles.count("narrowed")
  profiles.count("tools_dropped", dropped)
end

return M
