-- tool_narrowing: more than max_tools tools -> the always list, the tools used in the
-- conversation, then the most relevant to the recent turns; widening when the model asks for
-- a tool it was not sent, is told it has no such tool, or loops.
local T = require "anthroxy.testing"

local p = T.load("tool_narrowing", { max_tools = 4, always = "Read" })

local function tools()
  local t = { T.tool("Read"), T.tool("Bash"), T.tool("WebFetch"), T.tool("NotebookEdit"),
              T.tool("TodoWrite"), T.tool("Grep"), T.tool("mcp__github__create_issue"),
              T.tool("Glob") }
  t[3].description = "Fetch a web page by its URL"
  t[4].description = "Replace a cell of a Jupyter notebook"
  t[7].description = "Open an issue in a GitHub repository"
  return t
end

local function names(out)
  local n = {}
  for _, t in ipairs(out.tools) do n[#n + 1] = t.name end
  return n
end

T.test("few tools: nothing changes", function()
  local req = T.request{ tools = { T.tool("Read"), T.tool("Bash") },
                         messages = { T.user("hi") } }
  T.eq(T.run(p, "on_request", req, T.ctx()), req)
end)

T.test("always, used and relevant tools are kept, in the client's order", function()
  local req = T.request{ tools = tools(), messages = {
    T.user("start"), T.assistant{ T.tool_use("g1", "Grep", { pattern = "x" }) },
    T.user{ T.tool_result("g1", "none"), T.text("now fetch the page at that url") } } }
  local out = T.run(p, "on_request", req, T.ctx())
  T.eq(names(out), { "Read", "WebFetch", "Grep" })
end)

T.test("a tool used long ago is still kept, even past max_tools", function()
  local msgs = { T.user("start") }
  for i, name in ipairs{ "Bash", "TodoWrite", "Glob", "NotebookEdit" } do
    msgs[#msgs + 1] = T.assistant{ T.tool_use("u" .. i, name, { i = i }) }
    msgs[#msgs + 1] = T.user{ T.tool_result("u" .. i, "ok") }
  end
  msgs[#msgs + 1] = T.assistant("done with that")
  msgs[#msgs + 1] = T.user("open a github issue about it")
  local out = T.run(p, "on_request", T.request{ tools = tools(), messages = msgs }, T.ctx())
  T.eq(names(out), { "Read", "Bash", "NotebookEdit", "TodoWrite", "Glob" })
end)

T.test("relevance: the last user message's words pick the MCP tool", function()
  local out = T.run(p, "on_request", T.request{ tools = tools(), messages = {
    T.user("please create an issue in the github repository") } }, T.ctx())
  T.eq(names(out), { "Read", "mcp__github__create_issue" })
end)

T.test("a client's tool_choice tool is always kept", function()
  local out = T.run(p, "on_request", T.request{ tools = tools(),
    tool_choice = { type = "tool", name = "Glob" }, messages = { T.user("hello") } }, T.ctx())
  T.eq(names(out), { "Read", "Glob" })
end)

T.test("widening: the model names a tool it was not sent", function()
  local req = T.request{ tools = tools(), messages = {
    T.user("look at the docs online"),
    T.assistant('<tool_call>{"name": "NotebookEdit", "arguments": {"x": 3}}</tool_call>'),
    T.user("well?") } }
  local out = T.run(p, "on_request", req, T.ctx())
  T.eq(#out.tools, 8, "all tools with widen_to = 0")
  local some = T.load("tool_narrowing", { max_tools = 4, always = "Read", widen_to = 3 })
  local out2 = T.run(some, "on_request", req, T.ctx())
  T.eq(names(out2), { "Read", "Bash", "NotebookEdit" })
end)

T.test("a tool name used as a plain word is not a request for it", function()
  local req = T.request{ tools = tools(), messages = {
    T.user("start"), T.assistant("Glob patterns are tricky."), T.user("ok") } }
  T.eq(names(T.run(p, "on_request", req, T.ctx())), { "Read", "Glob" }, "relevant, not widened")
end)

T.test("widening: the client says there is no such tool", function()
  local req = T.request{ tools = tools(), messages = {
    T.user("x"), T.assistant{ T.tool_use("z1", "Browse", { url = "u" }) },
    T.user{ T.tool_result("z1", "<tool_use_error>Error: No such tool available: Browse. "
      .. "Browse is not a tool you can call.</tool_use_error>", true) } } }
  T.eq(#(T.run(p, "on_request", req, T.ctx())).tools, 8)
end)

T.test("widening: the model loops", function()
  local msgs = { T.user("x") }
  for i = 1, 3 do
    msgs[#msgs + 1] = T.assistant{ T.tool_use("r" .. i, "Read", { file_path = "a" }) }
    msgs[#msgs + 1] = T.user{ T.tool_result("r" .. i, "same") }
  end
  T.eq(#(T.run(p, "on_request", T.request{ tools = tools(), messages = msgs }, T.ctx())).tools, 8)
  msgs[#msgs - 1] = T.assistant{ T.tool_use("r3", "Read", { file_path = "b" }) }
  T.eq(#(T.run(p, "on_request", T.request{ tools = tools(), messages = msgs }, T.ctx())).tools, 1)
end)

T.test("profiles: another max_tools for another model", function()
  local q = T.load("tool_narrowing", { max_tools = 4, always = "Read",
    profiles = { ["llama"] = { tool_narrowing = { always = "Read,Bash,Glob" } } } })
  local req = T.request{ tools = tools(), messages = { T.user("hello") } }
  T.eq(names(T.run(q, "on_request", req, T.ctx{ upstream_model = "llama-3.1-8b" })),
    { "Read", "Bash", "Glob" })
  T.eq(names(T.run(q, "on_request", req, T.ctx{ upstream_model = "qwen" })), { "Read" })
end)

T.test("narrowing and widening are counted, with the tools dropped", function()
  local c0 = ((T.counters().default or {}).test or {})
  local n0, d0 = c0.narrowed or 0, c0.tools_dropped or 0
  T.run(p, "on_request", T.request{ tools = tools(), messages = { T.user("hello") } }, T.ctx())
  local c = T.counters().default.test
  T.eq(c.narrowed, n0 + 1)
  T.eq(c.tools_dropped, d0 + 7)
end)

T.test("a trailing system message does not hide 'No such tool available'", function()
  local req = T.request{ tools = tools(), messages = {
    T.user("x"), T.assistant{ T.tool_use("z1", "Browse", { url = "u" }) },
    T.user{ T.tool_result("z1", "Error: No such tool available: Browse", true) },
    { role = "system", content = "reminder" } } }
  T.eq(#(T.run(p, "on_request", req, T.ctx())).tools, 8)
end)
