-- tool_retry: a tool call whose arguments do not match the tool's input_schema (a required
-- property missing, a wrong type, a value outside an enum, an unknown property where the
-- schema forbids them) is retried once upstream at low temperature, with the schema errors
-- appended to its result, within a budget per session.
--
-- It works from the answer alone, as the client sends it back: on the request that carries
-- the results of the model's last calls, each of those calls is checked against the schema
-- of the tool it names (in this request's tools). When one fails and the client marked its
-- result as an error (a call the client ran anyway has a real result), the request is the
-- retry: that result gets a note naming each error and asking for the call again, and the
-- request goes upstream at `temperature`. Claude Code reports an InputValidationError itself
-- and would pass it back anyway; the retry adds the exact schema errors and the low
-- temperature, once per failing call: when the retried call fails again, the next request
-- passes through unchanged. `budget` retries per session (ctx.session.tool_retries).
-- Off by default (not in default.lua's active set).
local ax = require "anthroxy"
local conv = require "anthroxy.conv"
local profiles = require "anthroxy.profiles"

local M = {
  name = "tool_retry",
  defaults = {
    budget = 5,          -- retries per session
    temperature = 0.1,   -- of the retried request
    profiles = {},
  },
}

M.NOTE_TAG = "[anthroxy: tool_retry]"
local MAX_ERRORS = 8
local MAX_DEPTH = 16
local MAX_ITEMS = 64

local function show(v)
  local ok, s = pcall(ax.json.encode, v)
  s = ok and s or tostring(v)
  if #s > 60 then s = s:sub(1, 57) .. "..." end
  return s
end

local function type_ok(t, v)
  local jt = ax.json.type(v)
  if t == "integer" then
    return math.type(v) == "integer" or (type(v) == "number" and v == math.floor(v))
  end
  if t == "number" then return type(v) == "number" end
  if t == "string" then return type(v) == "string" end
  if t == "boolean" then return type(v) == "boolean" end
  if t == "null" then return v == ax.json.null end
  if t == "object" then return jt == "object" or (type(v) == "table" and next(v) == nil) end
  if t == "array" then return jt == "array" or (type(v) == "table" and next(v) == nil) end
  return true -- a type we do not know: not ours to reject
end

local check

local function add(errs, msg)
  if #errs < MAX_ERRORS then errs[#errs + 1] = msg end
end

-- Appends to errs what is wrong with value v at path against schema (plain tables).
check = function(schema, v, path, errs, depth)
  if type(schema) ~= "table" or depth > MAX_DEPTH or #errs >= MAX_ERRORS then return end
  local where = path == "" and "the arguments" or path
  for _, key in ipairs{ "anyOf", "oneOf" } do
    local alts = schema[key]
    if type(alts) == "table" and #alts > 0 then
      local any = false
      for _, alt in ipairs(alts) do
        local e = {}
        check(alt, v, path, e, depth + 1)
        if #e == 0 then any = true; break end
      end
      if not any then add(errs, where .. " matches none of the allowed forms") end
    end
  end
  local t = schema.type
  if type(t) == "string" then
    if not type_ok(t, v) then
      add(errs, string.format("%s must be %s %s, not %s", where,
        (t == "integer" or t == "array" or t == "object") and "an" or "a", t, show(v)))
      return
    end
  elseif type(t) == "table" and #t > 0 then
    local ok = false
    for _, one in ipairs(t) do if type_ok(one, v) then ok = true; break end end
    if not ok then
      add(errs, string.format("%s must be one of the types %s, not %s", where,
        table.concat(t, ", "), show(v)))
      return
    end
  end
  if type(schema.enum) == "table" and #schema.enum > 0 then
    local ok = false
    for _, e in ipairs(schema.enum) do if e == v then ok = true; break end end
    if not ok then
      local allowed = {}
      for i, e in ipairs(schema.enum) do
        if i > 10 then allowed[#allowed + 1] = "..."; break end
        allowed[#allowed + 1] = show(e)
      end
      add(errs, string.format("%s must be one of %s, not %s", where,
        table.concat(allowed, ", "), show(v)))
    end
  end
  local jt = ax.json.type(v)
  if jt == "object" or (type(v) == "table" and next(v) == nil and schema.type == "object") then
    if type(schema.required) == "table" then
      for _, k in ipairs(schema.required) do
        if type(k) == "string" and v[k] == nil then
          add(errs, string.format("missing required property %q%s", k,
            path == "" and "" or (" in " .. path)))
        end
      end
    end
    local props = type(schema.properties) == "table" and schema.properties or {}
    local keys = {}
    for k in pairs(v) do keys[#keys + 1] = k end
    table.sort(keys)
    for _, k in ipairs(keys) do
      local sub = props[k]
      local kp = path == "" and k or (path .. "." .. k)
      if sub ~= nil then
        check(sub, v[k], kp, errs, depth + 1)
      elseif schema.additionalProperties == false then
        add(errs, string.format("unexpected property %q (the schema allows: %s)", kp,
          (function()
            local names = {}
            for name in pairs(props) do names[#names + 1] = name end
            table.sort(names)
            return table.concat(names, ", ")
          end)()))
      elseif type(schema.additionalProperties) == "table" then
        check(schema.additionalProperties, v[k], kp, errs, depth + 1)
      end
    end
  elseif jt == "array" and type(schema.items) == "table" then
    for i = 1, math.min(#v, MAX_ITEMS) do
      check(schema.items, v[i], string.format("%s[%d]", path == "" and "items" or path, i - 1),
        errs, depth + 1)
    end
  end
end

-- The schema errors of `input` (plain) against `schema` (plain), as a list of strings.
function M.validate(schema, input)
  local errs = {}
  if input == nil then input = ax.json.object() end
  check(schema, input, "", errs, 0)
  return errs
end

-- The tools of the request by name (views, valid in this hook).
local function tools_by_name(req)
  local out = {}
  local tools = req.tools
  if not conv.is_array(tools) then return out end
  for i = 1, #tools do
    local t = tools[i]
    if conv.is_object(t) and type(t.name) == "string" then out[t.name] = t end
  end
  return out
end

-- The failing calls of an assistant message: { {id, name, errors} }.
function M.failing_calls(msg, tools)
  local out = {}
  local blocks = conv.blocks(msg)
  for k = 1, blocks and #blocks or 0 do
    local b = blocks[k]
    if conv.is_object(b) and b.type == "tool_use" and type(b.name) == "string" then
      local tool = tools[b.name]
      local schema = tool and tool.input_schema
      if conv.is_object(schema) then
        local input = ax.is_view(b.input) and ax.json.totable(b.input) or b.input
        local errs = M.validate(ax.json.totable(schema), input)
        if #errs > 0 then out[#out + 1] = { id = b.id, name = b.name, errors = errs } end
      end
    end
  end
  return out
end

local function note_text(call)
  return string.format("%s The arguments of this %s call do not match its input_schema: %s. "
    .. "Call %s again with arguments that match the schema exactly (property names, types "
    .. "and allowed values), or choose another tool.", M.NOTE_TAG, call.name,
    table.concat(call.errors, "; "), call.name)
end

-- The tool_result answering `id` in msg, or nil.
local function result_of(msg, id)
  local blocks = conv.blocks(msg)
  for k = 1, blocks and #blocks or 0 do
    local b = blocks[k]
    if conv.is_object(b) and b.type == "tool_result" and b.tool_use_id == id then return b end
  end
  return nil
end

-- Appends the note to the tool_result answering call.id in message msg; true when found.
local function annotate(msg, call)
  local blocks = conv.blocks(msg)
  for k = 1, blocks and #blocks or 0 do
    local b = blocks[k]
    if conv.is_object(b) and b.type == "tool_result" and b.tool_use_id == call.id then
      local note = { type = "text", text = note_text(call) }
      local c = b.content
      if conv.is_array(c) then
        ax.insert(c, note)
      elseif type(c) == "string" and c ~= "" then
        b.content = { { type = "text", text = c }, note }
      else
        b.content = { note }
      end
      return true
    end
  end
  return false
end

-- Names of the calls of `msg` that failed their schema (the retry already made for them).
local function failed_names(msg, tools)
  local names = {}
  if msg and msg.role == "assistant" then
    for _, c in ipairs(M.failing_calls(msg, tools)) do names[c.name] = true end
  end
  return names
end

-- Index of the last message that is not a system one: Claude Code (2.1.332) sends reminders
-- as role "system" messages after the tool results.
local function last_turn(msgs, from)
  for i = from or #msgs, 1, -1 do
    if msgs[i].role ~= "system" then return i end
  end
  return nil
end

function M.on_request(req, ctx)
  if ctx.count_only then return end
  local msgs = req.messages
  if not conv.is_array(msgs) or #msgs < 3 then return end
  local li = last_turn(msgs)
  local pi = li and last_turn(msgs, li - 1)
  if not pi then return end
  local last, prev = msgs[li], msgs[pi]
  if last.role ~= "user" or prev.role ~= "assistant" or not conv.has_block(last, "tool_result") then
    return
  end
  local tools = tools_by_name(req)
  local failing = {}
  for _, c in ipairs(M.failing_calls(prev, tools)) do
    -- A call the client ran anyway (it coerced the arguments) has a real result: no retry.
    local r = result_of(last, c.id)
    if r and r.is_error == true then
      failing[#failing + 1] = c
    elseif r then
      ax.log.info("tool_retry: %s call off its schema, but the client ran it (%s)", c.name,
        c.errors[1])
      profiles.count("client_ran")
    end
  end
  if #failing == 0 then return end
  local s, matched = profiles.settings(ctx, M.name)
  -- Once per call: when the turn before was the retry of the same tool and failed too, the
  -- model cannot fix it this way; pass the failure through.
  local bi -- the assistant turn before
  for i = pi - 1, 1, -1 do
    if msgs[i].role == "assistant" then bi = i; break end
  end
  local before = failed_names(bi and msgs[bi], tools)
  local retry = {}
  for _, c in ipairs(failing) do
    if not before[c.name] then retry[#retry + 1] = c end
  end
  local session = ctx.session or {}
  local used = session.tool_retries or 0
  local budget = math.tointeger(s.budget) or 0
  if #retry == 0 or used >= budget then
    ax.log.info("tool_retry: %s call with bad arguments passed through (%s)", failing[1].name,
      #retry == 0 and "its retry failed too" or string.format("budget of %d retries spent", budget))
    profiles.count("passed")
    return
  end
  local n = 0
  for _, c in ipairs(retry) do
    if annotate(last, c) then n = n + 1 end
  end
  if n == 0 then return end
  local t = tonumber(s.temperature)
  if t and t >= 0 then req.temperature = t end
  if ctx.session and ctx.session.note_tool_retry then ctx.session:note_tool_retry() end
  ax.log.info("tool_retry: retrying %s at temperature %s: %s (retry %d of %d this session%s)",
    retry[1].name, tostring(t), table.concat(retry[1].errors, "; "):sub(1, 300), used + 1, budget,
    matched ~= "" and (", profile " .. matched) or "")
  profiles.count("retry", n)
  -- per model too (the figures compare models): "retry:<model>", within the name's 63 bytes
  profiles.count("retry:" .. profiles.model_name(ctx):sub(1, 56), n)
end

-- When the core checks the answer's calls itself (ctx.tool_calls, filled by the response
-- translator once it validates arguments), the failure is seen as it happens: logged and
-- counted here, retried on the request that brings its result back (above).
function M.on_response(resp, ctx)
  local tc = ctx.tool_calls
  local n = type(tc) == "table" and tonumber(tc.schema_failures) or 0
  if n <= 0 then return end
  ax.log.info("tool_retry: the answer has %d call%s off its schema (%s): retried when its "
    .. "result comes back", n, n == 1 and "" or "s", tostring(tc.first_failure or "?"))
  profiles.count("detected", n)
end

return M
