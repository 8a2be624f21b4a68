-- agentic_supplement: appends a short working protocol to the system prompt so that local
-- models, which often stop after describing a fix, act through their tools, check their
-- work and end the turn only when the task is done. The texts live here: edit them in this
-- file (the policy reloads when saved) or set `text` in the chain entry to replace them.
-- Settings: mode = "full" | "minimal" | "off"; only_with_tools (skip requests that offer
-- no tools, where the protocol makes no sense); text (a replacement for the mode's text).
local ax = require "anthroxy"
local conv = require "anthroxy.conv"

local M = {
  name = "agentic_supplement",
  defaults = { mode = "full", only_with_tools = true, text = "" },
}

-- Recognised on the way in, so the protocol is never appended twice (a retried request, a
-- client that echoes our system prompt back).
local TAG = "<working-protocol>"

M.texts = {
  full = TAG .. [[

You are running inside an agent loop and can call tools. Work by acting, not by narrating:
- When the task needs a file read, a change made or a command run, call the tool in this
  turn instead of saying what you are going to do.
- Once you know what has to change, change it. Explaining a problem does not solve it.
- After each change, check it: run the tests, the build or the command that shows the
  result, and read what it prints before moving on.
- When a tool call fails, read the error and try a different approach; one failure is not
  a reason to stop.
- Do what you were asked without asking for permission first, unless the request is
  ambiguous or would destroy data.
- Reply with text alone, without a tool call, only when the whole task is finished and
  verified, or when you cannot continue without the user's answer.
</working-protocol>]],
  minimal = TAG .. [[

Use your tools to do the work instead of describing it, check every change, and reply
without a tool call only once the task is complete.
</working-protocol>]],
}

local function already_present(system)
  if type(system) == "string" then
    return system:find(TAG, 1, true) ~= nil
  end
  if conv.is_array(system) then
    for i = 1, #system do
      local b = system[i]
      if conv.is_object(b) and type(b.text) == "string" and b.text:find(TAG, 1, true) then
        return true
      end
    end
  end
  return false
end

function M.on_request(req, ctx)
  local s = ctx.settings
  if s.mode == "off" or s.enabled == false then return end
  if s.only_with_tools and not (conv.is_array(req.tools) and #req.tools > 0) then return end
  local text = (type(s.text) == "string" and s.text ~= "") and s.text or M.texts[s.mode]
  if not text then
    ax.log.warn("agentic_supplement: unknown mode %q, nothing appended", tostring(s.mode))
    return
  end
  local system = req.system
  if already_present(system) then return end
  if system == nil or system == ax.json.null or system == "" then
    req.system = text
  elseif type(system) == "string" then
    req.system = system .. "\n\n" .. text
  elseif conv.is_array(system) then
    -- A block of its own at the end: the client's blocks, and any cache_control breakpoint
    -- on them, stay byte-identical, so a prompt cache over them keeps working.
    ax.insert(system, { type = "text", text = text })
  else
    ax.log.warn("agentic_supplement: system is neither string nor block list, left alone")
  end
end

return M
