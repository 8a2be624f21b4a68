#!/bin/sh
# install.sh BUILD_DIR SOURCE_DIR - the install test (ctest install/install): cmake --install
# into a temporary prefix, check the files are there (binary, library, headers, lua/,
# policies/, docs, man page), that the man page lists every option of --help, and that the
# installed binary starts with the installed Lua and policies (not the source tree's) and
# answers /health.
set -eu
build=$1
src=$2
prefix=$(mktemp -d /tmp/anthroxy-install.XXXXXX)
log=$prefix/anthroxy.log
pid=
cleanup() {
    [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
    rm -rf "$prefix"
}
trap cleanup EXIT
fail() {
    echo "install test: $*" >&2
    [ -f "$log" ] && tail -20 "$log" >&2
    exit 1
}

cmake --install "$build" --prefix "$prefix" >/dev/null
for f in bin/anthroxy include/anthroxy.h include/anthroxy_config.h include/anthroxy_error.h \
         share/anthroxy/lua/anthroxy/chain.lua share/anthroxy/policies/default.lua \
         share/anthroxy/policies/prune.lua share/man/man1/anthroxy.1 \
         share/doc/anthroxy/operations.md share/doc/anthroxy/configuration.md \
         share/doc/anthroxy/README.md share/doc/anthroxy/LICENSE; do
    [ -e "$prefix/$f" ] || fail "missing $f"
done
ls "$prefix"/lib*/libanthroxy_core.a >/dev/null 2>&1 || fail "missing libanthroxy_core.a"
[ -x "$prefix/bin/anthroxy" ] || fail "bin/anthroxy not executable"

# every option --help lists is in the man page (its source: \- for -)
sed 's/\\-/-/g' "$prefix/share/man/man1/anthroxy.1" > "$prefix/man.txt"
"$prefix/bin/anthroxy" --help | grep -o -- '--[][a-z-]*[a-z]' | sort -u > "$prefix/opts.txt"
[ "$(wc -l < "$prefix/opts.txt")" -gt 40 ] || fail "--help lists too few options"
while read -r opt; do
    grep -qF -- "$opt" "$prefix/man.txt" || fail "the man page lacks $opt (in --help)"
done < "$prefix/opts.txt"

# the installed binary runs with the installed policies: from a directory without the tree
cd "$prefix"
env -u ANTHROXY_LUA_DIR "$prefix/bin/anthroxy" check "$prefix/share/anthroxy/policies/default.lua" \
    > "$log" 2>&1 || fail "anthroxy check on the installed chain failed"
"$prefix/bin/anthroxy" --port 0 --upstream http://127.0.0.1:9/v1 > "$log" 2>&1 &
pid=$!
i=0
until port=$(sed -n 's/.*listening on http:\/\/127\.0\.0\.1:\([0-9]*\).*/\1/p' "$log") && [ -n "$port" ]; do
    i=$((i + 1))
    [ $i -lt 100 ] || fail "the installed binary did not start"
    kill -0 "$pid" 2>/dev/null || fail "the installed binary exited"
    sleep 0.1
done
grep -q "policies: generation 1 loaded from $prefix/share/anthroxy/policies/default.lua" "$log" ||
    fail "policies not loaded from the prefix"
health=$(curl -s "http://127.0.0.1:$port/health") || fail "no answer from /health"
echo "$health" | grep -q "\"lua-dir\":{\"value\":\"$prefix/share/anthroxy/lua\"" ||
    fail "/health does not show the installed lua dir: $health"
kill -TERM "$pid"
wait "$pid" || fail "the installed binary did not exit cleanly"
pid=
echo "install test: ok ($prefix)"
