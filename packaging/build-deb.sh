#!/bin/sh
# build-deb.sh [OUTDIR] - builds the Debian packages from this tree without writing beside it:
# the tracked and new (not ignored) files are copied to OUTDIR/anthroxy-VERSION, where
# dpkg-buildpackage -b -us -uc runs; the .deb files land in OUTDIR (default: a temp dir).
# Needs the build dependencies of debian/control (apt-get build-dep ./ or scripts/setup.sh).
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$(mktemp -d /tmp/anthroxy-deb.XXXXXX)}
version=$(dpkg-parsechangelog -l "$root/debian/changelog" -S Version)
src="$out/anthroxy-$version"
rm -rf "$src"
mkdir -p "$src"
(cd "$root" && git ls-files -co --exclude-standard -z | xargs -0 cp --parents -t "$src")
(cd "$src" && dpkg-buildpackage -b -us -uc)
ls "$out"/*.deb
