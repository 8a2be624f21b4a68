-- anthroxy.profiles - model profiles: one chain serves several upstream models, each with
-- its own settings. A policy's `profiles` setting is a table keyed by Lua patterns matched
-- against the model's name (lower case); each value holds settings for every policy that
-- knows the key, and a sub-table named after a policy holds settings for that policy only:
--
--   local profiles = {
--     ["qwen3%-coder"] = { temperature = 0.3, tool_turn_caps = { max_tokens = 4096 } },
--     ["llama"]        = { temperature = 0.2, tool_narrowing = { max_tools = 8 } },
--   }
--   return { ..., { "tool_turn_caps", profiles = profiles }, ... }
--
-- Every profile whose pattern matches applies, the shorter (more general) patterns first, so
-- "qwen3%-coder" overrides "qwen3" for a Qwen3-Coder. A profile wins over the policy's own
-- settings (defaults, chain entry, environment, --policy-set): it is the more specific
-- statement. No module state: the merge is kept in ctx.state for the request.
local ax = require "anthroxy"

local P = {}

-- The model a profile is chosen by: the OpenAI request's model when a hook has one (exact,
-- after --model-map), else the server's upstream model, else the model the client named.
function P.model_name(ctx, oreq)
  local m = oreq ~= nil and oreq.model or nil
  if type(m) ~= "string" or m == "" then m = ctx.upstream_model end
  if type(m) ~= "string" or m == "" then m = ctx.model end
  return type(m) == "string" and m or ""
end

-- The patterns of `profiles` that match `model`, most general first (shorter, then by text).
function P.matching(profiles, model)
  local hits = {}
  if type(profiles) ~= "table" then return hits end
  local name = model:lower()
  for pat, prof in pairs(profiles) do
    if type(pat) == "string" and type(prof) == "table" then
      local ok, found = pcall(string.find, name, pat)
      if ok and found then hits[#hits + 1] = pat end
    end
  end
  table.sort(hits, function(a, b)
    if #a ~= #b then return #a < #b end
    return a < b
  end)
  return hits
end

-- Settings of policy `policy_name` for `model`: a plain table, `settings` (ctx.settings)
-- overlaid by each matching profile; also the matched patterns, joined by ",", or "".
function P.resolve(settings, policy_name, model)
  local out = {}
  for k, v in pairs(settings) do out[k] = v end
  local hits = P.matching(settings.profiles, model)
  for _, pat in ipairs(hits) do
    local prof = settings.profiles[pat]
    for k, v in pairs(prof) do
      if type(v) ~= "table" and k ~= "profiles" then out[k] = v end
    end
    local own = prof[policy_name]
    if type(own) == "table" then
      for k, v in pairs(own) do
        if k ~= "profiles" then out[k] = v end
      end
    end
  end
  return out, table.concat(hits, ",")
end

-- What a policy calls at the top of a hook: its settings for this request's model, merged
-- once per request and model (kept in ctx.state). `oreq` is the OpenAI request in
-- on_upstream_request (its model is exact), nil elsewhere.
function P.settings(ctx, policy_name, oreq)
  local model = P.model_name(ctx, oreq)
  local st = ctx.state
  local memo = st and st._profile
  if memo and memo.model == model then return memo.settings, memo.matched end
  local s, matched = P.resolve(ctx.settings, policy_name, model)
  if st then st._profile = { model = model, settings = s, matched = matched } end
  return s, matched
end

-- ax.count (a counter of the calling policy, in /v1/experiments) when the engine has it: an
-- embedder's older build, or a policy loaded by another tool, may lack it; counting never
-- fails a decision.
function P.count(name, delta)
  local f = ax.count
  if f then f(name, delta or 1) end
end

return P
