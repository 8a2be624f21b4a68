-- ax.count: a policy's named counters add up, return the running total, and reject bad names.
local T = require "anthroxy.testing"
local ax = require "anthroxy"

local p = { module = {
  on_request = function(req, ctx)
    local total = ax.count("seen")
    ax.count("messages", #req.messages)
    req.metadata = { total = total }
  end,
}, settings = {} }

T.test("counters add up across requests and return the total", function()
  local req = T.request{ messages = { T.user("a"), T.assistant("b"), T.user("c") } }
  local out1 = T.run(p, "on_request", req)
  local out2 = T.run(p, "on_request", req)
  T.eq(out1.metadata.total, 1)
  T.eq(out2.metadata.total, 2)
  local c = T.counters()
  T.eq(c.default.test.seen, 2)
  T.eq(c.default.test.messages, 6)
end)

T.test("a bad name or delta is a policy error, not a silent no-op", function()
  local bad = { module = { on_request = function() ax.count("") end }, settings = {} }
  T.fails(function() T.run(bad, "on_request", T.request{ messages = { T.user("x") } }) end,
    "ax.count: the name must have 1 to 63")
  local nan = { module = { on_request = function() ax.count("x", 0/0) end }, settings = {} }
  T.fails(function() T.run(nan, "on_request", T.request{ messages = { T.user("x") } }) end,
    "finite number")
  local long = { module = { on_request = function() ax.count(string.rep("n", 64)) end },
                 settings = {} }
  T.fails(function() T.run(long, "on_request", T.request{ messages = { T.user("x") } }) end,
    "1 to 63")
end)
