-- The default policy chain: each entry names a policy file in this directory (or a path
-- ending in .lua, relative to it) followed by its settings. Order matters: every hook of a
-- policy sees the request as the policies before it left it. docs/default-policies.md
-- explains each policy and when to change its settings; environment variables
-- (ANTHROXY_POLICY_<NAME>_<KEY>) and --policy-set name.key=value override what is here.
return {
  -- Our working protocol appended to the system prompt: full | minimal | off. First, so
  -- that every later measurement of the prompt includes it.
  { "agentic_supplement", mode = "full" },

  -- Scales the input_tokens reported to Claude Code so that it compacts by itself before
  -- pruning is needed. Sets the scale that prune then corrects: keep it before prune.
  { "compaction_steering", enabled = true, client_window = 200000, steer_at = 0.65 },

  -- Anthropic's server-side compaction (compact_20260112) for clients that ask, with the
  -- upstream model; trigger_share caps the client's trigger to a share of the real window.
  { "compaction", trigger_share = 0.7 },

  -- Anthropic's context editing (context_management.edits) for clients that ask; set
  -- clear_tool_uses = true (with trigger_share for a small window) to clear old tool results
  -- for clients that never ask. Before prune, which then has less to cut.
  { "context_editing", clear_tool_uses = false, step = 5 },

  -- Forcing tool calls in agent loops: off by default (a forced model cannot end its turn);
  -- see docs/default-policies.md before turning it on.
  { "tool_choice", enabled = false, max_forced = 3 },

  -- For small local models that stumble: each off until its line is uncommented; the table
  -- "per symptom" in docs/default-policies.md says which one to turn on. Model profiles
  -- (`profiles = P`, with a table P defined above `return`) give each one per-model settings.
  -- { "loop_breaker", repeats = 3, release_at = 4, finish_at = 5 },   -- after tool_choice
  -- { "tool_retry", budget = 5, temperature = 0.1 },
  -- { "contamination_reset", faults = 3, keep_turns = 2 },           -- before prune
  -- { "tool_narrowing", max_tools = 12 },
  -- { "thinking_control", mode = "tool_turns" },

  -- From the prune threshold (the server's, 0.75 of the window, PROXY_CONTEXT_PRUNE_THRESHOLD)
  -- down to target.
  { "prune", target = 0.65 },

  -- After anything that grows the prompt.
  { "max_tokens", floor = 16384, margin = 0.15 },

  -- After max_tokens, whose floor it lowers on tool turns.
  -- { "tool_turn_caps", max_tokens = 8192, temperature = 0.2 },
}
