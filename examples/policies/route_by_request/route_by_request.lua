-- route_by_request: routing as a policy (on_route). Requests with images go to the vision
-- upstream (with its model), very large ones to the big replicas, and in office hours an idle
-- CPU box takes what it can; everything else is left to the model map. Needs a fleet
-- (--upstream NAME=URL,...) whose names match the settings.
local ax = require "anthroxy"

local M = {
  name = "route_by_request",
  defaults = {
    vision = "vision", vision_model = "", -- "" : the vision upstream's own model
    big = "gpu0,gpu1", big_tokens = 30000,
    spare = "", office_from = 9, office_to = 18, -- spare = "" : off
  },
}

local function has_image(req)
  for _, m in ipairs(req.messages) do
    if type(m.content) ~= "string" then
      for _, b in ipairs(m.content) do
        if b.type == "image" then return true end
      end
    end
  end
  return false
end

local function list(s)
  local out = {}
  for name in s:gmatch("[^,%s]+") do out[#out + 1] = name end
  return out
end

function M.on_route(req, ctx, fleet)
  local s = ctx.settings
  if s.vision ~= "" and has_image(req) then
    if s.vision_model ~= "" then return s.vision, s.vision_model end
    return s.vision
  end
  if ax.request_tokens(req) > s.big_tokens then return list(s.big) end
  local hour = tonumber(os.date("%H"))
  if s.spare ~= "" and hour >= s.office_from and hour < s.office_to then
    for _, u in ipairs(fleet.upstreams) do
      if u.name == s.spare and u.healthy and u.load == 0 then return u.name end
    end
  end
  return nil
end

return M
