-- prune: keeps a conversation inside the model's context window. When the prompt reaches
-- `threshold` of the window (default: the server's prune threshold, 0.75, the
-- PROXY_CONTEXT_PRUNE_THRESHOLD knob) it is cut down to `target` (0.65):
--   1. the output of the oldest tool calls between the first user message and the recent
--      tail is replaced by a one-line placeholder (the call and its result stay paired);
--   2. then whole turns are removed, oldest first: an assistant turn together with the user
--      message answering it, so tool_use and tool_result always leave together;
--   3. when the tail alone is too big, its long tool results are shortened (beginning and
--      end kept), then older turns of the tail go, the last turn always stays.
-- The first user message, system messages inside the conversation and the last turn are
-- never removed; a marker appended to the first user message says what went. The result
-- fits the target by the same estimator that measured it (calibrated for the session).
-- When even the fixed part (system, tools, first user message, last turn with its tool
-- results shortened) exceeds the window, the request is refused with Anthropic's
-- "prompt is too long" 400, on which Claude Code compacts the conversation itself.
-- After an upstream context overflow, on_upstream_error prunes again by the upstream's real
-- numbers (n_prompt_tokens, n_ctx) and asks for one retry. The cut moves in steps (`step`),
-- so that the pruned prompt stays the same from turn to turn and the server's prompt cache
-- keeps working between two moves (see stop_here).
local ax = require "anthroxy"
local conv = require "anthroxy.conv"

local M = {
  name = "prune",
  defaults = {
    threshold = 0,          -- 0: the server's (--prune-threshold, PROXY_CONTEXT_PRUNE_THRESHOLD)
    target = 0.65,
    step = 0.10,            -- the cut moves in steps of this share of the window; 0 cuts
                            -- exactly to the target every turn (losing the prompt cache)
    keep_last = 6,          -- messages always kept at the end (whole turns)
    result_floor = 256,     -- tail tool results are never shortened below this (tokens)
    elide_min = 64,         -- tool results smaller than this are not worth replacing
    report_sent_size = true -- report the size the client sent, not the pruned one
  },
}

-- Measures the request and decides what is pinned, what is the tail, what the middle.
local function analyse(req, s)
  local msgs = req.messages
  local n = #msgs
  local p = { msgs = msgs, n = n, mt = {}, removed = {}, pinned = {},
              stats = { turns = 0, results = 0, truncated = 0, thinking = 0 }, mt0 = {} }
  local sum = 0
  for i = 1, n do
    p.mt[i] = ax.message_tokens(msgs[i])
    p.mt0[i] = p.mt[i]
    sum = sum + p.mt[i]
  end
  p.total = ax.request_tokens(req)
  p.cur = p.total
  p.overhead = p.total - sum
  p.head = 1
  for i = 1, n do
    if msgs[i].role == "user" then p.head = i; break end
  end
  for i = 1, n do
    p.pinned[i] = i <= p.head or msgs[i].role == "system"
  end
  p.units = conv.units(msgs, p.head + 1)
  local u = #p.units
  while u > 1 and (n - p.units[u].first + 1) < s.keep_last do u = u - 1 end
  p.tail_unit = math.max(u, 1) -- units[tail_unit..] are the tail, the rest the middle
  return p
end

local function refresh(p, i)
  local t = ax.message_tokens(p.msgs[i])
  p.cur = p.cur + t - p.mt[i]
  p.mt[i] = t
end

-- A tool result's size: its text, and its images (a screenshot has no text but costs as much
-- as the core's estimator says an image does), so that image-only results are elided too.
local function result_tokens(block)
  local content = block.content
  if conv.is_array(content) then
    return ax.message_tokens({ role = "user", content = { { type = "tool_result",
      tool_use_id = "x", content = content } } }) - ax.message_tokens({ role = "user",
      content = { { type = "tool_result", tool_use_id = "x", content = "" } } })
  end
  return ax.tokens(conv.text(content))
end

