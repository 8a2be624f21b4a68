#!/usr/bin/env bash
# tests/fuzz/seed.sh TARGET DIR - fills DIR with TARGET's seed corpus: the committed seeds in
# tests/fuzz/seeds/TARGET/ and the fixtures that fit it (generated here, not committed).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
fx="$here/../fixtures"
target=$1 dir=$2
mkdir -p "$dir"
[ -d "$here/seeds/$target" ] && cp "$here/seeds/$target"/* "$dir"/ 2>/dev/null || true
[ -d "$here/regressions/$target" ] && cp "$here/regressions/$target"/* "$dir"/ 2>/dev/null || true
copy() { local f; for f in "$@"; do [ -f "$f" ] && cp "$f" "$dir/$(basename "$(dirname "$f")")_$(basename "$f")"; done; return 0; }
case $target in
fuzz_request)
    copy "$fx"/translate/*.anthropic.json "$fx"/claude-code/*.json "$fx"/claude-code/*/*.json ;;
fuzz_response)
    copy "$fx"/translate/*.openai-response.json "$fx"/llama-server/error_*.json
    # the recorded non-streaming answers' bodies
    for f in "$fx"/llama-server/chat_nonstream*.json; do
        node -e 'const j=require(process.argv[1]); process.stdout.write(JSON.stringify(j.body ?? j.response ?? j))' \
            "$f" > "$dir/body_$(basename "$f")" 2>/dev/null || true
    done ;;
fuzz_stream)
    copy "$fx"/streams/*.openai.sse ;;
fuzz_sse)
    # a first byte (the line cap and split step), then the stream
    for f in "$fx"/streams/*.sse; do
        { printf '\x4f'; cat "$f"; } > "$dir/$(basename "$f")"
    done ;;
fuzz_json_scan)
    copy "$fx"/translate/*.json
    for f in "$fx"/streams/*.openai.sse; do
        grep '^data: {' "$f" | head -5 | sed 's/^data: //' | split -l 1 - "$dir/$(basename "$f")." || true
    done ;;
fuzz_view)
    # a script length, script bytes, then the request
    i=0
    for f in "$fx"/translate/*.anthropic.json; do
        i=$((i + 1))
        { printf '\x0c\x00\x00\x00\x01\x02\x05\x03\x07\x05\x02\x06\x0%d' $((i % 2)); cat "$f"; } \
            > "$dir/$(basename "$f")"
    done ;;
fuzz_toolcall_text)
    copy "$fx"/toolcall_text/*.json ;;
fuzz_http|fuzz_config) ;;
*) echo "seed.sh: unknown target $target" >&2; exit 1 ;;
esac
