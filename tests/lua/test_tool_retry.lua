-- tool_retry: a call off its input_schema, rejected by the client, is retried once at low
-- temperature with the schema errors appended, within the session's budget.
local T = require "anthroxy.testing"
local ax = require "anthroxy"
local conv = require "anthroxy.conv"

local p = T.load("tool_retry")

local READ = T.tool("Read", {
  type = "object", additionalProperties = false, required = { "file_path" },
  properties = { file_path = { type = "string" }, offset = { type = "integer" },
                 mode = { type = "string", enum = { "text", "binary" } },
                 pages = { type = "array", items = { type = "integer" } } } })

local CC_ERROR = "<tool_use_error>InputValidationError: Read failed due to the following "
  .. "issue:\nThe required parameter `file_path` is missing</tool_use_error>"

-- The model called Read with `input`; the client answered with `result` (an error by default).
local function after_call(input, result, is_error, earlier)
  local msgs = { T.user("read the config") }
  for _, m in ipairs(earlier or {}) do msgs[#msgs + 1] = m end
  msgs[#msgs + 1] = T.assistant{ T.tool_use("r1", "Read", input) }
  if is_error == nil then is_error = true end
  msgs[#msgs + 1] = T.user{ T.tool_result("r1", result or CC_ERROR, is_error) }
  return T.request{ temperature = 0.7, tools = { READ, T.tool("Bash") }, messages = msgs }
end

local function result_text(out)
  return conv.text(out.messages[#out.messages].content)
end

T.test("validate: the subset that catches real mistakes", function()
  local schema = ax.json.totable(ax.json.decode(ax.json.encode(READ.input_schema)))
  T.eq(p.module.validate(schema, { file_path = "a" }), {})
  T.eq(p.module.validate(schema, { path = "a" }), {
    'missing required property "file_path"',
    'unexpected property "path" (the schema allows: file_path, mode, offset, pages)' })
  T.eq(p.module.validate(schema, { file_path = "a", offset = "3" }),
    { 'offset must be an integer, not "3"' })
  T.eq(p.module.validate(schema, { file_path = "a", mode = "hex" }),
    { 'mode must be one of "text", "binary", not "hex"' })
  T.eq(p.module.validate(schema, { file_path = "a", pages = { 1, "x" } }),
    { 'pages[1] must be an integer, not "x"' })
  T.eq(p.module.validate(schema, { file_path = "a", offset = 3.0 }), {}, "3.0 is an integer")
  T.eq(p.module.validate({ type = "object", properties = { v = {
    anyOf = { { type = "string" }, { type = "integer" } } } } }, { v = true }),
    { "v matches none of the allowed forms" })
end)

T.test("a rejected bad call is retried: errors appended, temperature lowered, counted", function()
  local session = T.session()
  local out = T.run(p, "on_request", after_call({ path = "config.toml" }),
    T.ctx{ session = session })
  local t = result_text(out)
  T.ok(t:find("InputValidationError", 1, true), "the client's error stays")
  T.ok(t:find("[anthroxy: tool_retry]", 1, true), t)
  T.ok(t:find('missing required property "file_path"', 1, true), t)
  T.eq(out.temperature, 0.1)
  T.eq(session.tool_retries, 1)
end)

T.test("a good call, or a call to a tool without schema, is left alone", function()
  local req = after_call({ file_path = "a" }, "contents", false)
  T.eq(T.run(p, "on_request", req, T.ctx()), req)
  local bash = T.request{ tools = { READ, T.tool("Bash") }, messages = {
    T.user("x"), T.assistant{ T.tool_use("b1", "Bash", { anything = 1 }) },
    T.user{ T.tool_result("b1", "error", true) } } }
  T.eq(T.run(p, "on_request", bash, T.ctx()), bash)
end)

T.test("a bad call the client ran anyway is not retried", function()
  local req = after_call({ file_path = "a", offset = "3" }, "contents", false)
  T.eq(T.run(p, "on_request", req, T.ctx()), req)
end)

T.test("once: a retry that failed again passes through", function()
  local earlier = { T.assistant{ T.tool_use("r0", "Read", { path = "x" }) },
                    T.user{ T.tool_result("r0", CC_ERROR, true) } }
  local req = after_call({ path = "config.toml" }, nil, true, earlier)
  local session = T.session()
  T.eq(T.run(p, "on_request", req, T.ctx{ session = session }), req)
  T.eq(session.tool_retries, 0)
end)

T.test("the budget per session", function()
  local session = T.session{ tool_retries = 5 }
  local req = after_call({ path = "config.toml" })
  T.eq(T.run(p, "on_request", req, T.ctx{ session = session }), req)
  local q = T.load("tool_retry", { budget = 6 })
  T.ok(result_text(T.run(q, "on_request", req, T.ctx{ session = session }))
    :find("tool_retry", 1, true))
end)

T.test("a string result becomes text blocks with the note", function()
  local out = T.run(p, "on_request", after_call({}, "bad input"), T.ctx())
  local c = out.messages[#out.messages].content[1].content
  T.eq(c[1], { type = "text", text = "bad input" })
  T.ok(c[2].text:find("tool_retry", 1, true))
end)

T.test("profiles: temperature per model", function()
  local q = T.load("tool_retry", { profiles = { ["llama"] = { tool_retry = { temperature = 0 } } } })
  T.eq((T.run(q, "on_request", after_call({}), T.ctx{ upstream_model = "llama-3" })).temperature, 0)
end)

T.test("retries and pass-throughs are counted", function()
  local c0 = ((T.counters().default or {}).test or {})
  local r0, p0 = c0.retry or 0, c0.passed or 0
  T.run(p, "on_request", after_call({ path = "x" }), T.ctx())
  T.run(p, "on_request", after_call({ path = "x" }), T.ctx{ session = T.session{ tool_retries = 9 } })
  local c = T.counters().default.test
  T.eq(c.retry, r0 + 1)
  T.ok((c["retry:claude-sonnet-4-5"] or 0) >= 1, "per model")
  T.eq(c.passed, p0 + 1)
end)

T.test("the core's own check of the answer (ctx.tool_calls) is logged and counted", function()
  local c0 = ((T.counters().default or {}).test or {}).detected or 0
  local resp = { id = "m", stop_reason = "tool_use", content = {
    { type = "tool_use", id = "x", name = "Write", input = { file_path = "a" } } } }
  T.run(p, "on_response", resp, T.ctx{ tool_calls = { text_calls = 0, repaired = 0,
    schema_failures = 1, first_failure = 'Write: missing required property "content"' } })
  T.run(p, "on_response", resp, T.ctx())   -- an engine without it: nothing
  T.run(p, "on_response", resp, T.ctx{ tool_calls = { schema_failures = 0 } })
  T.eq(T.counters().default.test.detected, c0 + 1)
end)

T.test("a trailing system message does not hide the failed call", function()
  local req = after_call({ path = "config.toml" })
  req.messages[#req.messages + 1] = { role = "system", content = "reminder" }
  local out = T.run(p, "on_request", req, T.ctx())
  T.ok(conv.text(out.messages[#out.messages - 1].content):find("tool_retry", 1, true))
  T.eq(out.temperature, 0.1)
  local earlier = { T.assistant{ T.tool_use("r0", "Read", { path = "x" }) },
                    T.user{ T.tool_result("r0", CC_ERROR, true) },
                    { role = "system", content = "reminder" } }
  local again = after_call({ path = "config.toml" }, nil, true, earlier)
  T.eq(T.run(p, "on_request", again, T.ctx()), again, "its retry failed too")
end)
