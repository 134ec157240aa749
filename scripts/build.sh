#!/usr/bin/env bash
# Configures and builds Mesa with the release preset (Ninja, ccache when present).
set -euo pipefail
cd "$(dirname "$0")/.."
cmake --preset release >/dev/null
cmake --build --preset release -j "${MESA_BUILD_JOBS:-$(nproc)}"
