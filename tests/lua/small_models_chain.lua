-- A chain with every policy of issue 11 on, and model profiles: what
-- tests/lua/test_small_models_chain.lua runs over every recorded request. Also the worked
-- example of docs/default-policies.md ("Model profiles").
local profiles = {
  ["qwen3%-coder"] = { temperature = 0.3,
                       tool_turn_caps = { max_tokens = 4096 },
                       thinking_control = { mode = "always" } },
  ["qwen3"] = { thinking_control = { mode = "tool_turns" } },
  ["llama"] = { temperature = 0.2,
                tool_narrowing = { max_tools = 8 },
                loop_breaker = { repeats = 2, finish_at = 4 } },
}
return {
  { "../../policies/agentic_supplement.lua", mode = "full" },
  { "../../policies/tool_choice.lua", enabled = true },
  { "../../policies/loop_breaker.lua", profiles = profiles },
  { "../../policies/tool_retry.lua", profiles = profiles },
  { "../../policies/contamination_reset.lua", profiles = profiles },
  { "../../policies/tool_narrowing.lua", max_tools = 6, profiles = profiles },
  { "../../policies/thinking_control.lua", profiles = profiles },
  { "../../policies/prune.lua", target = 0.65 },
  { "../../policies/max_tokens.lua", floor = 16384, margin = 0.15 },
  { "../../policies/tool_turn_caps.lua", profiles = profiles },
}
