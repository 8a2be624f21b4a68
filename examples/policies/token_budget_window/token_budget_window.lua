-- token_budget_window: a sliding window over the conversation. Every request keeps the
-- newest turns that fit a token budget (a fraction of the context window, or a fixed number
-- of tokens), plus the first user message and any system messages inside the conversation;
-- older turns are dropped whole (a tool call always leaves with its result) and a marker in
-- the first user message says so. Unlike policies/prune.lua it has no threshold and no
-- hysteresis: the prompt never grows past the budget, which keeps latency and KV-cache use
-- flat at the price of forgetting early. Use instead of prune in the chain.
local ax = require "anthroxy"
local conv = require "anthroxy.conv"

local M = {
  name = "token_budget_window",
  defaults = {
    budget = 0.5,        -- fraction of ctx.context_window
    budget_tokens = 0,   -- when > 0, a fixed budget instead
  },
}

function M.on_request(req, ctx)
  local s = ctx.settings
  local window = ctx.context_window or 0
  local budget = s.budget_tokens > 0 and s.budget_tokens or math.floor(s.budget * window)
  local msgs = req.messages
  if budget <= 0 or not conv.is_array(msgs) or #msgs < 3 then return end
  local raw = ax.request_tokens(req)
  local factor = raw > 0 and ax.calibrated(raw, ctx) / raw or 1
  if raw * factor <= budget then return end

  local head = 1
  for i = 1, #msgs do if msgs[i].role == "user" then head = i; break end end
  local mt, sum = {}, 0
  for i = 1, #msgs do mt[i] = ax.message_tokens(msgs[i]); sum = sum + mt[i] end
  local units = conv.units(msgs, head + 1)
  if #units < 2 then return end

  -- Everything that always stays: overhead, the head, system messages, the last unit.
  local used = raw - sum
  for i = 1, head do used = used + mt[i] end
  local function unit_cost(u)
    local t = 0
    for i = units[u].first, units[u].last do
      if msgs[i].role ~= "system" then t = t + mt[i] end
    end
    return t
  end
  for u = 1, #units do
    for i = units[u].first, units[u].last do
      if msgs[i].role == "system" then used = used + mt[i] end
    end
  end
  used = used + unit_cost(#units)
  local keep_from = #units
  for u = #units - 1, 1, -1 do
    local t = unit_cost(u)
    if (used + t) * factor > budget then break end
    used = used + t
    keep_from = u
  end
  if keep_from == 1 then return end

  local removed, removed_tokens = 0, 0
  for i = units[keep_from].first - 1, head + 1, -1 do
    if msgs[i].role ~= "system" then
      removed_tokens = removed_tokens + mt[i]
      ax.remove(msgs, i)
      removed = removed + 1
    end
  end
  local marker = { type = "text", text = conv.marker_text({
    turns = removed, tokens = math.floor(removed_tokens * factor) }) }
  local first = msgs[head]
  if type(first.content) == "string" then
    first.content = { { type = "text", text = first.content }, marker }
  else
    ax.insert(first.content, marker)
  end
  ax.log.info("window: dropped %d messages (~%d tokens), budget %d", removed,
    math.floor(removed_tokens * factor), budget)
end

return M
