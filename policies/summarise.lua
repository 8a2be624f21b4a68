-- summarise: past a threshold, replaces the middle of the conversation (between the first
-- user message and the recent tail) with a summary that the upstream model writes itself,
-- through ax.complete. The model keeps the gist of what it did (files touched, decisions,
-- errors seen) instead of a bare "history removed" marker. The call yields: other requests
-- are served while the summary is written. When it fails (upstream busy, an empty answer)
-- the middle is dropped with a plain marker, as policies/prune.lua would. Removing whole
-- units (conv.units) keeps every tool_use with its tool_result.
--
-- Source: the summarising baseline of "The Complexity Trap" (Lindenbauer et al. 2025), and
-- the compaction agents do themselves (Claude Code's /compact); promoted from
-- examples/policies/summarising_pruner.
--
-- The client re-sends the whole conversation every turn, and nothing is kept between
-- requests, so every request past the threshold is summarised again (one more completion on
-- the upstream each time: count it, ax.count "summaries"). Two things keep that cheap and
-- the prompt cache alive: the summarised part grows in steps of `step` units, so between two
-- moves the transcript is the same, and the summary is asked for at temperature 0, so the
-- same transcript gets the same summary (and the summary request itself hits the cache).
-- Counters (ax.count): summaries, summary_failures, messages_summarised.
local ax = require "anthroxy"
local conv = require "anthroxy.conv"

local M = {
  name = "summarise",
  defaults = {
    threshold = 0.75,       -- of the context window
    keep_last = 6,          -- messages kept verbatim at the end (whole turns)
    step = 4,               -- the summarised part grows this many turns (units) at a time
    summary_tokens = 1024,  -- max_tokens of the summary
    result_chars = 1500,    -- each tool result is cut to this in the transcript
  },
}

local INSTRUCTIONS = [[
You compress the middle of a coding agent's conversation so that the agent can continue
without it. Write a factual summary in short bullet points: the files read and changed
(with paths), commands run and their outcome, errors still open, decisions taken and why,
and what the agent was about to do next. No preamble.]]

-- A readable transcript of messages[first..last], within max_tokens.
local function transcript(msgs, first, last, s, max_tokens)
  local lines = {}
  for i = first, last do
    local m = msgs[i]
    if type(m.content) == "string" then
      lines[#lines + 1] = m.role .. ": " .. m.content
    elseif conv.is_array(m.content) then
      for k = 1, #m.content do
        local b = m.content[k]
        if b.type == "text" then
          lines[#lines + 1] = m.role .. ": " .. b.text
        elseif b.type == "tool_use" then
          lines[#lines + 1] = string.format("%s called %s %s", m.role, tostring(b.name),
            ax.json.encode(b.input or ax.json.object()))
        elseif b.type == "tool_result" then
          local out = conv.text(b.content)
          if #out > s.result_chars then
            out = out:sub(1, s.result_chars) .. string.format(" [... %d more characters]",
              #out - s.result_chars)
          end
          lines[#lines + 1] = "tool result: " .. out
        end
      end
    end
  end
  return conv.truncate_middle(table.concat(lines, "\n"), max_tokens)
end

local function summarise(text, s)
  local r, err = ax.complete({
    messages = { { role = "system", content = INSTRUCTIONS },
                 { role = "user", content = text } },
    max_tokens = s.summary_tokens,
    temperature = 0, -- the same transcript, the same summary: the prompt stays cacheable
  })
  local msg = r and r.choices and r.choices[1] and r.choices[1].message
  local summary = msg and msg.content
  if type(summary) ~= "string" or summary:match("^%s*$") then
    return nil, err or "empty summary"
  end
  return summary
end

function M.on_request(req, ctx)
  if ctx.count_only then return end -- measured, never sent: no completion for it
  local s = ctx.settings
  local window = ctx.context_window or 0
  local msgs = req.messages
  if window <= 0 or not conv.is_array(msgs) then return end
  local total = ax.request_tokens(req, ctx)
  if total < s.threshold * window then return end

  local head = 1
  for i = 1, #msgs do if msgs[i].role == "user" then head = i; break end end
  local units = conv.units(msgs, head + 1)
  local u = #units
  while u > 1 and (#msgs - units[u].first + 1) < s.keep_last do u = u - 1 end
  if u <= 1 then return end -- nothing between the head and the tail
  -- units[1 .. u-1] could go; take a multiple of step of them, the oldest
  local step = math.max(math.floor(s.step), 1)
  local n_units = math.floor((u - 1) / step) * step
  if n_units == 0 then n_units = u - 1 end -- fewer than a step, but over the threshold
  local first, last = units[1].first, units[n_units].last

  -- The transcript must fit the upstream's window next to the instructions and the answer.
  local room = window - s.summary_tokens - ax.tokens(INSTRUCTIONS) - 256
  local summary, err = summarise(transcript(msgs, first, last, s, math.max(room, 256)), s)
  local n = 0
  for i = last, first, -1 do
    if msgs[i].role ~= "system" then ax.remove(msgs, i); n = n + 1 end
  end
  local text
  ax.count("messages_summarised", n)
  if summary then
    ax.count("summaries")
    text = string.format("%s Summary of %d earlier messages, written when they were removed "
      .. "to save context:\n%s", conv.MARKER_TAG, n, summary)
  else
    ax.count("summary_failures")
    ax.log.warn("summary failed (%s): dropping %d messages without one", tostring(err), n)
    text = conv.marker_text({ turns = n, tokens = 0 })
  end
  local block = { type = "text", text = text }
  local h = msgs[head]
  if type(h.content) == "string" then
    h.content = { { type = "text", text = h.content }, block }
  else
    ax.insert(h.content, block)
  end
  if ctx.session then ctx.session.prune_count = (ctx.session.prune_count or 0) + 1 end
  ax.log.info("summarised %d messages: ~%d -> ~%d tokens", n, total,
    ax.request_tokens(req, ctx))
end

return M
