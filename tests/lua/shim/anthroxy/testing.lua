-- tests/lua/shim/anthroxy/testing.lua - the subset of lua/anthroxy/testing.lua (the engine's
-- test helpers, docs/policies.md "Testing") that tests/lua/test_*.lua use, on plain tables,
-- for running them with the bare interpreter: lua5.4 tests/lua/shim/run.lua FILE.
-- Under `anthroxy test-lua` the engine's own module is used and this one is never loaded.
local ax = require "anthroxy"

local T = {}
local SRC = assert(AX_SHIM_SOURCE_DIR, "run through tests/lua/shim/run.lua")

local failures = 0
T.failures = function() return failures end

local function where(level)
  local info = debug.getinfo(level + 1, "Sl")
  return info and (info.short_src .. ":" .. info.currentline) or "?"
end

local function copy(v)
  return ax.json.totable(v)
end

local function merge(dst, src)
  for k, v in pairs(src or {}) do dst[k] = v end
  return dst
end

function T.load(name, settings)
  local path = SRC .. "/policies/" .. name .. ".lua"
  if name:find("%.lua$") then
    path = name:sub(1, 1) == "/" and name or (SRC .. "/" .. name) -- relative to the source tree
  end
  local chunk = assert(loadfile(path, "t"))
  local module = chunk()
  local merged = merge(merge({}, module.defaults), settings)
  return { module = module, settings = merged, name = module.name or name, path = path }
end

function T.run(p, hook, tree, a, b)
  local aux, ctx
  if b ~= nil or hook == "on_upstream_error" then aux, ctx = a, b else ctx = a end
  ctx = ctx or T.ctx()
  if ctx.settings == nil then ctx.settings = p.settings end
  if ctx.state == nil then ctx.state = {} end
  local fn = p.module[hook]
  if not fn then return copy(tree), nil end
  local work = copy(tree)
  local ret
  if hook == "on_upstream_error" then ret = fn(aux, work, ctx) else ret = fn(work, ctx) end
  return work, ret
end

function T.session(fields)
  return merge({
    key = "test", total_requests = 0, last_input_tokens = 0, last_output_tokens = 0,
    peak_input_tokens = 0, history = {}, prune_count = 0, overflow_count = 0,
    forced_tool_turns = 0, tool_fingerprints = {}, calibration = 1.0, utilization = 0,
    warning_level = "NORMAL", turns_remaining = -1,
  }, fields)
end

function T.ctx(fields)
  local ctx = merge({
    request_id = "req_test", session_id = "test", model = "claude-sonnet-4-5",
    arm = "default", stream = false, user_agent = "", context_window = 131072,
    prune_threshold = 0.75, report_scale = 1.0,
  }, fields)
  if ctx.session == nil then ctx.session = T.session() end
  return ctx
end

function T.request(fields)
  return merge({ model = "claude-sonnet-4-5", max_tokens = 1024, messages = {} }, fields)
end

function T.text(s) return { type = "text", text = s } end
function T.user(c) return { role = "user", content = c } end
function T.assistant(c) return { role = "assistant", content = c } end
function T.tool(name, schema)
  return { name = name, description = "the " .. name .. " tool",
           input_schema = schema or { type = "object", properties = ax.json.object() } }
end
function T.tool_use(id, name, input)
  return { type = "tool_use", id = id, name = name, input = input or ax.json.object() }
end
function T.tool_result(id, content, is_error)
  return { type = "tool_result", tool_use_id = id, content = content, is_error = is_error }
end

function T.fixture(rel)
  local f = assert(io.open(SRC .. "/tests/fixtures/" .. rel, "rb"))
  local s = f:read("a")
  f:close()
  return ax.json.decode(s)
end

function T.test(name, fn)
  local ok, err = xpcall(fn, function(e)
    if type(e) == "table" then e = "error object: " .. ax.json.encode(e) end
    return debug.traceback(tostring(e), 2)
  end)
  if not ok then
    failures = failures + 1
    io.stderr:write("FAIL ", name, ": ", tostring(err), "\n")
  end
end

local function deep_eq(a, b)
  if a == b then return true end
  if type(a) ~= "table" or type(b) ~= "table" then return false end
  for k, v in pairs(a) do if not deep_eq(v, b[k]) then return false end end
  for k in pairs(b) do if a[k] == nil then return false end end
  return true
end

function T.eq(a, b, msg)
  if not deep_eq(a, b) then
    error(string.format("%s: expected %s, got %s%s", where(2),
      type(b) == "table" and ax.json.encode(b) or tostring(b),
      type(a) == "table" and ax.json.encode(a) or tostring(a),
      msg and (" (" .. msg .. ")") or ""), 0)
  end
end

function T.ok(v, msg)
  if not v then error(string.format("%s: check failed%s", where(2),
    msg and (": " .. msg) or ""), 0) end
  return v
end

function T.fails(fn, pattern)
  local ok, err = pcall(fn)
  if ok then error(where(2) .. ": expected an error", 0) end
  if pattern then
    local text = type(err) == "table" and err.fail and err.fail.message or tostring(err)
    if not tostring(text):find(pattern) then
      error(string.format("%s: error %q does not match %q", where(2), tostring(text), pattern), 0)
    end
  end
  return err
end

function T.fake_complete(fn) ax.complete_handler = fn end
function T.fake_tokenize(fn) ax.tokenize = fn end

return T
