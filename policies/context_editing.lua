-- context_editing: Anthropic's context editing (`context_management.edits`, beta
-- context-management-2025-06-27) over any upstream, as a policy:
--   clear_tool_uses_20250919: past `trigger` (input tokens, default 100,000, or tool uses),
--     the results of the oldest tool uses become a short placeholder, all but the last `keep`
--     (default 3); `exclude_tools` are never cleared; `clear_tool_inputs` (true, or a list of
--     tool names) also empties the cleared calls' inputs; `clear_at_least` input tokens must
--     be freed, else nothing is cleared. tool_use and tool_result stay paired.
--   clear_thinking_20251015: thinking blocks of all but the last `keep` assistant turns that
--     have them go ({type="thinking_turns", value=N}; "all" keeps every one; default 1).
-- The request is stateless (the client sends its whole history every turn), so the cut is
-- moved in steps of `step` tool uses: it stays put from turn to turn and the upstream's
-- prompt cache survives between two moves; between keep and keep+step-1 uses are kept.
-- What was done goes to the core in req.context_management.applied_edits, which it reports
-- to the client (the JSON answer, the stream's message_delta, count_tokens) and never sends
-- upstream. An operator can apply the edits to clients that never ask (clear_tool_uses,
-- clear_thinking below); a client's own edit of the same type wins over the operator's.
local ax = require "anthroxy"
local conv = require "anthroxy.conv"

local M = {
  name = "context_editing",
  defaults = {
    honour_client = true,      -- apply the edits the client sends
    clear_tool_uses = false,   -- operator: clear tool uses for clients that do not ask
    trigger = 100000,          -- operator edit: input tokens (the API's default)
    trigger_share = 0,         -- operator edit: >0 makes the trigger this share of the window
    keep = 3,                  -- operator edit: tool uses kept
    clear_at_least = 0,        -- operator edit: tokens that must be freed
    exclude_tools = "",        -- operator edit: comma-separated tool names never cleared
    clear_tool_inputs = false, -- operator edit: also empty the inputs of cleared calls
    clear_thinking = false,    -- operator: clear thinking for clients that do not ask
    thinking_keep = 1,         -- operator edit: assistant turns whose thinking is kept
    step = 5,                  -- the cut moves in steps of this many tool uses (1: exact)
  },
}

M.PLACEHOLDER = "[tool result cleared by context editing to save context]"

local function name_set(v)
  local s = {}
  if type(v) == "string" then
    for name in v:gmatch("[^,%s]+") do s[name] = true end
  elseif v ~= nil and v ~= ax.json.null then
    for _, name in ax.ipairs(v) do s[name] = true end
  end
  return s
end

local function fail_field(path, msg)
  local field = path == "" and "context_management" or ("context_management." .. path)
  ax.fail(400, "invalid_request_error", field .. ": " .. msg)
end

-- {type = t, value = n} with t one of `types`; returns t, n (nil when absent).
local function typed_value(v, path, types, default_type, default_value)
  if v == nil or v == ax.json.null then return default_type, default_value end
  if ax.json.type(v) ~= "object" or not types[v.type] then
    local names = {}
    for k in pairs(types) do names[#names + 1] = "'" .. k .. "'" end
    table.sort(names)
    fail_field(path, "expected an object with type " .. table.concat(names, " or "))
  end
  if math.type(v.value) ~= "integer" or v.value < 0 then
    fail_field(path .. ".value", "expected a non-negative integer")
  end
  return v.type, v.value
end

-- The client's clear_tool_uses edit as plain settings, validated.
local function tool_uses_config(e, path)
  local cfg = {}
  cfg.trigger_type, cfg.trigger = typed_value(e.trigger, path .. ".trigger",
    { input_tokens = true, tool_uses = true }, "input_tokens", 100000)
  local _
  _, cfg.keep = typed_value(e.keep, path .. ".keep", { tool_uses = true }, "tool_uses", 3)
  _, cfg.clear_at_least = typed_value(e.clear_at_least, path .. ".clear_at_least",
    { input_tokens = true }, "input_tokens", 0)
  local ex = e.exclude_tools
  if ex ~= nil and ex ~= ax.json.null and ax.json.type(ex) ~= "array" then
    fail_field(path .. ".exclude_tools", "expected an array of tool names")
  end
  cfg.exclude = name_set(ex)
  local cti = e.clear_tool_inputs
  if cti == true then
    cfg.inputs_all = true
  elseif ax.json.type(cti) == "array" then
    cfg.inputs = name_set(cti)
  elseif cti ~= nil and cti ~= false and cti ~= ax.json.null then
    fail_field(path .. ".clear_tool_inputs", "expected a boolean or an array of tool names")
  end
  cfg.inputs = cfg.inputs or {}
  return cfg
end

local function operator_tool_uses(s, ctx)
  local trigger = s.trigger
  if s.trigger_share > 0 then trigger = math.floor(s.trigger_share * ctx.context_window) end
  local inputs_all = s.clear_tool_inputs == true
  return { trigger_type = "input_tokens", trigger = trigger, keep = s.keep,
           clear_at_least = s.clear_at_least, exclude = name_set(s.exclude_tools),
           inputs_all = inputs_all,
           inputs = (type(s.clear_tool_inputs) == "string") and name_set(s.clear_tool_inputs) or {} }
end

-- Every tool_use of the conversation, oldest first, with where its result is.
local function tool_uses(msgs)
  local uses, by_id = {}, {}
  for i = 1, #msgs do
    local m = msgs[i]
    local blocks = conv.blocks(m)
    if blocks then
      for j = 1, #blocks do
        local b = blocks[j]
        if conv.is_object(b) then
          if m.role == "assistant" and b.type == "tool_use" and type(b.id) == "string" then
            local u = { id = b.id, name = b.name, mi = i, bi = j }
            uses[#uses + 1] = u
            by_id[b.id] = u
          elseif b.type == "tool_result" and type(b.tool_use_id) == "string" then
            local u = by_id[b.tool_use_id]
            if u then u.rmi, u.rbi = i, j end
          end
        end
      end
    end
  end
  return uses
end

local function result_tokens(block)
  local c = block.content
  if c == nil then return 0 end
  if type(c) == "string" then return ax.tokens(c) end
  return ax.tokens(ax.json.encode(c))
end

-- Returns the number of tool uses cleared (0: nothing done).
local function clear_tool_uses(req, ctx, cfg, step)
  local msgs = req.messages
  local uses = tool_uses(msgs)
  if cfg.trigger_type == "tool_uses" then
    if #uses <= cfg.trigger then return 0 end
  elseif ax.request_tokens(req, ctx) <= cfg.trigger then
    return 0
  end
  local eligible = {}
  for _, u in ipairs(uses) do
    if not cfg.exclude[u.name] then eligible[#eligible + 1] = u end
  end
  local want = #eligible - cfg.keep
  if want <= 0 then return 0 end
  local stepped = want
  if step > 1 then stepped = want - want % step end
  local placeholder_tokens = ax.tokens(M.PLACEHOLDER)
  local function freed(n)
    local f = 0
    for k = 1, n do
      local u = eligible[k]
      if u.rmi then
        f = f + math.max(0, result_tokens(msgs[u.rmi].content[u.rbi]) - placeholder_tokens)
      end
      if cfg.inputs_all or cfg.inputs[u.name] then
        f = f + math.max(0, ax.tokens(ax.json.encode(msgs[u.mi].content[u.bi].input or {})) - 1)
      end
    end
    return f
  end
  if stepped == 0 then return 0 end -- not a whole step yet: the cut stays where it was
  local n = stepped
  if freed(n) < cfg.clear_at_least then
    n = want -- the step alone frees too little: clear all that may go
    if freed(n) < cfg.clear_at_least then return 0 end
  end
  local cleared = 0
  for k = 1, n do
    local u = eligible[k]
    local done = false
    if u.rmi then
      local r = msgs[u.rmi].content[u.rbi]
      if r.content ~= M.PLACEHOLDER then
        r.content = M.PLACEHOLDER
        done = true
      end
    end
    if cfg.inputs_all or cfg.inputs[u.name] then
      local tu = msgs[u.mi].content[u.bi]
      if ax.json.type(tu.input) ~= "object" or next(ax.json.totable(tu.input)) ~= nil then
        tu.input = ax.json.object()
        done = true
      end
    end
    if done then cleared = cleared + 1 end
  end
  return cleared
end

local function is_thinking(b)
  return conv.is_object(b) and (b.type == "thinking" or b.type == "redacted_thinking")
end

-- Returns the number of assistant turns whose thinking went.
local function clear_thinking(req, keep)
  if keep == "all" then return 0 end
  local msgs = req.messages
  local turns = {}
  for i = 1, #msgs do
    if msgs[i].role == "assistant" then
      local blocks = conv.blocks(msgs[i])
      if blocks then
        local has, other = false, false
        for j = 1, #blocks do
          if is_thinking(blocks[j]) then has = true else other = true end
        end
        if has and other then turns[#turns + 1] = i end -- a turn of thinking only stays
      end
    end
  end
  local cleared = 0
  for k = 1, #turns - keep do
    local blocks = msgs[turns[k]].content
    for j = #blocks, 1, -1 do
      if is_thinking(blocks[j]) then ax.remove(blocks, j) end
    end
    cleared = cleared + 1
  end
  return cleared
end

local function thinking_keep(e, path)
  local k = e.keep
  if k == nil or k == ax.json.null then return 1 end
  if k == "all" then return "all" end
  if ax.json.type(k) == "object" and k.type == "all" then return "all" end
  local _, n = typed_value(k, path .. ".keep", { thinking_turns = true }, "thinking_turns", 1)
  return n
end

-- The edits to run, in order: the client's (validated), then the operator's for the types
-- the client did not ask for.
local function plan(req, ctx)
  local s = ctx.settings
  local edits, asked = {}, {}
  local cm = req.context_management
  if s.honour_client and cm ~= nil and cm ~= ax.json.null then
    if ax.json.type(cm) ~= "object" then fail_field("", "expected an object") end
    local list = cm.edits
    if list ~= nil and list ~= ax.json.null then
      if ax.json.type(list) ~= "array" then fail_field("edits", "expected an array") end
      for i, e in ax.ipairs(list) do
        local path = "edits." .. (i - 1)
        if ax.json.type(e) ~= "object" then fail_field(path, "expected an object") end
        if e.type == "clear_tool_uses_20250919" then
          edits[#edits + 1] = { type = e.type, cfg = tool_uses_config(e, path) }
        elseif e.type == "clear_thinking_20251015" then
          edits[#edits + 1] = { type = e.type, keep = thinking_keep(e, path) }
        elseif e.type == "compact_20260112" then
          -- policies/compaction.lua's
        else
          fail_field(path .. ".type", "unknown edit type '" .. tostring(e.type) .. "'")
        end
        asked[e.type] = true
      end
    end
  end
  if s.clear_thinking and not asked.clear_thinking_20251015 then
    table.insert(edits, 1, { type = "clear_thinking_20251015", keep = s.thinking_keep })
  end
  if s.clear_tool_uses and not asked.clear_tool_uses_20250919 then
    edits[#edits + 1] = { type = "clear_tool_uses_20250919", cfg = operator_tool_uses(s, ctx) }
  end
  return edits
end

function M.on_request(req, ctx)
  local cm = req.context_management
  if cm ~= nil and ax.json.type(cm) == "object" and cm.applied_edits ~= nil then
    cm.applied_edits = nil -- ours to write: a client cannot report edits we did not make
  end
  if not conv.is_array(req.messages) then return end
  local edits = plan(req, ctx)
  if #edits == 0 then return end
  local applied = {}
  for _, e in ipairs(edits) do
    local before = ax.request_tokens(req)
    if e.type == "clear_tool_uses_20250919" then
      local n = clear_tool_uses(req, ctx, e.cfg, math.max(1, ctx.settings.step))
      if n > 0 then
        applied[#applied + 1] = { type = e.type, cleared_tool_uses = n,
          cleared_input_tokens = math.max(0, before - ax.request_tokens(req)) }
      end
    else
      local n = clear_thinking(req, e.keep)
      if n > 0 then
        applied[#applied + 1] = { type = e.type, cleared_thinking_turns = n,
          cleared_input_tokens = math.max(0, before - ax.request_tokens(req)) }
      end
    end
  end
  if #applied == 0 then return end
  for _, a in ipairs(applied) do
    ax.log.info("%s: %d cleared, %d tokens", a.type,
                a.cleared_tool_uses or a.cleared_thinking_turns, a.cleared_input_tokens)
  end
  if req.context_management == nil or ax.json.type(req.context_management) ~= "object" then
    req.context_management = { applied_edits = applied }
  else
    req.context_management.applied_edits = applied
  end
end

return M
