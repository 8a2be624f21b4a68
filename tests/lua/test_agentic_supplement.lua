-- agentic_supplement: modes full/minimal/off; system as string, block list or absent;
-- never twice; cache breakpoints on the client's blocks untouched.
local T = require "anthroxy.testing"

local p = T.load("agentic_supplement")
local texts = p.module.texts
local tools = { T.tool("Bash") }

local function with_system(system, settings)
  local q = settings and T.load("agentic_supplement", settings) or p
  local req = T.request{ system = system, tools = tools, messages = { T.user("fix the bug") } }
  return (T.run(q, "on_request", req, T.ctx()))
end

T.test("the two texts differ and carry no seed wording", function()
  T.ok(#texts.full > #texts.minimal, "full is the longer one")
  T.ok(not texts.full:find("agentic-protocol", 1, true), "own tag")
  T.ok(not texts.full:find("IMMEDIATELY", 1, true), "own wording")
end)

T.test("absent system becomes the protocol", function()
  local out = with_system(nil)
  T.eq(out.system, texts.full)
end)

T.test("a string system gets the protocol appended", function()
  local out = with_system("You are a helpful coder.")
  T.eq(out.system, "You are a helpful coder.\n\n" .. texts.full)
end)

T.test("a block list gets a block of its own at the end, cache_control kept", function()
  local sys = { T.text("part one"),
                { type = "text", text = "part two", cache_control = { type = "ephemeral" } } }
  local out = with_system(sys)
  T.eq(#out.system, 3)
  T.eq(out.system[2].cache_control, { type = "ephemeral" })
  T.eq(out.system[2].text, "part two")
  T.eq(out.system[3], { type = "text", text = texts.full })
end)

T.test("minimal mode appends the short text", function()
  local out = with_system("base", { mode = "minimal" })
  T.eq(out.system, "base\n\n" .. texts.minimal)
end)

T.test("off leaves the request alone", function()
  local out = with_system("base", { mode = "off" })
  T.eq(out.system, "base")
  local none = with_system(nil, { mode = "off" })
  T.eq(none.system, nil)
end)

T.test("a custom text replaces the built-in one", function()
  local out = with_system("base", { text = "Always run the tests." })
  T.eq(out.system, "base\n\nAlways run the tests.")
end)

T.test("not appended twice", function()
  local once = with_system("base")
  local req = T.request{ system = once.system, tools = tools, messages = { T.user("again") } }
  local twice = T.run(p, "on_request", req, T.ctx())
  T.eq(twice.system, once.system)
end)

T.test("requests without tools are left alone unless only_with_tools is off", function()
  local req = T.request{ system = "base", messages = { T.user("hello") } }
  T.eq((T.run(p, "on_request", req, T.ctx())).system, "base")
  local q = T.load("agentic_supplement", { only_with_tools = false })
  T.eq((T.run(q, "on_request", req, T.ctx())).system, "base\n\n" .. texts.full)
end)

T.test("the real Claude Code request: a fourth system block", function()
  local req = T.fixture("claude-code/after-tool-call.json")
  local n = #req.system
  local out = T.run(p, "on_request", req, T.ctx{ user_agent = "claude-cli/2.1.197" })
  T.eq(#out.system, n + 1)
  T.eq(out.system[n + 1].text, texts.full)
  T.eq(out.system[n].text, req.system[n].text)
end)
