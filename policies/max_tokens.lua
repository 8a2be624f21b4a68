-- max_tokens: max_tokens = min(max(client's value, floor), window - prompt - margin * window).
-- The cap never goes below `min_output` (1024, or the client's own value when smaller): the
-- margin gives way first, and when not even that fits in the window the request is refused
-- with Anthropic's "prompt is too long: N tokens > M maximum" 400, on which Claude Code
-- compacts. A one-token answer is never sent. The floor gives a model room to reason before it answers or calls a
-- tool, so it applies only when the request enables thinking or offers tools: a client that
-- asks a plain question for 24 tokens still gets at most 24. The cap keeps room in the
-- window for the next turn's growth (tool results) and wins over the floor. The prompt is
-- measured with the core's estimator, calibrated for the session. Place this policy last in
-- the chain: anything that grows the prompt must run before it.
local ax = require "anthroxy"
local conv = require "anthroxy.conv"

local M = {
  name = "max_tokens",
  defaults = { floor = 16384, margin = 0.15, min_output = 1024 },
}

local function wants_floor(req)
  local th = req.thinking
  if conv.is_object(th) and th.type ~= nil and th.type ~= "disabled" then return true end
  return conv.is_array(req.tools) and #req.tools > 0
end

-- The value the policy would set, and the prompt size it measured (nil without a window).
-- Raises the "prompt is too long" 400 when not even min_output fits.
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
    local need = math.max(math.min(client, s.min_output or 1), 1)
    if cap < need then
      if window - prompt < need then
        ax.fail(400, "invalid_request_error", string.format(
          "prompt is too long: %d tokens > %d maximum", prompt, window - need))
      end
      cap = need -- the margin gives way to the minimum answer
    end
    if value > cap then value = cap end
  end
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
