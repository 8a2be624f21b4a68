-- max_tokens: max_tokens = min(max(client's value, floor), window - prompt - margin * window),
-- and at least 1. The floor gives a model room to reason before it answers or calls a
-- tool, so it applies only when the request enables thinking or offers tools: a client that
-- asks a plain question for 24 tokens still gets at most 24. The cap keeps room in the
-- window for the next turn's growth (tool results) and wins over the floor. The prompt is
-- measured with the core's estimator, calibrated for the session. Place this policy last in
-- the chain: anything that grows the prompt must run before it.
local ax = require "anthroxy"
local conv = require "anthroxy.conv"

local M = {
  name = "max_tokens",
  defaults = { floor = 16384, margin = 0.15 },
}

local function wants_floor(req)
  local th = req.thinking
  if conv.is_object(th) and th.type ~= nil and th.type ~= "disabled" then return true end
  return conv.is_array(req.tools) and #req.tools > 0
end

-- The value the policy would set, and the prompt size it measured (nil without a window).
function M.compute(req, ctx)
  local s = ctx.settings
  local client = req.max_tokens
  -- Malformed values are the translator's to reject (it names the field), not ours to fix.
  if math.type(client) ~= "integer" or client < 1 then return nil end
  local value = client
  if wants_floor(req) and s.floor and value < s.floor then value = s.floor end
  local window = ctx.context_window or 0
  local prompt
  if window > 0 then
    prompt = ax.request_tokens(req, ctx)
    local cap = window - prompt - math.floor((s.margin or 0) * window)
    if value > cap then value = cap end
  end
  if value < 1 then value = 1 end
  return math.tointeger(math.floor(value)), prompt
end

function M.on_request(req, ctx)
  local client = req.max_tokens
  local value, prompt = M.compute(req, ctx)
  if value == nil or value == client then return end
  req.max_tokens = value
  -- Anthropic requires a thinking budget below max_tokens; keep the pair consistent.
  local th = req.thinking
  if conv.is_object(th) and type(th.budget_tokens) == "number" and th.budget_tokens >= value then
    th.budget_tokens = math.max(value - 1, 1)
  end
  ax.log.info("max_tokens %d -> %d (window %d, prompt ~%d)", client, value,
    ctx.context_window or 0, prompt or 0)
end

return M
