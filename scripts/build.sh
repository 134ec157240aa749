#!/usr/bin/env bash
# Configures and builds Mesa with the release preset (Ninja, ccache when present).
set -euo pipefail
cd "$(dirname "$0")/.."
# ccache: paths relative to the checkout, so a clone elsewhere (CI) reuses the cache.
export CCACHE_BASEDIR="${CCACHE_BASEDIR:-$PWD}" CCACHE_NOHASHDIR=1
# MESA_WERROR=ON (scripts/test.sh, CI on gcc 12): warnings in Mesa's own code are errors.
cmake --preset release -DMESA_WERROR="${MESA_WERROR:-OFF}" >/dev/null
cmake --build --preset release -j "${MESA_BUILD_JOBS:-$(nproc)}"
