-- anthroxy.conv: block walking, pairing, units, fingerprints, markers, truncation.
local T = require "anthroxy.testing"
local ax = require "anthroxy"
local conv = require "anthroxy.conv"

T.test("text of strings, blocks and nested tool results", function()
  T.eq(conv.text("plain"), "plain")
  T.eq(conv.text(nil), "")
  T.eq(conv.text({ T.text("a"), { type = "image", source = {} }, T.text("b") }), "a\nb")
  T.eq(conv.text({ T.tool_result("x", { T.text("inner") }) }), "inner")
end)

T.test("ids, text-only turns, last index", function()
  local a = T.assistant({ T.text("hi"), T.tool_use("u1", "Read"), T.tool_use("u2", "Bash") })
  T.eq(conv.tool_use_ids(a), { "u1", "u2" })
  T.eq(conv.tool_result_ids(T.user({ T.tool_result("u2", "ok"), T.text("x") })), { "u2" })
  T.ok(not conv.is_text_only_assistant(a))
  T.ok(conv.is_text_only_assistant(T.assistant("done")))
  T.ok(conv.is_text_only_assistant(T.assistant({ T.text("done") })))
  T.ok(not conv.is_text_only_assistant(T.user("done")))
  T.eq(conv.last_index_of({ T.user("a"), a, T.user("b") }, "assistant"), 2)
end)

T.test("broken pairs, each kind", function()
  local msgs = { T.user({ T.tool_result("early", "x") }),
                 T.assistant({ T.tool_use("early", "Read"), T.tool_use("open", "Read") }),
                 T.user({ T.tool_result("ghost", "y") }) }
  local kinds = {}
  for _, p in ipairs(conv.broken_pairs(msgs)) do kinds[p.id] = p.kind end
  T.eq(kinds, { early = "result_before_use", open = "use_without_result",
                ghost = "result_without_use" })
  local tail = { T.user("go"), T.assistant({ T.tool_use("t", "Read") }) }
  T.eq(#conv.broken_pairs(tail, true), 0, "an open tool call at the very end is allowed")
  T.eq(#conv.broken_pairs(tail), 1)
end)

T.test("units start at assistant turns", function()
  local msgs = { T.user("task"), T.user("more"), T.assistant("a1"), T.user("u1"),
                 T.assistant("a2"), T.user("u2"), T.user("u2b") }
  T.eq(conv.units(msgs, 2), { { first = 2, last = 2 }, { first = 3, last = 4 },
                              { first = 5, last = 7 } })
end)

T.test("fingerprints name the calls and their inputs", function()
  local a = T.assistant({ T.tool_use("1", "Bash", { cmd = "ls" }) })
  local b = T.assistant({ T.tool_use("2", "Bash", { cmd = "ls" }) })
  local c = T.assistant({ T.tool_use("3", "Bash", { cmd = "ls -l" }) })
  T.eq(conv.turn_fingerprint(a), conv.turn_fingerprint(b), "ids do not matter")
  T.ok(conv.turn_fingerprint(a) ~= conv.turn_fingerprint(c))
  T.eq(conv.turn_fingerprint(T.assistant("text")), nil)
  local calls = conv.tool_calls({ T.user("x"), a, T.user({ T.tool_result("1", "") }), c })
  T.eq(#calls, 2)
  T.eq(calls[2].index, 4)
  T.eq(calls[2].name, "Bash")
end)

T.test("the marker names what went and is recognised", function()
  local m = conv.marker_text({ turns = 4, results = 1, truncated = 0, tokens = 1234 })
  T.ok(conv.is_marker_text(m))
  T.ok(m:find("4 earlier messages", 1, true) and m:find("1 older tool call", 1, true))
  T.ok(m:find("1234 tokens", 1, true))
  T.ok(not conv.is_marker_text("hello"))
end)

T.test("truncate_middle keeps both ends, fits, never splits a character", function()
  local text = string.rep("début — fin ", 3000)
  local out = conv.truncate_middle(text, 500)
  T.ok(ax.tokens(out) <= 500, "fits: " .. ax.tokens(out))
  T.ok(out:sub(1, 12) == text:sub(1, 12), "beginning kept")
  T.ok(out:sub(-10) == text:sub(-10), "end kept")
  T.ok(utf8.len(out) ~= nil, "valid UTF-8")
  T.eq(conv.truncate_middle("short", 500), "short")
end)
