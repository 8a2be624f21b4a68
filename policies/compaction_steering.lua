-- compaction_steering: makes Claude Code compact its own conversation before the proxy has
-- to prune it. Claude Code decides to compact from the input_tokens it is told (usage and
-- count_tokens) against its auto-compact window, which it takes from
-- CLAUDE_CODE_AUTO_COMPACT_WINDOW: the README tells users to set it to `client_window`
-- (200000), the one figure both sides share (without it Claude Code 2.1.332 does not
-- auto-compact against a local model at all). Its trigger is that window minus a reserve
-- for the summary it will write (min(model's max output, 20,000)) and a 13,000-token buffer:
-- 167,000 tokens, 83.5 %, on a 200k window. Against a 32k local model it would never get
-- there, and pruning would silently throw history away instead of the client's far better
-- summary. So this policy sets ctx.report_scale, by which the core multiplies the
-- input_tokens it reports (the monitor and the logs keep the real numbers), such that the
-- client's trigger falls at `steer_at` of the real window, below the prune threshold. The
-- prune policy, which runs after this one, scales further by what it removed, so the client
-- always sees the size of what it sent.
-- Settings: enabled; all_clients (steer every client, not only Claude Code);
-- client_window (200000: what the user sets as CLAUDE_CODE_AUTO_COMPACT_WINDOW);
-- client_output_reserve (20000) and client_buffer (13000): Claude Code's trigger is the
-- window minus both; steer_at
-- (0.65 of the real window, kept under the prune threshold); max_fixed_share (0.5: the
-- scaled system prompt and tools stay under half the client's trigger, so a freshly
-- compacted conversation never looks full at once); min_scale (1.0: never under-report).
local ax = require "anthroxy"

local M = {
  name = "compaction_steering",
  defaults = {
    enabled = true,
    all_clients = false,
    -- = CLAUDE_CODE_AUTO_COMPACT_WINDOW in the client's environment (README). That variable
    -- takes precedence over the model's own window and over the context-1m beta, which
    -- 2.1.332 no longer announces, so the beta header is not consulted: one figure.
    client_window = 200000,
    client_output_reserve = 20000,
    client_buffer = 13000,
    steer_at = 0.65,
    max_fixed_share = 0.5,
    min_scale = 1.0,
  },
}

function M.is_claude_code(ua)
  if type(ua) ~= "string" then return false end
  return ua:sub(1, 11) == "claude-cli/" or ua:find("claude-code", 1, true) ~= nil
end

-- The window and the compaction trigger the client believes in, in its own tokens.
function M.client_trigger(req, ctx)
  local s = ctx.settings
  local window = s.client_window
  -- Claude Code reserves min(the model's maximum output, 20000): the main models' maximum is
  -- above 20000, and the figure must not vary with each request's max_tokens (side requests
  -- ask for little), so the setting alone decides.
  return window - s.client_output_reserve - s.client_buffer, window
end

-- The scale for this request, or nil when the policy does not apply.
function M.scale(req, ctx)
  local s = ctx.settings
  if not s.enabled then return nil end
  if not s.all_clients and not M.is_claude_code(ctx.user_agent) then return nil end
  local real_window = ctx.context_window or 0
  if real_window <= 0 then return nil end
  local trigger = M.client_trigger(req, ctx)
  -- Never at or past the prune threshold: the client must get there first.
  local threshold = ctx.prune_threshold or 0.75
  local steer_at = math.min(s.steer_at, threshold - 0.05)
  local scale = trigger / (steer_at * real_window)
  -- The part the client cannot compact (system prompt, tools) must stay well below its
  -- trigger once scaled, else every turn would look full right after a compaction.
  local fixed = ax.calibrated(ax.system_tokens(req) + ax.tools_tokens(req), ctx)
  if fixed > 0 and scale * fixed > s.max_fixed_share * trigger then
    scale = s.max_fixed_share * trigger / fixed
  end
  if scale < s.min_scale then scale = s.min_scale end
  return scale
end

function M.on_request(req, ctx)
  local scale = M.scale(req, ctx)
  if scale == nil then return end
  ctx.report_scale = scale
  ax.log.debug("reporting input tokens x%.2f (client trigger %d, real window %d)", scale,
    (M.client_trigger(req, ctx)), ctx.context_window)
end

return M