-- The image blocks of a tool result's content (kept when its text is shortened).
local function result_images(block)
  local out = {}
  if conv.is_array(block.content) then
    for k = 1, #block.content do
      local b = block.content[k]
      if conv.is_object(b) and b.type == "image" then out[#out + 1] = b end
    end
  end
  return out
end

-- Every tool_result block of the unit range [u1, u2], as { i = message index, b = block }.
local function results_in(p, u1, u2)
  local out = {}
  for u = u1, u2 do
    local unit = p.units[u]
    for i = unit.first, unit.last do
      local blocks = (not p.pinned[i] and not p.removed[i]) and conv.blocks(p.msgs[i])
      if blocks then
        for k = 1, #blocks do
          local b = blocks[k]
          if conv.is_object(b) and b.type == "tool_result" then out[#out + 1] = { i = i, b = b } end
        end
      end
    end
  end
  return out
end

-- Smallest size the request can reach: overhead, pinned messages and the last unit with its
-- tool results cut to the floor. Raw estimator tokens.
local function fixed_min(p, s)
  local t = p.overhead
  local last = p.units[#p.units]
  for i = 1, p.n do
    if p.pinned[i] or (last and i >= last.first) then t = t + p.mt[i] end
  end
  if last then
    for _, r in ipairs(results_in(p, #p.units, #p.units)) do
      local size = result_tokens(r.b)
      if size > s.result_floor then t = t - (size - s.result_floor) end
    end
  end
  return t
end

-- Cut points on a grid, so that the cut stays put while the conversation grows. Claude Code
-- and the SDKs send the whole history every turn, so pruning starts from scratch each time;
-- cutting "just enough" would move the cut forward a little every turn, and the server's
-- prompt cache, valid only up to the first changed token, would be lost on every turn. So a
-- pass stops only where its cumulative savings (counted from the oldest message, which
-- makes the grid the same every turn) cross a multiple of `quantum` tokens: the cut moves
-- about once per `quantum` tokens of growth, and the prompt before it stays byte-identical.
local function stop_here(p, goal, quantum, crossed)
  return p.cur <= goal and (quantum <= 0 or crossed)
end

local function crossed_line(before, after, quantum)
  return quantum <= 0 or math.floor(after / quantum) > math.floor(before / quantum)
end

-- The last message whose old tool outputs and thinking may be removed: the middle ends at
-- u2, but the frontier moves on a grid of `quantum` raw tokens of the conversation as sent
-- (message sizes counted from the first, the same every turn), so that once every old output
-- is gone the newest middle turn is not elided turn after turn (each such edit made the server
-- re-process everything after it): the frontier jumps once per quantum of growth.
local function frontier(p, u2, quantum)
  local last = p.units[u2].last
  if quantum <= 0 then return last end
  local pos, cum = {}, 0
  for i = 1, last do cum = cum + p.mt0[i]; pos[i] = cum end
  local line = math.floor(cum / quantum) * quantum
  local f = 0
  for i = 1, last do if pos[i] <= line then f = i end end
  if f <= p.head then return last end -- a short middle: no grid yet
  return f
end

-- Removes the thinking blocks of an assistant message (never its last block).
local function clear_thinking(p, i)
  local blocks = conv.blocks(p.msgs[i])
  if not blocks or p.msgs[i].role ~= "assistant" then return false end
  local changed = false
  for k = #blocks, 1, -1 do
    local b = blocks[k]
    if #blocks > 1 and conv.is_object(b) and (b.type == "thinking" or b.type == "redacted_thinking") then
      ax.remove(blocks, k)
      changed = true
    end
  end
  if changed then refresh(p, i) end
  return changed
end

local function elide_results(p, s, u1, u2, goal, quantum)
  local saved, crossed = 0, true
  local limit = frontier(p, u2, quantum)
  -- Old turns' thinking first: Anthropic's API drops it from earlier turns itself, and most
  -- chat templates never show it to the model again; it only costs estimate.
  for u = u1, u2 do
    for i = p.units[u].first, p.units[u].last do
      if i <= limit and not p.pinned[i] and not p.removed[i] then
        local before = p.cur
        if clear_thinking(p, i) then
          p.stats.thinking = p.stats.thinking + 1
          crossed = crossed_line(saved, saved + before - p.cur, quantum)
          saved = saved + before - p.cur
        end
      end
    end
  end
  for _, r in ipairs(results_in(p, u1, u2)) do
    if r.i > limit or stop_here(p, goal, quantum, crossed) then return end
    local text = conv.text(r.b.content)
    local size = result_tokens(r.b)
    if size >= s.elide_min and not text:find("^%[output of this tool call removed") then
      local before = p.cur
      r.b.content = conv.elided_result_text(size)
      refresh(p, r.i)
      p.stats.results = p.stats.results + 1
      crossed = crossed_line(saved, saved + before - p.cur, quantum)
      saved = saved + before - p.cur
    end
  end
end

local function drop_units(p, u1, u2, goal, quantum)
  local saved, crossed = 0, true
  for u = u1, u2 do
    if stop_here(p, goal, quantum, crossed) then return end
    local unit = p.units[u]
    local before = p.cur
    for i = unit.first, unit.last do
      if not p.pinned[i] and not p.removed[i] then
        p.removed[i] = true
        p.cur = p.cur - p.mt[i]
        p.stats.turns = p.stats.turns + 1
      end
    end
    crossed = crossed_line(saved, saved + before - p.cur, quantum)
    saved = saved + before - p.cur
  end
end

-- Shortens the largest tool results of units [u1, u2] to a common cap (water-filling) so
-- that the request loses what it must, never below the floor.
local function truncate_results(p, s, u1, u2, goal)
  local excess = p.cur - goal
  if excess <= 0 then return end
  local rs = results_in(p, u1, u2)
  for _, r in ipairs(rs) do r.size = result_tokens(r.b) end
  table.sort(rs, function(a, b) return a.size > b.size end)
  local cap, acc = s.result_floor, 0
  for k = 1, #rs do
    acc = acc + rs[k].size
    local c = (acc - excess) / k
    local next_size = rs[k + 1] and rs[k + 1].size or 0
    if c >= next_size then cap = math.max(math.floor(c), s.result_floor); break end
  end
  for _, r in ipairs(rs) do
    if r.size > cap then
      -- The text is shortened; images stay (the last turn's screenshot is often the point).
      local images = result_images(r.b)
      local text = conv.truncate_middle(conv.text(r.b.content), math.max(cap - (r.size -
        ax.tokens(conv.text(r.b.content))), 0))
      if #images > 0 then
        local content = { { type = "text", text = text } }
        for _, im in ipairs(images) do content[#content + 1] = im end
        r.b.content = content
      else
        r.b.content = text
      end
      refresh(p, r.i)
      p.stats.truncated = p.stats.truncated + 1
    end
  end
end

-- The marker says that turns were removed, right where they were: at the end of the first user
-- message, which the removed turns followed. Its text never changes (no counts): it appears
-- once, when the cut first drops a turn, and the prompt before the cut stays byte-identical
-- from then on, so the server's cache keeps everything up to the cut. Elided outputs carry
-- their own placeholder in place and need no marker.
local function put_marker(req, p)
  local head = p.msgs[p.head]
  local text = conv.marker_text()
  if head == nil then return end
  if type(head.content) == "string" then
    head.content = { { type = "text", text = head.content }, { type = "text", text = text } }
  else
    local blocks = conv.blocks(head)
    if not blocks then return end
    for k = 1, #blocks do
      local b = blocks[k]
      if conv.is_object(b) and b.type == "text" and conv.is_marker_text(b.text) then
        b.text = text
        refresh(p, p.head)
        return
      end
    end
    ax.insert(blocks, { type = "text", text = text })
  end
  refresh(p, p.head)
end

-- Cuts the request down to goal raw tokens (as far as possible). Returns the plan with
-- p.total (before) and p.cur (after), both raw.
local function cut(req, ctx, p, goal, quantum)
  local s = ctx.settings
  local middle_last = p.tail_unit - 1
  -- Room for the marker itself, so adding it cannot push the result over the goal.
  local goal_in = goal - ax.tokens(conv.marker_text()) - 8
  if middle_last >= 1 then
    elide_results(p, s, 1, middle_last, goal_in, quantum)
    drop_units(p, 1, middle_last, goal_in, quantum)
  end
  -- The tail is only cut in an emergency: no grid there, just what it takes.
  if p.cur > goal_in and #p.units > 0 then
    truncate_results(p, s, p.tail_unit, #p.units, goal_in)
    drop_units(p, p.tail_unit, #p.units - 1, goal_in, 0)
  end
  for i = p.n, 1, -1 do
    if p.removed[i] then ax.remove(p.msgs, i) end
  end
  return p
end

local function total_stats(ctx, p)
  local st = ctx.state.stats or { turns = 0, results = 0, truncated = 0, tokens = 0 }
  st.turns = st.turns + p.stats.turns
  st.results = st.results + p.stats.results
  st.truncated = st.truncated + p.stats.truncated
  st.tokens = st.tokens + (p.total - p.cur)
  ctx.state.stats = st
  return st
end

-- Prunes req towards goal (raw tokens); returns before and after sizes (raw) and whether
-- anything changed. factor converts raw estimates to real tokens for the marker and logs.
function M.prune(req, ctx, goal, factor, quantum)
  local p = analyse(req, ctx.settings)
  cut(req, ctx, p, goal, quantum or 0)
  local changed = p.stats.turns + p.stats.results + p.stats.truncated + p.stats.thinking > 0
  if changed then
    local before = p.total
    total_stats(ctx, p)
    if p.stats.turns > 0 then put_marker(req, p) end
    local after = ax.request_tokens(req)
    local session = ctx.session
    if session then session.prune_count = (session.prune_count or 0) + 1 end
    if ctx.settings.report_sent_size and after > 0 then
      ctx.report_scale = (ctx.report_scale or 1.0) * before / after
    end
    ax.log.warn("pruned: %d messages removed, %d tool results dropped, %d shortened; "
      .. "~%d -> ~%d tokens (goal %d)", p.stats.turns, p.stats.results, p.stats.truncated,
      math.floor(before * factor), math.floor(after * factor), math.floor(goal * factor))
    return before, after, true
  end
  return p.total, p.total, false
end

-- Real tokens per raw estimator token for this session.
local function calibration(raw, ctx)
  if raw <= 0 then return 1.0 end
  local f = ax.calibrated(raw, ctx) / raw
  return f > 0 and f or 1.0
end

function M.threshold(ctx)
  local t = ctx.settings.threshold
  if type(t) ~= "number" or t <= 0 then t = ctx.prune_threshold end
  if type(t) ~= "number" or t <= 0 then t = 0.75 end
  return t
end

-- Grid step of the cut points in raw estimator tokens (uncalibrated on purpose: the grid must
-- not shift when the session's calibration moves). The default equals threshold - target, so
-- the prompt regrows to about the threshold between two moves of the cut.
function M.quantum(ctx, window)
  local step = ctx.settings.step
  if type(step) ~= "number" then step = 0 end
  return math.max(step, 0) * window
end

function M.on_request(req, ctx)
  local window = ctx.context_window or 0
  -- A count_tokens request is measured, never sent: the client must learn its full size
  -- (Anthropic's count_tokens answers beyond the window too), so nothing to cut or refuse.
  if ctx.count_only then return end
  if window <= 0 or not conv.is_array(req.messages) or #req.messages == 0 then return end
  local s = ctx.settings
  local threshold = M.threshold(ctx)
  local target = math.min(s.target, threshold)
  local raw = ax.request_tokens(req)
  local factor = calibration(raw, ctx)
  local total = math.floor(raw * factor + 0.5)
  if total < threshold * window then return end

  local p = analyse(req, s)
  local fixed = fixed_min(p, s) * factor
  if fixed > window then
    ax.fail(400, "invalid_request_error", string.format(
      "prompt is too long: %d tokens > %d maximum (the tools and system prompt alone take "
      .. "%d tokens)", total, window, math.floor(p.overhead * factor + 0.5)))
  end
  M.prune(req, ctx, target * window / factor, factor, M.quantum(ctx, window))
end

function M.on_upstream_error(req, ctx, err)
  local n_prompt, n_ctx = tonumber(err.n_prompt_tokens), tonumber(err.n_ctx)
  if not n_prompt or not n_ctx or n_ctx <= 0 then return false end
  if not conv.is_array(req.messages) or #req.messages == 0 then return false end
  local s = ctx.settings
  local raw = ax.request_tokens(req)
  if raw <= 0 then return false end
  -- The upstream measured this very prompt: scale our estimate to its figure.
  local factor = n_prompt / raw
  local p = analyse(req, s)
  if fixed_min(p, s) * factor >= n_ctx then
    ax.log.warn("context overflow (%d > %d): even the fixed part does not fit, no retry",
      n_prompt, n_ctx)
    return false
  end
  local threshold = M.threshold(ctx)
  local target = math.min(s.target, threshold)
  local _, after, changed = M.prune(req, ctx, target * n_ctx / factor, factor,
    M.quantum(ctx, n_ctx))
  local real_after = math.ceil(after * factor)
  if not changed or real_after >= n_ctx then return false end
  -- Some servers (vLLM) count max_tokens against the window as well: the retry must fit
  -- as a whole.
  local room = n_ctx - real_after
  if type(req.max_tokens) == "number" and req.max_tokens > room then
    req.max_tokens = math.max(room, 1)
  end
  ax.log.warn("context overflow (%d > %d): pruned to ~%d tokens, retrying", n_prompt, n_ctx,
    real_after)
  return true
end

return M
