-- tests/lua/shim/anthroxy.lua - a plain-Lua stand-in for the C module `anthroxy`, so the
-- policy tests also run under the bare lua5.4 interpreter (tests/lua/shim/run.lua) while the
-- engine is not available. Under `anthroxy test-lua` the real module is used instead and this
-- file is never loaded. It mirrors the documented API (docs/policies.md) on plain tables:
-- no views, no sandbox, no yields. The token estimator is a rough one of its own; tests
-- compare figures against this same module, never against absolute numbers.
local M = { version = "shim" }

local ARRAY_MT = { __name = "ax.json.array" }
local OBJECT_MT = { __name = "ax.json.object" }

M.json = {}
M.json.null = setmetatable({}, { __name = "ax.json.null", __tostring = function() return "null" end })

function M.json.array(t) return setmetatable(t or {}, ARRAY_MT) end
function M.json.object(t) return setmetatable(t or {}, OBJECT_MT) end

function M.json.type(v)
  local tv = type(v)
  if v == nil then return "nil" end
  if v == M.json.null then return "null" end
  if tv == "string" then return "string" end
  if tv == "number" then return "number" end
  if tv == "boolean" then return "boolean" end
  if tv == "table" then
    local mt = getmetatable(v)
    if mt == ARRAY_MT then return "array" end
    if mt == OBJECT_MT then return "object" end
    if v[1] ~= nil then return "array" end
    return "object" -- as the engine: an unmarked empty table is an object
  end
  return tv
end

local function encode_string(s)
  return '"' .. s:gsub('[%c"\\]', function(c)
    local map = { ['"'] = '\\"', ['\\'] = '\\\\', ['\n'] = '\\n', ['\r'] = '\\r', ['\t'] = '\\t' }
    return map[c] or string.format("\\u%04x", c:byte())
  end) .. '"'
end

