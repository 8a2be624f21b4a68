-- An A/B test of two context strategies for agent sessions (docs/experiments.md).
--
-- Each session (Claude Code's x-claude-code-session-id, else metadata.user_id) lands in one
-- arm, by a hash of this experiment's name and the session: the same session always gets
-- the same arm, across restarts and instances. Run it with
--   anthroxy --experiment examples/experiments/masking-vs-prune.lua
-- and read the figures per arm at GET /v1/experiments.
return {
  name = "masking-vs-prune",
  arms = {
    -- today's default chain: prune from 0.75 of the window down to 0.65
    { name = "prune", weight = 1, chain = "default.lua" },
    -- observation masking ("The Complexity Trap", Lindenbauer et al. 2025): the last 5 tool
    -- results verbatim, older ones a one-line placeholder; no pruning
    { name = "masking", weight = 1, chain = {
        { "agentic_supplement", mode = "full" },
        { "compaction_steering", enabled = true, client_window = 200000, steer_at = 0.65 },
        { "observation_masking", keep = 5, step = 5 },
        { "max_tokens", floor = 16384, margin = 0.15 },
      } },
  },
}
