-- max_tokens: floor only with thinking or tools, the cap keeps margin * window free and wins
-- over the floor, never below 1, prompt measured with the calibrated estimator.
local T = require "anthroxy.testing"
local ax = require "anthroxy"

local p = T.load("max_tokens")

local function prompt_of(req, ctx)
  return ax.calibrated(ax.request_tokens(req), ctx)
end

T.test("a plain question keeps its small max_tokens", function()
  local req = T.request{ max_tokens = 24, messages = { T.user("What is 2+2?") } }
  local out = T.run(p, "on_request", req, T.ctx{ context_window = 131072 })
  T.eq(out.max_tokens, 24)
end)

T.test("the floor applies when tools are offered", function()
  local req = T.request{ max_tokens = 1000, tools = { T.tool("Read") },
                         messages = { T.user("read it") } }
  local out = T.run(p, "on_request", req, T.ctx{ context_window = 131072 })
  T.eq(out.max_tokens, 16384)
end)

T.test("the floor applies when thinking is enabled, not when disabled", function()
  local on = T.request{ max_tokens = 2000, thinking = { type = "enabled", budget_tokens = 1024 },
                        messages = { T.user("think") } }
  T.eq((T.run(p, "on_request", on, T.ctx{ context_window = 131072 })).max_tokens, 16384)
  local adaptive = T.request{ max_tokens = 2000, thinking = { type = "adaptive" },
                              messages = { T.user("think") } }
  T.eq((T.run(p, "on_request", adaptive, T.ctx{ context_window = 131072 })).max_tokens, 16384)
  local off = T.request{ max_tokens = 2000, thinking = { type = "disabled" },
                         messages = { T.user("think") } }
  T.eq((T.run(p, "on_request", off, T.ctx{ context_window = 131072 })).max_tokens, 2000)
end)

T.test("a client value above the floor is kept when it fits", function()
  local req = T.request{ max_tokens = 40000, tools = { T.tool("Read") },
                         messages = { T.user("go") } }
  T.eq((T.run(p, "on_request", req, T.ctx{ context_window = 200000 })).max_tokens, 40000)
end)

T.test("cap arithmetic: window - prompt - margin * window", function()
  local req = T.request{ max_tokens = 64000, tools = { T.tool("Read") },
                         messages = { T.user(string.rep("lorem ipsum dolor ", 2000)) } }
  local ctx = T.ctx{ context_window = 32768 }
  local prompt = prompt_of(req, ctx)
  T.ok(prompt > 1000, "the prompt is sizeable")
  local out = T.run(p, "on_request", req, ctx)
  T.eq(out.max_tokens, 32768 - prompt - math.floor(0.15 * 32768))
end)

T.test("the cap wins over the floor", function()
  local req = T.request{ max_tokens = 100, tools = { T.tool("Read") },
                         messages = { T.user(string.rep("lorem ipsum dolor ", 1000)) } }
  local ctx = T.ctx{ context_window = 20000 }
  local expect = 20000 - prompt_of(req, ctx) - 3000
  T.ok(expect < 16384 and expect > 100, "the cap lies between client value and floor")
  T.eq((T.run(p, "on_request", req, ctx)).max_tokens, expect)
end)

T.test("a prompt that fills the window is refused, never answered in one token", function()
  local req = T.request{ max_tokens = 32000, messages = { T.user(string.rep("x y z ", 20000)) } }
  local err = T.fails(function() T.run(p, "on_request", req, T.ctx{ context_window = 4096 }) end)
  T.eq(err.fail.status, 400)
  T.ok(err.fail.message:find("^prompt is too long: %d+ tokens > %d+ maximum"), err.fail.message)
end)

T.test("between window - margin and window - min_output the margin gives way", function()
  -- The issue's case: a prompt above 85 % of the window sent max_tokens 32000 -> 1.
  local ctx = T.ctx{ context_window = 32768 }
  local body = T.request{ max_tokens = 32000, tools = { T.tool("Read") }, messages = { T.user("") } }
  local base = prompt_of(body, ctx)
  local fill = string.rep("lorem ipsum dolor ", 1)
  local per = prompt_of(T.request{ max_tokens = 1, messages = { T.user(fill:rep(1000)) } }, ctx)
    - prompt_of(T.request{ max_tokens = 1, messages = { T.user("") } }, ctx)
  local n = math.floor((0.90 * 32768 - base) / per * 1000)
  local req = T.request{ max_tokens = 32000, tools = { T.tool("Read") },
                         messages = { T.user(fill:rep(n)) } }
  local prompt = prompt_of(req, ctx)
  T.ok(prompt > 0.85 * 32768 and prompt < 32768 - 1024, "prompt at ~90 % of the window")
  T.eq((T.run(p, "on_request", req, ctx)).max_tokens, 1024)
  -- a client asking for less than min_output keeps its value
  req.max_tokens = 200
  T.eq((T.run(p, "on_request", req, ctx)).max_tokens, 200)
  -- the minimum is a setting
  local q = T.load("max_tokens", { min_output = 4096 })
  req.max_tokens = 32000
  local err = T.fails(function() T.run(q, "on_request", req, T.ctx{ context_window = 32768 }) end)
  T.ok(err.fail.message:find("> " .. (32768 - 4096) .. " maximum", 1, true), err.fail.message)
end)

T.test("the prompt is measured calibrated", function()
  local req = T.request{ max_tokens = 64000, messages = { T.user(string.rep("alpha beta ", 3000)) } }
  local ctx = T.ctx{ context_window = 32768, session = T.session{ calibration = 1.5 } }
  local raw = ax.request_tokens(req)
  local out = T.run(p, "on_request", req, ctx)
  T.eq(out.max_tokens, 32768 - ax.calibrated(raw, ctx) - math.floor(0.15 * 32768))
  T.ok(ax.calibrated(raw, ctx) > raw, "calibration 1.5 grows the estimate")
end)

T.test("settings: floor and margin", function()
  local q = T.load("max_tokens", { floor = 4096, margin = 0.5 })
  local req = T.request{ max_tokens = 10, tools = { T.tool("Read") }, messages = { T.user("hi") } }
  local ctx = T.ctx{ context_window = 100000 }
  T.eq((T.run(q, "on_request", req, ctx)).max_tokens, 4096)
  local small = T.ctx{ context_window = 8000 }
  T.eq((T.run(q, "on_request", req, small)).max_tokens, 8000 - prompt_of(req, small) - 4000)
end)

T.test("no window known: only the floor", function()
  local req = T.request{ max_tokens = 10, tools = { T.tool("Read") }, messages = { T.user("hi") } }
  T.eq((T.run(p, "on_request", req, T.ctx{ context_window = 0 })).max_tokens, 16384)
end)

T.test("a thinking budget stays below the capped max_tokens", function()
  local req = T.request{ max_tokens = 30000, thinking = { type = "enabled", budget_tokens = 20000 },
                         messages = { T.user(string.rep("lorem ipsum ", 1000)) } }
  local out = T.run(p, "on_request", req, T.ctx{ context_window = 16384 })
  T.ok(out.max_tokens < 20000, "capped")
  T.eq(out.thinking.budget_tokens, out.max_tokens - 1)
end)
