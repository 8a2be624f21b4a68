-- compaction: Anthropic's server-side compaction (`compact_20260112` in
-- context_management.edits) emulated with the upstream model.
--   * A `compaction` block the client sends back in its history stands for everything
--     before it: those messages are dropped and the block's summary opens the conversation
--     (a block with content null, a failed compaction, is a no-op and is dropped).
--   * Past the trigger (input tokens; default 150,000, capped by `trigger_share` of the real
--     window when the operator sets it), the conversation before the cut (everything but
--     the current turn) is summarised in one upstream call (ax.complete) with the prompt
--     below, plus the edit's `instructions`. The answer opens with a `compaction` block
--     carrying the summary (content null when the summary failed); the model answers over
--     the compacted conversation, or, with `pause_after_compaction`, the answer is the block
--     alone with stop_reason "compaction". The core renders the block (messages.c) from what
--     this policy leaves in req.context_management.compaction.
--   * The top-level `compaction: {type = "summarize", instructions}` parameter asks for a
--     summary of the whole conversation alone: the answer is the block, stop_reason
--     "compaction"; `instructions` replace the prompt (blank ones count as absent).
-- Runs before context_editing and prune in the chain: they then work on what is left.
local ax = require "anthroxy"
local conv = require "anthroxy.conv"

local M = {
  name = "compaction",
  defaults = {
    enabled = true,            -- honour the client's compact_20260112 edit
    trigger_share = 0,         -- >0: the trigger is at most this share of the real window
    summary_max_tokens = 4096, -- what the summary may take
    transcript_share = 0.6,    -- the transcript sent to the summariser: at most this share
                               -- of the window (its oldest part is cut first)
    result_chars = 2000,       -- each tool result in the transcript is cut to this
  },
}

M.PROMPT = [[
You are compacting the transcript of a conversation between a user and an AI assistant so
that the assistant can continue the work with only your summary in front of it. Write a
summary that keeps everything needed to continue:
- the user's requests and goals, in their own words where they matter, and every constraint
  or preference they stated;
- what has been done so far: files read, created or changed (with paths), commands run and
  what they showed, decisions taken and why;
- errors met and how they were solved, or that they are still open;
- the current state of the work and the exact next step the assistant was about to take.
Be specific (names, paths, numbers, short code excerpts where essential); leave out
pleasantries and anything superseded. Write the summary only, no preamble.]]

M.SUMMARY_PREFIX = "This conversation continues from an earlier one that was compacted. " ..
                   "Summary of the earlier conversation:\n\n"

local function fail_field(path, msg)
  ax.fail(400, "invalid_request_error", "context_management." .. path .. ": " .. msg)
end

-- The client's compact_20260112 edit, validated, or nil.
local function find_edit(req)
  local cm = req.context_management
  if cm == nil or ax.json.type(cm) ~= "object" then return nil end
  local list = cm.edits
  if list == nil or ax.json.type(list) ~= "array" then return nil end
  for i, e in ax.ipairs(list) do
    if ax.json.type(e) == "object" and e.type == "compact_20260112" then
      local path = "edits." .. (i - 1)
      local cfg = { trigger = 150000, pause = false }
      local t = e.trigger
      if t ~= nil and t ~= ax.json.null then
        if ax.json.type(t) ~= "object" or t.type ~= "input_tokens" then
          fail_field(path .. ".trigger", "expected an object with type 'input_tokens'")
        end
        if math.type(t.value) ~= "integer" or t.value < 1 then
          fail_field(path .. ".trigger.value", "expected a positive integer")
        end
        cfg.trigger = t.value
      end
      local p = e.pause_after_compaction
      if p ~= nil and p ~= ax.json.null and type(p) ~= "boolean" then
        fail_field(path .. ".pause_after_compaction", "expected a boolean")
      end
      cfg.pause = p == true
      local ins = e.instructions
      if ins ~= nil and ins ~= ax.json.null and type(ins) ~= "string" then
        fail_field(path .. ".instructions", "expected a string")
      end
      if type(ins) == "string" and ins:find("%S") then cfg.instructions = ins end
      return cfg
    end
  end
  return nil
