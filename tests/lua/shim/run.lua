-- Runs one tests/lua/test_*.lua file with the bare lua5.4 interpreter and the plain-Lua
-- stand-ins of `anthroxy` and `anthroxy.testing` in this directory:
--   lua5.4 tests/lua/shim/run.lua tests/lua/test_prune.lua
-- Exit 0 when every T.test passed. ctest runs the same files inside the engine instead
-- (`anthroxy test-lua FILE`); this runner is for working without a build.
local here = arg[0]:match("^(.*)/[^/]*$") or "."
local src = here .. "/../../.."
AX_SHIM_SOURCE_DIR = src
package.path = here .. "/?.lua;" .. src .. "/lua/?.lua;" .. package.path

local file = assert(arg[1], "usage: lua5.4 run.lua TEST.lua")
local T = require "anthroxy.testing"
local chunk = assert(loadfile(file, "t"))
local ok, err = xpcall(chunk, debug.traceback)
if not ok then
  io.stderr:write("FAIL ", file, ": ", tostring(err), "\n")
  os.exit(1)
end
if T.failures() > 0 then
  io.stderr:write(file, ": ", T.failures(), " failed\n")
  os.exit(1)
end
print(file .. ": ok")
