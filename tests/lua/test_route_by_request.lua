-- examples/policies/route_by_request: on_route chooses by images, size and the fleet's state,
-- and leaves the rest to the model map.
local T = require "anthroxy.testing"

local function policy(settings)
  return T.load("examples/policies/route_by_request/route_by_request.lua", settings)
end

local function fleet(cpu_load, cpu_healthy)
  return { upstreams = {
    { name = "gpu0", kind = "llama-server", state = "ok", healthy = true, load = 2, max = 8, models = { "qwen" } },
    { name = "cpu", kind = "llama-server", state = "ok", healthy = cpu_healthy, load = cpu_load, max = 2, models = { "small" } },
  } }
end

T.test("an image goes to the vision upstream, with its model when one is set", function()
  local req = T.request{ messages = { T.user({ T.text("what is this"),
    { type = "image", source = { type = "base64", media_type = "image/png", data = "iVBORw0KGgo=" } } }) } }
  local _, name, model = T.run(policy(), "on_route", req, T.ctx(), fleet(0, true))
  T.eq(name, "vision")
  T.eq(model, nil)
  _, name, model = T.run(policy({ vision_model = "qwen2.5-vl" }), "on_route", req, T.ctx(), fleet(0, true))
  T.eq(name, "vision")
  T.eq(model, "qwen2.5-vl")
end)

T.test("a large request goes to the big upstreams, as a list", function()
  local req = T.request{ messages = { T.user(string.rep("word ", 4000)) } }
  local _, names = T.run(policy({ big_tokens = 1000 }), "on_route", req, T.ctx(), fleet(0, true))
  T.eq(names, { "gpu0", "gpu1" })
  local _, none = T.run(policy({ big_tokens = 100000 }), "on_route", req, T.ctx(), fleet(0, true))
  T.eq(none, nil)
end)

T.test("an idle, healthy spare takes requests in office hours; a busy or sick one does not", function()
  local req = T.request{ messages = { T.user("hello") } }
  local p = policy({ spare = "cpu", office_from = 0, office_to = 24 })
  local _, name = T.run(p, "on_route", req, T.ctx(), fleet(0, true))
  T.eq(name, "cpu")
  _, name = T.run(p, "on_route", req, T.ctx(), fleet(1, true))
  T.eq(name, nil)
  _, name = T.run(p, "on_route", req, T.ctx(), fleet(0, false))
  T.eq(name, nil)
  _, name = T.run(policy({ spare = "cpu", office_from = 0, office_to = 0 }), "on_route", req, T.ctx(), fleet(0, true))
  T.eq(name, nil, "outside the hours")
end)

T.test("on_route cannot write the request", function()
  local m = { on_route = function(req) req.model = "changed" end }
  T.fails(function() T.run({ module = m, settings = {} }, "on_route", T.request{}, T.ctx(), fleet(0, true)) end, "read%-only")
end)
