#!/bin/sh
# Installs the client component of a Mesa build into a temporary prefix, then configures
# and builds an outside CMake project that find_package()s mesaClient and compiles the
# example against mesa::client, and runs it (without arguments: usage, exit 2).
# Usage: install_test.sh BUILD_DIR EXTERNAL_PROJECT_DIR [GENERATOR]
set -eu
build=$1
project=$2
generator=${3:-Ninja}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

cmake --install "$build" --prefix "$work/prefix" --component client
cmake -S "$project" -B "$work/build" -G "$generator" -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_PREFIX_PATH="$work/prefix"
cmake --build "$work/build"
status=0
"$work/build/submit_example" >"$work/out" 2>&1 || status=$?
cat "$work/out"
if [ "$status" -ne 2 ] || ! grep -q "usage:" "$work/out"; then
  echo "install_test: expected the example's usage and exit 2, got exit $status" >&2
  exit 1
fi
echo "install_test: ok"
