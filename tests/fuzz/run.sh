#!/usr/bin/env bash
# tests/fuzz/run.sh BINARY SECONDS CORPUS_DIR ARTIFACT_DIR [libFuzzer flags...] - seeds the
# corpus (tests/fuzz/seed.sh), replays the regressions, fuzzes for SECONDS and fails on any
# finding (crash, leak, sanitizer report, timeout, out-of-memory), whose input is left in
# ARTIFACT_DIR. Used by ctest (a few seconds) and for long runs (-jobs, longer SECONDS).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
bin=$1 secs=$2 corpus=$3 art=$4
shift 4
name=$(basename "$bin")
"$here/seed.sh" "$name" "$corpus"
mkdir -p "$art"
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:allocator_may_return_null=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
# Known findings first: each must pass once the fault is fixed.
if [ -d "$here/regressions/$name" ] && [ -n "$(ls -A "$here/regressions/$name")" ]; then
    "$bin" -rss_limit_mb=2048 -timeout=10 "$here/regressions/$name"/* || exit 1
fi
exec "$bin" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
    -print_final_stats=1 -artifact_prefix="$art/" "$@" "$corpus"