end

local function summary_message(text)
  return { role = "user", content = { { type = "text", text = M.SUMMARY_PREFIX .. text } } }
end

-- Drops messages 1..n-1 and puts the summary first: before the n-th message when it is an
-- assistant's, else as its first block, so that roles still alternate.
local function replace_head(msgs, n, text)
  for _ = 1, n - 1 do ax.remove(msgs, 1) end
  local first = msgs[1]
  if first and first.role == "user" then
    if type(first.content) == "string" then
      first.content = { { type = "text", text = M.SUMMARY_PREFIX .. text },
                        { type = "text", text = first.content } }
    else
      ax.insert(first.content, 1, { type = "text", text = M.SUMMARY_PREFIX .. text })
    end
  else
    ax.insert(msgs, 1, summary_message(text))
  end
end

-- Applies the last compaction block of the history; drops failed (null) ones.
local function apply_history(req)
  local msgs = req.messages
  local at, bi, text
  for i = #msgs, 1, -1 do
    local blocks = conv.blocks(msgs[i])
    if blocks then
      for j = #blocks, 1, -1 do
        local b = blocks[j]
        if conv.is_object(b) and b.type == "compaction" then
          if type(b.content) == "string" and b.content ~= "" then
            at, bi, text = i, j, b.content
            break
          elseif b.content == nil or b.content == ax.json.null then
            ax.remove(blocks, j) -- a failed compaction: a no-op
          end -- anything else: the translator's 400 names it
        end
      end
    end
    if at then break end
  end
  if not at then return false end
  local blocks = msgs[at].content
  for _ = 1, bi do ax.remove(blocks, 1) end -- the block and anything before it in its message
  if #blocks == 0 then
    ax.remove(msgs, at)
    replace_head(msgs, at, text)
  else
    replace_head(msgs, at, text)
  end
  return true
end

-- Where the current turn starts: the last message, or, when it answers tool calls, the
-- assistant message that made them (a pair never straddles the cut).
local function cut_index(msgs)
  local n = #msgs
  if n >= 2 and #conv.tool_result_ids(msgs[n]) > 0 and msgs[n - 1].role == "assistant" then
    return n - 1
  end
  return n
end

local function block_text(b, s)
  if not conv.is_object(b) then return "" end
  local t = b.type
  if t == "text" then return b.text or "" end
  if t == "thinking" then return "" end
  if t == "tool_use" then
    return "[called tool " .. tostring(b.name) .. " with " .. ax.json.encode(b.input or {}) .. "]"
  end
  if t == "tool_result" then
    local r = conv.text(b.content)
    if #r > s.result_chars then r = r:sub(1, s.result_chars) .. " [...]" end
    return "[tool result" .. (b.is_error and " (error)" or "") .. ": " .. r .. "]"
  end
  if t == "compaction" and type(b.content) == "string" then
    return "[summary of an earlier part]\n" .. b.content
  end
  return "[" .. tostring(t) .. " block]"
end

