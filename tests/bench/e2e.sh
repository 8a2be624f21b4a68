#!/bin/sh
# e2e.sh - end-to-end benchmark: anthroxy (Release) against a static upstream that cannot be the
# bottleneck (nginx serving pre-rendered llama-server answers, static-upstream/run.sh), loaded
# with wrk. Prints, per case: requests/s, latency (avg, p50, p99), the proxy's CPU time per
# request (from /proc/PID/stat before and after) and requests/s per core of proxy CPU; the
# added latency of a small request (through the proxy minus straight to the upstream, one
# connection); chunks/s per core for the streaming case.
#
#   tests/bench/e2e.sh                       all cases, 5 s each
#   DURATION=10 CONNS=64 tests/bench/e2e.sh  longer runs, more connections
#   POLICIES=off tests/bench/e2e.sh          only the policies-off pass (default: both)
#   ANTHROXY_BIN=path tests/bench/e2e.sh     use that binary instead of building Release
#   KEEP=1 tests/bench/e2e.sh                keep the temporary directory (logs, wrk output)
#   WORKERS=2 tests/bench/e2e.sh             only the 80 KB Claude Code request (W2), with
#                                            --workers 1 and then --workers N, in one run, and
#                                            the ratio of their requests/s
#
# Needs wrk and nginx (Debian packages; installed when missing and running as root), node (to
# pre-render answers) and cmake. Not part of ctest: it prints figures, it does not pass or fail.
set -eu
root=$(cd "$(dirname "$0")/../.." && pwd)
duration=${DURATION:-5}
conns=${CONNS:-32}
chunks=${CHUNKS:-4000}
log_level=${LOG_LEVEL:-INFO}
policies=${POLICIES:-both}
build=${BUILD_DIR:-$root/build-bench}

need() {
    command -v "$1" >/dev/null 2>&1 && return 0
    [ "$(id -u)" = 0 ] || { echo "e2e.sh: $1 is missing (apt-get install $2)" >&2; exit 1; }
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$2" >&2 ||
        { apt-get update >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$2" >&2; }
}
need wrk wrk
need cmake cmake

if [ -n "${ANTHROXY_BIN:-}" ]; then
    bin=$ANTHROXY_BIN           # a binary built elsewhere (then no Release build here)
else
    echo "== building Release in $build" >&2
    cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release >/dev/null
    cmake --build "$build" -j2 --target anthroxy >/dev/null
    cmake --build "$build" -j2 --target bench_json >/dev/null 2>&1 || true
    bin=$build/anthroxy
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/anthroxy-bench.XXXXXX")
pids=""
cleanup() {
    for p in $pids; do kill "$p" 2>/dev/null || true; done
    "$root/tests/bench/static-upstream/run.sh" stop "$tmp/upstream" 2>/dev/null || true
    if [ -n "${KEEP:-}" ]; then echo "kept $tmp" >&2; else rm -rf "$tmp"; fi
}
trap cleanup EXIT INT TERM

"$root/tests/bench/static-upstream/run.sh" start "$tmp/upstream" 0 "$chunks" >&2
uport=$(cat "$tmp/upstream/port")

# Bodies: a small request, Claude Code's ~80 KB first turn without streaming, a small stream.
node -e '
const fs = require("fs");
const [dir, fixture] = process.argv.slice(1);
const small = { model: "claude-sonnet-4-5", max_tokens: 64,
  messages: [{ role: "user", content: "Hello there, what is the weather in Paris?" }] };
fs.writeFileSync(dir + "/small.json", JSON.stringify(small));
fs.writeFileSync(dir + "/stream.json", JSON.stringify({ ...small, stream: true }));
const big = JSON.parse(fs.readFileSync(fixture, "utf8"));
big.stream = false;
fs.writeFileSync(dir + "/big.json", JSON.stringify(big));
' "$tmp" "$root/tests/fixtures/claude-code/first-turn.json"
echo 'return {}' > "$tmp/no-policies.lua"

for b in small big stream; do
    cat > "$tmp/$b.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["anthropic-version"] = "2023-06-01"
local f = assert(io.open("$tmp/$b.json", "rb"))
wrk.body = f:read("*a")
f:close()
LUA
done

clk=$(getconf CLK_TCK)
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }

# start_proxy NAME BASE [ARGS...]: starts anthroxy, sets $proxy_pid and $proxy_port.
start_proxy() {
    name=$1; base=$2; shift 2
    "$bin" --port 0 --upstream "$base" --log-level "$log_level" --max-upstream 1024 "$@" \
        2> "$tmp/$name.log" &
    proxy_pid=$!
    pids="$pids $proxy_pid"
    i=0
    while :; do
        proxy_port=$(sed -n 's/.*listening on http:\/\/127\.0\.0\.1:\([0-9]*\).*/\1/p' "$tmp/$name.log" | head -n 1)
        [ -n "$proxy_port" ] && break
        i=$((i + 1))
        if [ $i -gt 100 ] || ! kill -0 "$proxy_pid" 2>/dev/null; then
            echo "anthroxy did not start:" >&2; cat "$tmp/$name.log" >&2; exit 1
        fi
        sleep 0.1
    done
}

stop_proxy() {
    hwm=$(awk '/^VmHWM/ { print $2 }' "/proc/$proxy_pid/status" 2>/dev/null || echo '?')
    echo "  (proxy peak RSS over these runs: ${hwm} KiB)"
    kill -TERM "$proxy_pid" 2>/dev/null || true
    wait "$proxy_pid" 2>/dev/null || true
}

