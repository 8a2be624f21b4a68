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
# The regressions first: each must pass, except those listed in KNOWN (open core faults),
# which are reported (take one off the list once its fault is fixed).
status=0
for f in "$here/regressions/$name"/*; do
    [ -f "$f" ] || continue
    rel="$name/$(basename "$f")"
    known=0
    grep -q "^$rel " "$here/KNOWN" && known=1
    if "$bin" -rss_limit_mb=2048 -timeout=10 "$f" >"$art/regression.log" 2>&1; then
        [ $known = 0 ] || echo "fuzz: $rel passes in this build (fixed, or its check is off here: AX_FUZZ_EXTRA_FLAGS)"
    elif [ $known = 1 ]; then
        echo "fuzz: known open fault: $(grep "^$rel " "$here/KNOWN")"
    else
        cat "$art/regression.log"; echo "fuzz: regression $rel fails"; status=1
    fi
done
[ $status = 0 ] || exit 1
# No steering around known faults: a target reaches everything it can (a fault still open
# may be kept out of a run with the fuzz build's AX_FUZZ_EXTRA_FLAGS, -fno-sanitize=<check>).
exec "$bin" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
    -print_final_stats=1 -artifact_prefix="$art/" "$@" "$corpus"
