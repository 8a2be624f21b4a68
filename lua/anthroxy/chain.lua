-- chain.lua: loads a policy chain into a generation (run by core/policy/load.c).
--
-- `host` holds the engine's privileged functions (read, compile, newenv, getenv, log,
-- overrides); policies never see it. Resolves entries, loads each module once, rejects
-- unknown hooks, merges settings (defaults < chain < environment < --policy-set) and
-- reports where each setting came from.
local M = {}

M.HOOKS = {
  on_request = true, on_upstream_request = true, on_response = true, on_upstream_error = true,
  on_route = true,
}

local function dirname(p)
  return p:match("^(.*)/[^/]*$") or "."
end
M.dirname = dirname

-- "0.6" -> 0.6, "true" -> true, anything else stays a string
function M.parse_value(s)
  if s == "true" then return true end
  if s == "false" then return false end
  local n = tonumber(s)
  if n ~= nil then return n end
  return s
end

-- A read-only proxy (nested tables too): settings are shared by every request. Reads go
-- through a plain __index table, as fast as reading the table itself.
function M.readonly(t, depth)
  depth = depth or 0
  if depth > 20 then error("settings nested too deep", 0) end
  local shadow = {}
  for k, v in pairs(t) do
    if type(v) == "table" then v = M.readonly(v, depth + 1) end
    shadow[k] = v
  end
  return setmetatable({}, {
    __index = shadow,
    __newindex = function(_, k)
      error("settings are read-only (tried to set '" .. tostring(k) .. "')", 2)
    end,
    __pairs = function() return next, shadow, nil end,
    __len = function() return #shadow end,
    __metatable = false,
  })
end

function M.resolve(dir, ref)
  if ref:sub(-4) == ".lua" then
    if ref:sub(1, 1) == "/" then return ref end
    return dir .. "/" .. ref
  end
  if not ref:match("^[%w_%-]+$") then
    error("bad policy name '" .. ref .. "' (a name, or a path ending in .lua)", 0)
  end
  return dir .. "/" .. ref .. ".lua"
end

function M.load_module(host, path)
  local text, err = host.read(path)
  if not text then error(err, 0) end
  local fn, cerr = host.compile(text, "@" .. path)
  if not fn then error(cerr, 0) end
  local mod = fn()
  if type(mod) ~= "table" then
    error(path .. ": a policy must return a table (got " .. type(mod) .. ")", 0)
  end
  for k, v in pairs(mod) do
    if type(k) == "string" and k:sub(1, 3) == "on_" then
      if not M.HOOKS[k] then
        error(path .. ": unknown hook '" .. k .. "' (hooks are on_request, "
          .. "on_upstream_request, on_response, on_upstream_error, on_route)", 0)
      end
      if type(v) ~= "function" then error(path .. ": " .. k .. " must be a function", 0) end
    end
  end
  if mod.defaults ~= nil and type(mod.defaults) ~= "table" then
    error(path .. ": defaults must be a table", 0)
  end
  if mod.name ~= nil and type(mod.name) ~= "string" then
    error(path .. ": name must be a string", 0)
  end
  return mod
end

local function upper_id(s)
  return (s:upper():gsub("[^%w]", "_"))
end

