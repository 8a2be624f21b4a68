#!/usr/bin/env bash
# Runs every test: a -Werror build with unit, Lua and integration tests (the real Anthropic
# SDK and Claude Code against the real binary and a mock llama-server), then the same
# under AddressSanitizer + UndefinedBehaviorSanitizer, a short run of every libFuzzer target
# (tests/fuzz, a few seconds each; a finding fails the run), and the formatting check.
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
ax_setup_packages clang-format clang libclang-rt-14-dev
# promtool (metrics.test), headless Chromium (status.test, replay.test), curl (tests/install),
# and what dpkg-buildpackage needs for the package (packaging/build-deb.sh)
ax_setup_packages prometheus chromium curl debhelper
ax_setup_node
ulimit -n 65536 2>/dev/null || true

status=0
echo "== build (-Werror) and test"
ax_build "$AX_ROOT/build-test" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DAX_WERROR=ON
(cd "$AX_ROOT/build-test" && ctest --output-on-failure -j2 --timeout 900) || status=1

echo "== build with ASan+UBSan and test"
ax_build "$AX_ROOT/build-asan" -DCMAKE_BUILD_TYPE=Debug -DAX_SANITIZE=ON -DAX_WERROR=ON
(cd "$AX_ROOT/build-asan" &&
    ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
    ctest --output-on-failure -j2 --timeout 900) || status=1

echo "== fuzz targets (clang, ASan+UBSan, ${AX_FUZZ_SECONDS:-5} s each)"
ax_build "$AX_ROOT/build-fuzz" -DCMAKE_C_COMPILER=clang -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DAX_SANITIZE=ON -DAX_FUZZ=ON -DAX_FUZZ_SECONDS="${AX_FUZZ_SECONDS:-5}"
(cd "$AX_ROOT/build-fuzz" && ctest -R '^fuzz/' --output-on-failure -j2) || status=1

echo "== format check"
if clang-format --dry-run -Werror "$AX_ROOT"/core/*.[ch] "$AX_ROOT"/core/policy/*.[ch] \
        "$AX_ROOT"/include/*.h >/dev/null 2>&1; then
    echo "format: ok"
else
    echo "format: core/ or include/ differs from .clang-format (run clang-format -i core/*.[ch] core/policy/*.[ch] include/*.h)"
    status=1
fi
exit $status
