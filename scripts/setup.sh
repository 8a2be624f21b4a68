# scripts/setup.sh - sourced by run.sh and test.sh: installs what is missing on a Debian 12
# machine (Debian packages, Node.js and npm only when the commands are absent) and builds.
# Usage: ax_setup_packages [extra packages...]; ax_build DIR [cmake args...]
set -euo pipefail

AX_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
AX_PACKAGES=(build-essential cmake pkg-config libuv1-dev liblua5.4-dev libcjson-dev
             libcurl4-openssl-dev node-llhttp gnuplot-nox libhiredis-dev
             redis-server haproxy)

ax_sudo() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

ax_setup_packages() {
    local missing=() p
    for p in "${AX_PACKAGES[@]}" "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        echo "setup: installing ${missing[*]}" >&2
        ax_sudo apt-get update -qq
        ax_sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
    fi
}

# Node.js and npm for the test clients. Check the commands, not package names: some
# machines have a Node from elsewhere whose package conflicts with Debian's npm.
ax_setup_node() {
    local need=()
    command -v node >/dev/null 2>&1 || need+=(nodejs)
    command -v npm >/dev/null 2>&1 || need+=(npm)
    if [ ${#need[@]} -gt 0 ]; then
        echo "setup: installing ${need[*]}" >&2
        ax_sudo apt-get update -qq
        ax_sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >&2
    fi
    # npm ci only when what is installed is not what the lockfile pins (npm keeps its own
    # record of the install in node_modules/.package-lock.json): a re-run skips it.
    (cd "$AX_ROOT/tests/integration" &&
        if [ -d node_modules ] && [ ! -L node_modules ] &&
            node -e 'const a = require("./package-lock.json").packages, b = require("./node_modules/.package-lock.json").packages;
                     for (const k of Object.keys(a)) if (k && !a[k].optional && (!b[k] || b[k].version !== a[k].version)) process.exit(1);' 2>/dev/null; then
            :
        else
            npm ci --no-audit --no-fund --loglevel=error >&2
        fi)
}

ax_build() {
    local dir=$1
    shift
    cmake -S "$AX_ROOT" -B "$dir" "$@" >&2
    cmake --build "$dir" -j"$(nproc)" >&2
}