-- Returns settings, sources for policy `name`. Server-wide knobs (the prune threshold, the
-- window) are not settings: policies read them from ctx (ctx.prune_threshold), whatever their
-- name.
function M.merge(host, name, defaults, entry)
  local settings, sources = {}, {}
  for k, v in pairs(defaults or {}) do settings[k] = v; sources[k] = "default" end
  for k, v in pairs(entry or {}) do
    if type(k) == "string" then settings[k] = v; sources[k] = "chain" end
  end
  local keys = {}
  for k in pairs(settings) do keys[#keys + 1] = k end
  for _, k in ipairs(keys) do
    local var = "ANTHROXY_POLICY_" .. upper_id(name) .. "_" .. upper_id(k)
    local v = host.getenv(var)
    if v and v ~= "" then settings[k] = M.parse_value(v); sources[k] = "env " .. var end
  end
  for key, v in pairs(host.overrides or {}) do
    local n, k = key:match("^([^.]+)%.(.+)$")
    if n == name then settings[k] = M.parse_value(v); sources[k] = "flag --policy-set" end
  end
  return settings, sources
end

local function show(v)
  if type(v) == "string" then return string.format("%q", v) end
  return tostring(v)
end

-- Loads one chain's entries (a table of the policies/default.lua form) into out, the
-- generation's flat list of policies; paths resolve against dir. mods caches modules by path.
local function build(host, chain, label, dir, out, files, mods, names)
  for i, entry in ipairs(chain) do
    if type(entry) == "string" then entry = { entry } end
    if type(entry) ~= "table" or type(entry[1]) ~= "string" then
      error(label .. ": entry " .. i .. ": expected { \"name\", key = value, ... }", 0)
    end
    local path = M.resolve(dir, entry[1])
    -- not beside the chain: the shipped policies (a chain of your own can name them)
    if not mods[path] and entry[1]:sub(1, 1) ~= "/" and dir ~= host.policy_dir
        and not host.read(path) then
      local shipped = M.resolve(host.policy_dir, entry[1])
      if host.read(shipped) then path = shipped end
    end
    local mod = mods[path]
    if not mod then
      mod = M.load_module(host, path)
      mods[path] = mod
      files[#files + 1] = path
    end
    local name = mod.name or entry[1]:match("([^/]+)%.lua$") or entry[1]
    names[name] = true
    local settings, sources = M.merge(host, name, mod.defaults, entry)
    local report = {}
    local keys = {}
    for k in pairs(settings) do keys[#keys + 1] = k end
    table.sort(keys)
    for _, k in ipairs(keys) do
      local v = settings[k]
      if type(v) == "function" then v = tostring(v) end
      report[k] = { value = v, source = sources[k] }
      host.log("info", string.format("policy %s: %s = %s (%s)", name, k, show(settings[k]),
        sources[k]))
    end
    out[#out + 1] = { name = name, file = path, module = mod,
                      settings = M.readonly(settings), report = report }
  end
end

local function warn_overrides(host, names)
  for key in pairs(host.overrides or {}) do
    local n = key:match("^([^.]+)%.")
    if not names[n] then
      host.log("warn", "--policy-set " .. key .. ": no policy named '" .. tostring(n)
        .. "' in the chain")
    end
  end
end

-- Reads and compiles a chain file: returns its table (or a chain of one when the file is a
-- single policy, for `anthroxy check policies/x.lua`) and the modules it already loaded.
local function read_chain(host, chain_path)
  local dir = dirname(chain_path)
  local text, err = host.read(chain_path)
  if not text then error(err, 0) end
  local fn, cerr = host.compile(text, "@" .. chain_path)
  if not fn then error(cerr, 0) end
  local chain = fn()
  if type(chain) ~= "table" then
    error(chain_path .. ": a chain returns an array of { \"policy\", key = value } entries", 0)
  end
  local mods = {}
  if chain[1] == nil and next(chain) ~= nil then
    -- not a chain but a single policy (`anthroxy check policies/x.lua`): a chain of one
    local base = chain_path:match("[^/]+$")
    mods[M.resolve(dir, base)] = M.load_module(host, chain_path)
    chain = { { base } }
  end
  return chain, mods
end

-- Loads the chain file: returns { policies = { {name, file, module, settings, report} },
-- files = { chain, policy files... } }.
function M.load(host, chain_path)
  local files, out, names = { chain_path }, {}, {}
  local chain, mods = read_chain(host, chain_path)
  build(host, chain, chain_path, dirname(chain_path), out, files, mods, names)
  warn_overrides(host, names)
  return { policies = out, files = files }
end

-- Loads an experiment's arms into one generation: arms = { { name, path = chain file } or
-- { name, chain = inline entries (absolute paths), label = experiment file } }. Returns
-- { policies = every arm's, in arm order, arms = { { name, first, n } }, files }. Each arm
-- gets its own module instances: arms share nothing, as separate chains would not.
function M.load_arms(host, arms, exp_path)
  local files, out, names, ranges = { exp_path }, {}, {}, {}
  for _, arm in ipairs(arms) do
    local first = #out
    if arm.path then
      local chain, mods = read_chain(host, arm.path)
      files[#files + 1] = arm.path
      build(host, chain, arm.path, dirname(arm.path), out, files, mods, names)
    else
      build(host, arm.chain, exp_path .. ": arm " .. arm.name, dirname(exp_path), out, files,
        {}, names)
    end
    ranges[#ranges + 1] = { name = arm.name, first = first, n = #out - first }
  end
  warn_overrides(host, names)
  return { policies = out, arms = ranges, files = files }
end

return M