local function encode(v, out)
  local t = M.json.type(v)
  if t == "null" or t == "nil" then out[#out + 1] = "null"
  elseif t == "string" then out[#out + 1] = encode_string(v)
  elseif t == "number" then
    if math.type(v) == "integer" then out[#out + 1] = tostring(v)
    elseif v == math.floor(v) and math.abs(v) < 2^53 then out[#out + 1] = string.format("%d", v)
    else out[#out + 1] = string.format("%.17g", v) end
  elseif t == "boolean" then out[#out + 1] = tostring(v)
  elseif t == "array" then
    out[#out + 1] = "["
    for i = 1, #v do
      if i > 1 then out[#out + 1] = "," end
      encode(v[i], out)
    end
    out[#out + 1] = "]"
  else
    local keys = {}
    for k in pairs(v) do keys[#keys + 1] = tostring(k) end
    table.sort(keys) -- deterministic: fingerprints compare encodings
    out[#out + 1] = "{"
    for i, k in ipairs(keys) do
      if i > 1 then out[#out + 1] = "," end
      out[#out + 1] = encode_string(k) .. ":"
      encode(v[k], out)
    end
    out[#out + 1] = "}"
  end
end

function M.json.encode(v)
  local out = {}
  encode(v, out)
  return table.concat(out)
end

-- A small recursive-descent decoder: enough for the fixtures (UTF-8 passes through).
function M.json.decode(s)
  local pos = 1
  local function ws() pos = s:find("[^ \t\r\n]", pos) or #s + 1 end
  local value
  local function str()
    local out = {}
    pos = pos + 1
    while true do
      local c = s:sub(pos, pos)
      if c == '"' then pos = pos + 1; break end
      if c == "\\" then
        local e = s:sub(pos + 1, pos + 1)
        if e == "u" then
          local cp = tonumber(s:sub(pos + 2, pos + 5), 16)
          pos = pos + 6
          if cp >= 0xD800 and cp <= 0xDBFF and s:sub(pos, pos + 1) == "\\u" then
            local lo = tonumber(s:sub(pos + 2, pos + 5), 16)
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00)
            pos = pos + 6
          end
          out[#out + 1] = utf8.char(cp)
        else
          local map = { n = "\n", r = "\r", t = "\t", b = "\b", f = "\f" }
          out[#out + 1] = map[e] or e
          pos = pos + 2
        end
      else
        local j = s:find('["\\]', pos)
        out[#out + 1] = s:sub(pos, j - 1)
        pos = j
      end
    end
    return table.concat(out)
  end
  function value()
    ws()
    local c = s:sub(pos, pos)
    if c == "{" then
      local obj = M.json.object()
      pos = pos + 1; ws()
      if s:sub(pos, pos) == "}" then pos = pos + 1; return obj end
      while true do
        ws()
        local k = str()
        ws(); assert(s:sub(pos, pos) == ":", "json: ':' expected at " .. pos); pos = pos + 1
        obj[k] = value()
        ws()
        local d = s:sub(pos, pos); pos = pos + 1
        if d == "}" then return obj end
        assert(d == ",", "json: ',' expected at " .. pos)
      end
    elseif c == "[" then
      local arr = M.json.array()
      pos = pos + 1; ws()
      if s:sub(pos, pos) == "]" then pos = pos + 1; return arr end
      while true do
        arr[#arr + 1] = value()
        ws()
        local d = s:sub(pos, pos); pos = pos + 1
        if d == "]" then return arr end
        assert(d == ",", "json: ',' expected at " .. pos)
      end
    elseif c == '"' then return str()
    elseif s:sub(pos, pos + 3) == "true" then pos = pos + 4; return true
    elseif s:sub(pos, pos + 4) == "false" then pos = pos + 5; return false
    elseif s:sub(pos, pos + 3) == "null" then pos = pos + 4; return M.json.null
    else
      local num = s:match("^-?%d+%.?%d*[eE]?[-+]?%d*", pos)
      pos = pos + #num
      return math.tointeger(tonumber(num)) or tonumber(num)
    end
  end
  return value()
end

local function copy(v)
  if type(v) ~= "table" or v == M.json.null then return v end
  local c = setmetatable({}, getmetatable(v))
  for k, x in pairs(v) do c[k] = copy(x) end
  return c
end
M.json.totable = copy

M.ipairs = ipairs
M.pairs = pairs
M.len = function(v) return #v end
M.is_view = function() return false end
M.remove = table.remove
M.insert = table.insert

-- Estimator: about 4 bytes a token, plus structure. Only self-consistency matters here.
function M.tokens(text)
  if type(text) ~= "string" then return 0 end
  return (#text + 3) // 4
end

local function content_tokens(c)
  if type(c) == "string" then return M.tokens(c) end
  if type(c) ~= "table" then return 0 end
  local n = 0
  for _, b in ipairs(c) do
    if type(b) == "string" then n = n + M.tokens(b)
    elseif b.type == "text" then n = n + M.tokens(b.text)
    elseif b.type == "thinking" then n = n + M.tokens(b.thinking)
    elseif b.type == "tool_use" then n = n + M.tokens(b.name) + M.tokens(M.json.encode(b.input or {}))
    elseif b.type == "tool_result" then n = n + 2 + content_tokens(b.content)
    elseif b.type == "image" then n = n + 1600
    end
  end
  return n
end

function M.message_tokens(msg) return 4 + content_tokens(msg.content) end

function M.request_tokens(req)
  local n = 0
  if type(req.system) == "string" then n = n + M.tokens(req.system)
  elseif type(req.system) == "table" then n = n + content_tokens(req.system) end
  if type(req.tools) == "table" and #req.tools > 0 then n = n + M.tokens(M.json.encode(req.tools)) end
  for _, m in ipairs(req.messages or {}) do n = n + M.message_tokens(m) end
  return n
end

function M.calibrated(n, ctx)
  local f = ctx and ctx.session and ctx.session.calibration or 1.0
  return math.floor(n * f + 0.5)
end

M.logged = {}
local function logger(level)
  return function(fmt, ...)
    local msg = select("#", ...) > 0 and string.format(fmt, ...) or tostring(fmt)
    M.logged[#M.logged + 1] = level .. ": " .. msg
  end
end
M.log = { debug = logger("debug"), info = logger("info"), warn = logger("warn"), error = logger("error") }

-- ax.fail raises what the engine's test runner raises: { fail = { status, type, message } }.
function M.fail(status, etype, message)
  error({ fail = { status = status, type = etype, message = message } }, 2)
end

function M.now_ms() return math.floor(os.clock() * 1000) end
function M.sleep(_) end
function M.tokenize(text) return M.tokens(text) end
M.complete_handler = nil -- tests set this to fake ax.complete
function M.complete(oreq)
  if M.complete_handler then return M.complete_handler(oreq) end
  return nil, "no upstream in the shim"
end

return M
