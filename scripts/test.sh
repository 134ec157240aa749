#!/usr/bin/env bash
# The test command: installs what is missing, builds, and runs the default test suite
# (everything except the labels slow, bench and gpu), after a short fuzzing pass.
#   bash scripts/test.sh
# The llama.cpp reference (npm) is set up on the way; if it cannot be had, the tests
# that need it skip and say so.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if ! bash scripts/setup_reference.sh; then
  echo "test: the llama.cpp reference could not be set up; reference tests will be skipped"
fi
MESA_WERROR=ON bash scripts/build.sh
if [ "${MESA_SKIP_FUZZ:-0}" != "1" ]; then
  bash scripts/run_fuzzers.sh "${MESA_FUZZ_SECONDS:-15}"
fi
ctest --preset release
