-- loop_breaker: notices when the model asks for exactly the same tool call turn after turn
-- (same tool, same input: the result will not change) and tells it so, in a note appended
-- to the last user message. If the loop goes on to `hard_limit` identical turns, the next
-- answer may not call a tool at all (tool_choice none), unless the client chose itself: the
-- model has to say where it is stuck. on_response logs loops the monitor's fingerprints show.
local ax = require "anthroxy"
local conv = require "anthroxy.conv"

local M = {
  name = "loop_breaker",
  defaults = { repeats = 3, hard_limit = 5 },
}

-- How many of the newest assistant turns made exactly the same tool calls, and which.
local function trailing_repeats(msgs)
  local n, fp = 0, nil
  for i = #msgs, 1, -1 do
    local m = msgs[i]
    if m.role == "assistant" then
      local f = conv.turn_fingerprint(m)
      if f == nil or (fp ~= nil and f ~= fp) then break end
      fp = f
      n = n + 1
    end
  end
  return n, fp
end

function M.on_request(req, ctx)
  local s = ctx.settings
  local msgs = req.messages
  if not conv.is_array(msgs) or #msgs == 0 then return end
  local n, fp = trailing_repeats(msgs)
  if n < s.repeats then return end
  local last = msgs[#msgs]
  if last.role ~= "user" then return end
  local note = string.format("[anthroxy: loop detected] You have made this same tool call %d "
    .. "times in a row: %s. Its result will not change. Do not repeat it: change the input, "
    .. "use a different tool, or explain what is blocking you.", n, fp:sub(1, 300))
  local block = { type = "text", text = note }
  if type(last.content) == "string" then
    last.content = { { type = "text", text = last.content }, block }
  else
    ax.insert(last.content, block)
  end
  if n >= s.hard_limit and req.tool_choice == nil then
    req.tool_choice = { type = "none" }
  end
  ax.log.warn("loop: %d identical tool turns (%s)", n, fp:sub(1, 120))
end

function M.on_response(resp, ctx)
  local fps = ctx.session and ctx.session.tool_fingerprints
  if not fps or #fps < ctx.settings.repeats then return end
  local n = #fps
  for k = n - ctx.settings.repeats + 1, n do
    if fps[k] ~= fps[n] then return end
  end
  ax.log.info("the session's last %d tool calls are identical (%s)", ctx.settings.repeats, fps[n])
end

return M
