#!/usr/bin/env bash
# Builds anthroxy and runs it with the default policies. Flags are passed on, e.g.
#   scripts/run.sh --upstream http://127.0.0.1:8080/v1 --port 4000
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
ax_setup_packages
ax_build "$AX_ROOT/build" -DCMAKE_BUILD_TYPE=Release
exec "$AX_ROOT/build/anthroxy" "$@"