-- The conversation before the cut as one text, newest part kept when it is too long.
local function transcript(msgs, upto, s, budget_chars)
  local parts = {}
  for i = 1, upto - 1 do
    local m = msgs[i]
    local who = m.role == "assistant" and "Assistant" or (m.role == "system" and "System" or "User")
    local body
    if type(m.content) == "string" then
      body = m.content
    else
      local bs = {}
      for j = 1, ax.len(m.content or {}) do
        local t = block_text(m.content[j], s)
        if t ~= "" then bs[#bs + 1] = t end
      end
      body = table.concat(bs, "\n")
    end
    parts[#parts + 1] = who .. ": " .. body
  end
  local text = table.concat(parts, "\n\n")
  if #text > budget_chars then
    text = "[... the oldest part is left out ...]\n" .. text:sub(#text - budget_chars + 1)
  end
  return text
end

local function summarise(req, ctx, cfg, upto)
  local s = ctx.settings
  local budget = math.floor(s.transcript_share * ctx.context_window * 3)
  local prompt = M.PROMPT
  if cfg.replace_prompt and cfg.instructions then
    prompt = cfg.instructions
  elseif cfg.instructions then
    prompt = prompt .. "\n\nAdditional instructions:\n" .. cfg.instructions
  end
  local r, err = ax.complete{
    messages = {
      { role = "system", content = prompt },
      { role = "user", content = "<transcript>\n" .. transcript(req.messages, upto, s, budget) ..
                                 "\n</transcript>\n\nWrite the summary now." },
    },
    max_tokens = s.summary_max_tokens,
  }
  local msg = r and r.choices and r.choices[1] and r.choices[1].message
  local text = msg and msg.content
  -- the summary call's own cost, for usage.iterations (not in the top-level usage)
  local u = r and r.usage
  local usage = u and math.type(u.prompt_tokens) == "integer" and
    { input_tokens = u.prompt_tokens, output_tokens = u.completion_tokens or 0 } or nil
  if type(text) ~= "string" or not text:find("%S") then
    ax.log.warn("compaction: the summary failed: %s", tostring(err or "no text in the answer"))
    return nil, usage
  end
  text = text:gsub("^%s*<think>.-</think>%s*", "")
  return text, usage
end

-- The top-level `compaction` parameter ({type = "summarize", instructions}): the request
-- asks for a summary of its whole conversation and nothing else.
local function summarize_request(req)
  local c = req.compaction
  if c == nil or c == ax.json.null then return nil end
  if ax.json.type(c) ~= "object" or c.type ~= "summarize" then
    ax.fail(400, "invalid_request_error", "compaction.type: expected 'summarize'")
  end
  local cm = req.context_management
  if cm ~= nil and cm ~= ax.json.null then
    ax.fail(400, "invalid_request_error",
            "compaction: cannot be combined with context_management")
  end
  local ins = c.instructions
  if ins ~= nil and ins ~= ax.json.null and type(ins) ~= "string" then
    ax.fail(400, "invalid_request_error", "compaction.instructions: expected a string")
  end
  -- instructions replace the prompt; empty or blank ones count as absent
  return { replace_prompt = true, instructions = (type(ins) == "string" and ins:find("%S")) and ins or nil }
end

function M.on_request(req, ctx)
  if not conv.is_array(req.messages) then return end
  local s = ctx.settings
  local compacted = apply_history(req)
  if compacted then ax.log.info("compaction: history replaced by its summary") end
  if not s.enabled or ctx.count_only then return end
  local whole = summarize_request(req)
  if whole then
    local text, usage = summarise(req, ctx, whole, #req.messages + 1)
    req.compaction = nil -- not for the upstream
    req.context_management = { compaction = { content = text or ax.json.null, pause = true,
                                               usage = usage } }
    return
  end
  local cfg = find_edit(req)
  if not cfg then return end
  local trigger = cfg.trigger
  if s.trigger_share > 0 then
    trigger = math.min(trigger, math.floor(s.trigger_share * ctx.context_window))
  end
  local before = ax.request_tokens(req, ctx)
  if before <= trigger then return end
  local upto = cut_index(req.messages)
  if upto <= 1 then return end -- nothing before the current turn
  local text, usage = summarise(req, ctx, cfg, upto)
  local report = { content = text or ax.json.null, pause = cfg.pause, usage = usage }
  if text and not cfg.pause then replace_head(req.messages, upto, text) end
  ax.log.info("compaction: %d tokens over a trigger of %d: %s", before, trigger,
              text and ("summary of " .. #text .. " bytes") or "failed")
  req.context_management.compaction = report
end

return M
