-- tool_narrowing: when a client offers many tools (Claude Code sends 20-odd, MCP servers add
-- dozens), sends only those relevant to the recent turns. Each tool schema costs prompt
-- tokens on every request, and small models choose worse among many tools. Kept, in order:
-- the tools named in `always`, the tool a client's tool_choice names, the tools called in the
-- last `recent_turns` assistant turns, then the best matches between the words of the last
-- user message and each tool's name and description, up to `max_tools`.
local ax = require "anthroxy"
local conv = require "anthroxy.conv"

local M = {
  name = "tool_narrowing",
  defaults = {
    max_tools = 12,
    recent_turns = 8,
    always = "Read,Edit,Write,Bash,Grep,Glob",   -- comma-separated names
  },
}

local function words(text)
  local set = {}
  for w in tostring(text or ""):lower():gmatch("[%a][%w_]+") do
    if #w > 2 then set[w] = true end
  end
  return set
end

-- Words of a tool: its name split at case changes and underscores, plus its description.
local function tool_words(tool)
  local name = tostring(tool.name or ""):gsub("(%l)(%u)", "%1 %2"):gsub("[_%-]", " ")
  local set = words(name .. " " .. tostring(tool.description or ""):sub(1, 600))
  return set
end

function M.on_request(req, ctx)
  local s = ctx.settings
  local tools, msgs = req.tools, req.messages
  if not conv.is_array(tools) or #tools <= s.max_tools or not conv.is_array(msgs) then return end

  local keep, n_keep = {}, 0
  local function want(name)
    if name and not keep[name] and n_keep < s.max_tools then keep[name] = true; n_keep = n_keep + 1 end
  end
  local offered = {}
  for i = 1, #tools do offered[tostring(tools[i].name)] = true end
  for name in tostring(s.always):gmatch("[^,%s]+") do if offered[name] then want(name) end end
  local tc = req.tool_choice
  if conv.is_object(tc) and tc.type == "tool" then want(tc.name) end
  local seen = 0
  for i = #msgs, 1, -1 do
    if msgs[i].role == "assistant" then
      seen = seen + 1
      if seen > s.recent_turns then break end
      local blocks = conv.blocks(msgs[i])
      for k = 1, blocks and #blocks or 0 do
        local b = blocks[k]
        if b.type == "tool_use" and offered[b.name] then want(b.name) end
      end
    end
  end
  local last_user = conv.last_index_of(msgs, "user")
  local asked = words(last_user and conv.text(msgs[last_user].content) or "")
  local scored = {}
  for i = 1, #tools do
    local t = tools[i]
    if not keep[t.name] then
      local score = 0
      for w in pairs(tool_words(t)) do if asked[w] then score = score + 1 end end
      scored[#scored + 1] = { name = t.name, score = score, index = i }
    end
  end
  table.sort(scored, function(a, b)
    if a.score ~= b.score then return a.score > b.score end
    return a.index < b.index
  end)
  for _, c in ipairs(scored) do if c.score > 0 then want(c.name) end end

  local dropped = 0
  for i = #tools, 1, -1 do
    if not keep[tools[i].name] then ax.remove(tools, i); dropped = dropped + 1 end
  end
  ax.log.info("tools: sent %d of %d", #tools, #tools + dropped)
end

return M
