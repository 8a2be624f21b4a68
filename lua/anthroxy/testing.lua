-- testing.lua: helpers for policy tests run by `anthroxy test-lua FILE.lua` (core/policy/tools.c).
--
-- Loaded by the engine with its privileged host functions; test files get it through
-- `require "anthroxy.testing"`. Hooks run over the real request view (host.run_hook), so a
-- test sees exactly the semantics the server gives a policy. docs/policies.md "Testing".
local host, chain = ...
local ax = require "anthroxy"

local T = {}
local failures = 0
local passed = 0
local source_dir = host.getenv("ANTHROXY_SOURCE_DIR") or chain.dirname(host.policy_dir)

function T.failures() return failures end
function T.passed() return passed end
T.source_dir = source_dir

local function merge(dst, src)
  for k, v in pairs(src or {}) do dst[k] = v end
  return dst
end

-- T.load("max_tokens") -> policies/max_tokens.lua; "x/y.lua" relative to the source tree,
-- or an absolute path.
function T.load(name, settings)
  local path
  if name:find("%.lua$") then
    path = name:sub(1, 1) == "/" and name or (source_dir .. "/" .. name)
  else
    path = host.policy_dir .. "/" .. name .. ".lua"
  end
  local module = chain.load_module(host, path)
  local pname = module.name or name:match("([^/]+)%.lua$") or name
  local merged = chain.merge(host, pname, module.defaults, settings)
  return { module = module, settings = merged, name = pname, path = path }
end

-- T.run(p, hook, tree, [aux,] ctx) -> tree after the hook (plain table), hook's return values
-- (on_route: T.run(p, "on_route", req, ctx, fleet), its aux last as the hook takes it)
function T.run(p, hook, tree, a, b)
  local aux, ctx
  if hook == "on_route" then ctx, aux = a, b
  elseif b ~= nil or hook == "on_upstream_error" then aux, ctx = a, b else ctx = a end
  ctx = ctx or T.ctx()
  if ctx.settings == nil then ctx.settings = p.settings end
  if ctx.state == nil then ctx.state = {} end
  ctx.hook = hook
  local fn = p.module[hook]
  if not fn then return ax.json.totable(tree), nil end
  return host.run_hook(fn, hook, tree, aux or {}, ctx)
end

-- T.load_chain("policies/default.lua", { tool_choice = { enabled = true } }) -> the chain's
-- policies, as the server loads them (chain.lua), each usable with T.run; settings given
-- per policy name override the chain's, as --policy-set does.
function T.load_chain(rel, settings)
  local path = rel:sub(1, 1) == "/" and rel or (source_dir .. "/" .. rel)
  local overrides = {}
  for name, kv in pairs(settings or {}) do
    for k, v in pairs(kv) do overrides[name .. "." .. k] = tostring(v) end
  end
  local quiet = setmetatable({ overrides = overrides, log = function() end },
    { __index = host })
  return chain.load(quiet, path).policies
end

-- T.counters() -> { default = { test = { name = n } } }: what ax.count added in this test
-- file (hooks run by T.run count under arm "default", policy "test").
function T.counters() return host.counters() end

function T.session(fields)
  local s = merge({
    key = "test", total_requests = 0, last_input_tokens = 0, last_output_tokens = 0,
    peak_input_tokens = 0, history = {}, tool_fingerprints = {}, calibration = 1.0,
    utilization = 0,
    warning_level = "NORMAL", turns_remaining = -1,
  }, fields)
  -- the writable counters and their methods are the engine's own (core/policy/run.c)
  for _, k in ipairs(host.session_counters) do
    if s[k] == nil then s[k] = 0 end
  end
  return setmetatable(s, host.session_mt)
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
  local text = assert(host.read(source_dir .. "/tests/fixtures/" .. rel))
  return ax.json.decode(text)
end

local function describe(e)
  if type(e) == "table" and e.fail then
    return string.format("ax.fail(%s, %s, %s)", tostring(e.fail.status), tostring(e.fail.type),
      tostring(e.fail.message))
  end
  return tostring(e)
end

function T.test(name, fn)
  local ok, err = xpcall(fn, function(e) return host.traceback(describe(e), 2) end)
  if ok then
    passed = passed + 1
  else
    failures = failures + 1
    host.stderr("FAIL " .. name .. ": " .. tostring(err) .. "\n")
  end
end

local function plain(v)
  if ax.is_view(v) then return ax.json.totable(v) end
  return v
end

local function deep_eq(a, b)
  a, b = plain(a), plain(b)
  if a == b then return true end
  if type(a) ~= "table" or type(b) ~= "table" then return false end
  for k, v in pairs(a) do if not deep_eq(v, b[k]) then return false end end
  for k in pairs(b) do if a[k] == nil then return false end end
  return true
end
T.deep_eq = deep_eq

local function show(v)
  v = plain(v)
  if type(v) == "table" then
    local ok, s = pcall(ax.json.encode, v)
    return ok and s or tostring(v)
  end
  if type(v) == "string" then return string.format("%q", v) end
  return tostring(v)
end

function T.eq(a, b, msg)
  if not deep_eq(a, b) then
    error(string.format("%s: expected %s, got %s%s", host.where(2), show(b), show(a),
      msg and (" (" .. msg .. ")") or ""), 0)
  end
end

function T.ok(v, msg)
  if not v then
    error(string.format("%s: check failed%s", host.where(2), msg and (": " .. msg) or ""), 0)
  end
  return v
end

function T.fails(fn, pattern)
  local ok, err = pcall(fn)
  if ok then error(host.where(2) .. ": expected an error", 0) end
  if pattern then
    local text = type(err) == "table" and err.fail and err.fail.message or tostring(err)
    if not tostring(text):find(pattern) then
      error(string.format("%s: error %q does not match %q", host.where(2), tostring(text),
        pattern), 0)
    end
  end
  return err
end

function T.fake_tokenize(fn) host.set_fake("tokenize", fn) end
function T.fake_complete(fn) host.set_fake("complete", fn) end

return T
