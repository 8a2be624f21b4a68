#!/bin/sh
# compare.sh - the closing-note figures of two builds, measured in one run: callgrind
# instructions per Claude Code request (no policies, empty chain, default chain; the
# after-tool-call.json body), per stream chunk (bench_stream), and heap and RSS per open
# stream (streams_rss.mjs). Instruction counts are the difference between two iteration
# counts, so start-up cancels out; they repeat exactly for the same binary and input.
#
#   tests/bench/compare.sh BEFORE_BUILD AFTER_BUILD      (Release build directories)
#   STREAMS="200 2000" tests/bench/compare.sh A B        (heap per stream at those counts)
#   STREAMS= tests/bench/compare.sh A B                  (instruction counts only)
#
# A build directory is what `cmake -DCMAKE_BUILD_TYPE=Release` made, with the anthroxy,
# bench_policy and bench_stream targets built. Prints figures; passes or fails nothing.
set -eu
root=$(cd "$(dirname "$0")/../.." && pwd)
[ $# -eq 2 ] || { sed -n '2,13p' "$0" >&2; exit 2; }
before=$(cd "$1" && pwd)
after=$(cd "$2" && pwd)
streams=${STREAMS-200}
command -v valgrind >/dev/null || { echo "compare.sh: valgrind is missing (apt-get install valgrind)" >&2; exit 1; }
tmp=$(mktemp -d "${TMPDIR:-/tmp}/anthroxy-compare.XXXXXX")
trap 'rm -rf "$tmp"' EXIT INT TERM

# instructions of one run of "$@" under callgrind
ir() {
    valgrind --tool=callgrind --callgrind-out-file="$tmp/cg.out" "$@" >/dev/null 2>"$tmp/cg.err" ||
        { cat "$tmp/cg.err" >&2; exit 1; }
    sed -n 's/^==[0-9]*== Collected : //p' "$tmp/cg.err"
}

# instructions per iteration: (Ir(n2) - Ir(n1)) / (n2 - n1)
per() { # build n1 n2 per-unit-divisor bench args-after-n...
    b=$1 n1=$2 n2=$3 div=$4 bench=$5
    shift 5
    i1=$(ir "$b/tests/$bench" "$n1" "$@")
    i2=$(ir "$b/tests/$bench" "$n2" "$@")
    echo "$i1 $i2 $n1 $n2 $div" | awk '{ printf "%.0f", ($2 - $1) / ($4 - $3) / $5 }'
}

row() { # label before after
    echo "$1 $2 $3" | awk '{ printf "%-36s %14s %14s %+8.2f%%\n", $1, $2, $3, ($3 / $2 - 1) * 100 }'
}

chunks=$("$after/tests/bench_stream" 1 | sed -n 's/^stream: \([0-9]*\) chunks.*/\1/p')
echo "instructions (callgrind)                    before          after   change"
for v in none empty chain; do
    row "per_request_$v" "$(per "$before" 20 60 1 bench_policy "$root/policies/default.lua" $v)" \
        "$(per "$after" 20 60 1 bench_policy "$root/policies/default.lua" $v)"
done
row per_stream_chunk "$(per "$before" 2 6 "$chunks" bench_stream)" "$(per "$after" 2 6 "$chunks" bench_stream)"

[ -n "$streams" ] || exit 0
ulimit -n 65536 2>/dev/null || true
echo
echo "memory per open stream (streams_rss.mjs, $streams streams)"
for side in before after; do
    eval b=\$$side
    echo "-- $side"
    ANTHROXY_BIN="$b/anthroxy" node "$root/tests/bench/streams_rss.mjs" $streams
done