# run_case LABEL URL BODY CONNS PID CHUNKS_PER_REQUEST: one wrk run, one line of figures.
printf '%-34s %10s %9s %9s %9s %12s %12s %s\n' case req/s avg p50 p99 cpu-us/req req/s/core notes
run_case() {
    label=$1; url=$2; body=$3; c=$4; pid=$5; per=$6
    # Warm-up: connections, the upstream pool, the allocator.
    wrk -t1 -c"$c" -d1s -s "$tmp/$body.lua" "$url" >/dev/null 2>&1 || true
    t0=0
    [ "$pid" != - ] && t0=$(cpu_ticks "$pid")
    wrk -t1 -c"$c" -d"${duration}s" --latency -s "$tmp/$body.lua" "$url" > "$tmp/wrk.out" 2>&1 || true
    t1=0
    [ "$pid" != - ] && t1=$(cpu_ticks "$pid")
    awk -v label="$label" -v t0="$t0" -v t1="$t1" -v clk="$clk" -v per="$per" -v pid="$pid" '
        function us(v) {   # wrk prints 812.00us, 1.23ms, 2.00s
            if (v ~ /us$/) return v + 0;
            if (v ~ /ms$/) return (v + 0) * 1000;
            if (v ~ /s$/) return (v + 0) * 1000000;
            return v + 0;
        }
        /^ +Latency/ && !avg { avg = $2 }
        /^ +50%/ { p50 = $2 }
        /^ +99%/ { p99 = $2 }
        / requests in / { n = $1 }
        /^Requests\/sec:/ { rps = $2 }
        /Non-2xx/ { bad = $NF }
        /Socket errors/ { serr = $0 }
        END {
            cpu = (t1 - t0) / clk;
            note = "";
            if (bad) note = note " NON-2XX=" bad;
            if (serr) note = note " " serr;
            if (per > 1 && cpu > 0) note = note sprintf(" chunks/s/core=%.0f", n * per / cpu);
            if (pid == "-") printf "%-34s %10.0f %9s %9s %9s %12s %12s%s\n", label, rps, avg, p50, p99, "-", "-", note;
            else printf "%-34s %10.0f %9s %9s %9s %12.1f %12.0f%s\n", label, rps, avg, p50, p99,
                cpu * 1e6 / (n ? n : 1), (cpu > 0 ? n / cpu : 0), note;
        }' "$tmp/wrk.out"
    if grep -q "Non-2xx" "$tmp/wrk.out"; then echo "  (see $label: some answers were errors)" >&2; fi
}

if [ -n "${WORKERS:-}" ]; then
    for w in 1 "$WORKERS"; do
        start_proxy "json-w$w" "http://127.0.0.1:$uport/json/v1" --workers "$w"
        url="http://127.0.0.1:$proxy_port/v1/messages"
        run_case "[workers $w] claude-code 80KB, c$conns" "$url" big "$conns" "$proxy_pid" 1 |
            tee "$tmp/w$w.line"
        stop_proxy
    done
    awk 'NR == FNR { a = $6; next } { b = $6 } END {
        if (a > 0) printf "workers %s vs 1: %.2fx requests/s\n", w, b / a }' w="$WORKERS" \
        "$tmp/w1.line" "$tmp/w$WORKERS.line"
    exit 0
fi

direct_small="http://127.0.0.1:$uport/json/v1/chat/completions"
run_case "upstream direct, small, c1" "$direct_small" small 1 - 1
run_case "upstream direct, small, c$conns" "$direct_small" small "$conns" - 1

passes="default off"
[ "$policies" = off ] && passes=off
[ "$policies" = default ] && passes=default
for pass in $passes; do
    if [ "$pass" = off ]; then pargs="--policies $tmp/no-policies.lua"; else pargs=""; fi
    # shellcheck disable=SC2086
    start_proxy "json-$pass" "http://127.0.0.1:$uport/json/v1" $pargs
    url="http://127.0.0.1:$proxy_port/v1/messages"
    run_case "[$pass] small, c1" "$url" small 1 "$proxy_pid" 1
    run_case "[$pass] small, c$conns" "$url" small "$conns" "$proxy_pid" 1
    run_case "[$pass] claude-code 80KB, c1" "$url" big 1 "$proxy_pid" 1
    run_case "[$pass] claude-code 80KB, c$conns" "$url" big "$conns" "$proxy_pid" 1
    stop_proxy
    # shellcheck disable=SC2086
    start_proxy "sse-$pass" "http://127.0.0.1:$uport/sse/v1" $pargs
    url="http://127.0.0.1:$proxy_port/v1/messages"
    run_case "[$pass] stream $chunks chunks, c1" "$url" stream 1 "$proxy_pid" "$chunks"
    run_case "[$pass] stream $chunks chunks, c$conns" "$url" stream "$conns" "$proxy_pid" "$chunks"
    stop_proxy
done

echo
echo "added latency (small, c1) = proxy avg - upstream direct avg, from the first and third lines."
echo "cpu-us/req is the proxy's user+system CPU per completed request; req/s/core = requests per proxy CPU second."
if [ -x "$build/tests/bench_json" ]; then
    echo "== cJSON alone vs anthroxy's request-side work on the Claude Code body (same run):"
    "$build/tests/bench_json"
fi
