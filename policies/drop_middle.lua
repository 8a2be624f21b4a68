-- drop_middle: the pruning of the Python proxy anthroxy replaced (its prune_conversation),
-- shipped to compare against: when the prompt reaches the threshold of the window, keep the
-- first message and the last `keep_last` messages, and drop messages from the middle until
-- the rest fits `target`: those holding tool results first, then assistant turns, then user
-- messages, oldest first within each kind (the old proxy kept greedily from the other end).
-- When even the kept head and tail exceed the budget, long tool results of the tail are cut
-- to their first 1000 and last 500 characters and the whole middle goes.
--
-- Two departures from the old code, so that what it sends is valid: messages go in whole
-- units (conv.units: an assistant turn with the user message answering it), since removing
-- a tool_result without its tool_use is a request every server refuses; and the "context
-- pruned" note is appended to the first user message rather than inserted as a user message
-- of its own (two user messages in a row break some chat templates).
--
-- What it is for: the cut lands exactly on the target every turn past the threshold, and the
-- note counts what went, so the prompt changes near its start on every such turn and a
-- server's prompt cache is lost each time. policies/prune.lua moves its cut in steps to keep
-- the cache; an experiment with both arms (docs/experiments.md) shows the difference.
-- Counters (ax.count): prunes, messages_dropped, tokens_dropped, tail_truncated.
local ax = require "anthroxy"
local conv = require "anthroxy.conv"

local M = {
  name = "drop_middle",
  defaults = {
    threshold = 0,  -- 0: the server's prune threshold (ctx.prune_threshold, 0.75)
    target = 0.65,  -- of the window, after pruning
    keep_last = 8,  -- messages always kept at the end (the old proxy's KEEP_LAST)
    min_messages = 5, -- conversations of fewer messages are left alone (old: <= 4)
  },
}

local TRUNC_OVER, TRUNC_HEAD, TRUNC_TAIL = 2000, 1000, 500

-- The kind a unit is dropped by: 0 tool results (first), 1 assistant only, 2 user.
local function priority(msgs, unit)
  local assistant = false
  for i = unit.first, unit.last do
    if conv.has_block(msgs[i], "tool_result") then return 0 end
    if msgs[i].role == "assistant" then assistant = true end
  end
  return assistant and 1 or 2
end

local function truncate_tail(msgs, from)
  local n = 0
  for i = from, #msgs do
    local blocks = conv.blocks(msgs[i])
    if blocks then
      for k = 1, #blocks do
        local b = blocks[k]
        if conv.is_object(b) and b.type == "tool_result" then
          local text = conv.text(b.content)
          if #text > TRUNC_OVER then
            b.content = text:sub(1, TRUNC_HEAD) .. "\n...[TRUNCATED]...\n" .. text:sub(-TRUNC_TAIL)
            n = n + 1
          end
        end
      end
    end
  end
  return n
end

local function put_note(msgs, head, dropped, tokens)
  local text = conv.marker_text({ turns = dropped, tokens = tokens })
  local h = msgs[head]
  if type(h.content) == "string" then
    h.content = { { type = "text", text = h.content }, { type = "text", text = text } }
  else
    ax.insert(h.content, { type = "text", text = text })
  end
end

function M.on_request(req, ctx)
  if ctx.count_only then return end
  local s = ctx.settings
  local window = ctx.context_window or 0
  local msgs = req.messages
  if window <= 0 or not conv.is_array(msgs) or #msgs < s.min_messages then return end
  local threshold = s.threshold > 0 and s.threshold or (ctx.prune_threshold or 0.75)
  local total = ax.calibrated(ax.request_tokens(req), ctx)
  if total < threshold * window then return end

  local factor = total / math.max(ax.request_tokens(req), 1)
  local mt, sum = {}, 0
  for i = 1, #msgs do
    mt[i] = ax.message_tokens(msgs[i]) * factor
    sum = sum + mt[i]
  end
  local overhead = total - sum
  local units = conv.units(msgs, 2) -- message 1 is the protected head
  local tail = #units
  while tail > 1 and (#msgs - units[tail].first + 1) < s.keep_last do tail = tail - 1 end
  if tail <= 1 then return end -- no middle
  local budget = s.target * window - overhead
  local kept = mt[1]
  for i = units[tail].first, #msgs do kept = kept + mt[i] end

  local drop = {}
  if kept >= budget then
    ax.count("tail_truncated", truncate_tail(msgs, units[tail].first))
    for u = 1, tail - 1 do drop[u] = true end
  else
    local order = {}
    for u = 1, tail - 1 do
      local size = 0
      for i = units[u].first, units[u].last do size = size + mt[i] end
      order[#order + 1] = { u = u, p = priority(msgs, units[u]), size = size }
    end
    -- keep from the most important (user messages, then the newest) while they fit
    table.sort(order, function(a, b)
      if a.p ~= b.p then return a.p > b.p end
      return a.u > b.u
    end)
    local room = budget - kept
    for _, o in ipairs(order) do
      if o.size <= room then room = room - o.size else drop[o.u] = true end
    end
  end
  local dropped, tokens = 0, 0
  for u = tail - 1, 1, -1 do
    if drop[u] then
      for i = units[u].last, units[u].first, -1 do
        tokens = tokens + mt[i]
        ax.remove(msgs, i)
        dropped = dropped + 1
      end
    end
  end
  if dropped == 0 then return end
  put_note(msgs, 1, dropped, math.floor(tokens))
  if ctx.session then ctx.session.prune_count = (ctx.session.prune_count or 0) + 1 end
  ax.count("prunes")
  ax.count("messages_dropped", dropped)
  ax.count("tokens_dropped", math.floor(tokens))
  ax.log.warn("drop_middle: removed %d messages (~%d tokens) of %d", dropped,
    math.floor(tokens), dropped + #msgs)
end

return M
