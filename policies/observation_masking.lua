-- observation_masking: keeps the last `keep` tool results verbatim and replaces the output of
-- older ones with a one-line placeholder; the tool calls themselves (what the agent did and
-- why) all stay, so the conversation keeps its shape and every tool_use its tool_result.
--
-- Source: T. Lindenbauer, I. Slinko, L. Felder, E. Bogomolov, Y. Zharov, "The Complexity
-- Trap: Simple Observation Masking Is as Efficient as LLM Summarization for Agent Context
-- Management" (2025, arXiv:2508.21433): on SWE-bench Verified, masking all but the latest
-- observations about halved the cost per instance at an equal or better solve rate than
-- letting the agent's context grow or summarising it with a model.
--
-- The mask moves in batches of `step` results, not one result per turn: between two moves
-- the request the upstream sees is the previous one plus the new turn, so a server's prompt
-- cache (llama-server's cache_prompt, vLLM's prefix caching) reuses all of it; a mask that
-- moved every turn would change a message near the start of the conversation each time and
-- throw the cache away. With keep = 5 and step = 5 between 5 and 9 results stay verbatim.
--
-- Counters (ax.count, shown per arm at GET /v1/experiments): masked (results masked in this
-- request), tokens_masked (their estimated size), moves (requests where the mask advanced
-- past what the previous request of the session masked).
local ax = require "anthroxy"
local conv = require "anthroxy.conv"

local M = {
  name = "observation_masking",
  defaults = {
    keep = 5,        -- tool results kept verbatim, the most recent
    step = 5,        -- the mask advances this many results at a time (1: every turn)
    min_tokens = 16, -- results smaller than this stay: a placeholder would save nothing
  },
}

-- The placeholder depends only on the result it replaces, so that a masked result reads
-- the same in every later request (the prompt cache depends on it).
local function placeholder(tokens, is_error)
  return string.format("[%s masked by the proxy to save context (observation masking): "
    .. "about %d tokens. The tool call above is kept; run it again if its output is needed.]",
    is_error and "error output" or "output", tokens)
end

local function result_tokens(b)
  return ax.tokens(conv.text(b.content))
end

-- Every tool_result block, oldest first, as { b = block }.
local function all_results(msgs)
  local out = {}
  for i = 1, #msgs do
    local blocks = msgs[i].role == "user" and conv.blocks(msgs[i])
    if blocks then
      for k = 1, #blocks do
        local b = blocks[k]
        if conv.is_object(b) and b.type == "tool_result" then out[#out + 1] = b end
      end
    end
  end
  return out
end

-- How many of n results to mask: a multiple of step, leaving at least keep.
function M.mask_count(n, keep, step)
  local excess = n - keep
  if excess <= 0 then return 0 end
  if step < 1 then step = 1 end
  return math.floor(excess / step) * step
end

function M.on_request(req, ctx)
  local s = ctx.settings
  local msgs = req.messages
  if not conv.is_array(msgs) then return end
  local results = all_results(msgs)
  local n_mask = M.mask_count(#results, math.max(math.floor(s.keep), 0), math.floor(s.step))
  if n_mask == 0 then return end
  local masked, tokens = 0, 0
  for k = 1, n_mask do
    local b = results[k]
    local size = result_tokens(b)
    if size >= s.min_tokens then
      b.content = placeholder(size, b.is_error == true)
      masked = masked + 1
      tokens = tokens + size
    end
  end
  if masked > 0 then
    ax.count("masked", masked)
    ax.count("tokens_masked", tokens)
    ax.log.debug(string.format("masked %d of %d tool results (about %d tokens)", masked,
      #results, tokens))
  end
  -- a move: the previous request (this one without the results after the last assistant
  -- message; Claude Code may send a system reminder after them) masked less
  local tail, i = {}, #msgs
  local function is_assistant(m) -- a table, or a view of the request (userdata)
    local t = type(m)
    return (t == "table" or t == "userdata") and m.role == "assistant"
  end
  while i >= 1 and not is_assistant(msgs[i]) do
    table.insert(tail, 1, msgs[i])
    i = i - 1
  end
  local fresh = #all_results(tail)
  local before = M.mask_count(#results - fresh, math.max(math.floor(s.keep), 0),
    math.floor(s.step))
  if n_mask > before then ax.count("moves") end
end

return M
