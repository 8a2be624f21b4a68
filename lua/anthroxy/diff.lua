-- diff.lua: what a policy changed, for `anthroxy check` (core/policy/tools.c).
--
-- M.diff(before, after) -> array of lines, each "+ path: value", "- path: value" or
-- "~ path: old -> new", paths as in the core's error messages (messages.3.content.0.text,
-- 0-based; removals are numbered as before the change, additions and changes as after).
-- Arrays are aligned on their longest common subsequence, so a removed message shows as one
-- removal rather than as every later message changing.
local ax = require "anthroxy"

local M = {}
local MAX_SHOW = 160

local function encode(v)
  local ok, s = pcall(ax.json.encode, v)
  return ok and s or tostring(v)
end

local function show(v)
  local s = encode(v)
  if #s > MAX_SHOW then s = s:sub(1, MAX_SHOW - 20) .. "... (" .. #s .. " bytes)" end
  return s
end

local function join(path, k)
  if path == "" then return tostring(k) end
  return path .. "." .. tostring(k)
end

local function kind(v)
  if type(v) == "table" then return ax.json.type(v) end
  return type(v)
end

local diff

local function diff_object(a, b, path, out)
  local keys, seen = {}, {}
  for k in pairs(a) do if not seen[k] then seen[k] = true; keys[#keys + 1] = k end end
  for k in pairs(b) do if not seen[k] then seen[k] = true; keys[#keys + 1] = k end end
  table.sort(keys, function(x, y) return tostring(x) < tostring(y) end)
  for _, k in ipairs(keys) do
    local p = join(path, k)
    if a[k] == nil then out[#out + 1] = "+ " .. p .. ": " .. show(b[k])
    elseif b[k] == nil then out[#out + 1] = "- " .. p .. ": " .. show(a[k])
    else diff(a[k], b[k], p, out) end
  end
end

local function diff_array(a, b, path, out)
  local n, m = #a, #b
  local ea, eb = {}, {}
  for i = 1, n do ea[i] = encode(a[i]) end
  for j = 1, m do eb[j] = encode(b[j]) end
  -- LCS table, suffix form: l[i][j] = LCS of a[i..], b[j..]
  local l = {}
  for i = n + 1, 1, -1 do
    l[i] = {}
    for j = m + 1, 1, -1 do
      if i > n or j > m then l[i][j] = 0
      elseif ea[i] == eb[j] then l[i][j] = l[i + 1][j + 1] + 1
      else l[i][j] = math.max(l[i + 1][j], l[i][j + 1]) end
    end
  end
  local i, j = 1, 1
  local dels, adds = {}, {}
  -- A run of removed and added elements between two equal ones: pair each added element with
  -- the most similar removed one still unpaired (in order), show what changed inside the
  -- pairs, the rest as plain removals and additions.
  local function similarity(x, y)
    if kind(x) ~= "object" or kind(y) ~= "object" then return 0 end
    local same = 0
    for k, v in pairs(x) do
      if y[k] ~= nil and encode(v) == encode(y[k]) then same = same + 1 end
    end
    return same
  end
  local function flush()
    local from = 1
    for _, aj in ipairs(adds) do
      local best, best_score = nil, 0
      for x = from, #dels do
        local score = similarity(a[dels[x]], b[aj])
        if score > best_score then best, best_score = x, score end
      end
      if best == nil and from <= #dels and #dels == #adds then best = from end
      if best ~= nil then
        for x = from, best - 1 do
          out[#out + 1] = "- " .. join(path, dels[x] - 1) .. ": " .. show(a[dels[x]])
        end
        from = best + 1
        diff(a[dels[best]], b[aj], join(path, aj - 1), out)
      else
        out[#out + 1] = "+ " .. join(path, aj - 1) .. ": " .. show(b[aj])
      end
    end
    for x = from, #dels do
      out[#out + 1] = "- " .. join(path, dels[x] - 1) .. ": " .. show(a[dels[x]])
    end
    dels, adds = {}, {}
  end
  while i <= n or j <= m do
    if i <= n and j <= m and ea[i] == eb[j] then
      flush()
      i, j = i + 1, j + 1
    elseif j <= m and (i > n or l[i][j + 1] >= l[i + 1][j]) then
      adds[#adds + 1] = j
      j = j + 1
    else
      dels[#dels + 1] = i
      i = i + 1
    end
  end
  flush()
end

diff = function(a, b, path, out)
  local ka, kb = kind(a), kind(b)
  if ka ~= kb or (ka ~= "object" and ka ~= "array") then
    if encode(a) ~= encode(b) then
      out[#out + 1] = "~ " .. (path == "" and "." or path) .. ": " .. show(a) .. " -> " .. show(b)
    end
    return
  end
  if ka == "object" then diff_object(a, b, path, out) else diff_array(a, b, path, out) end
end

function M.diff(before, after)
  local out = {}
  diff(before, after, "", out)
  return out
end

return M
