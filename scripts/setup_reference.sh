#!/usr/bin/env bash
# Sets up the outside reference for Mesa's CPU forward pass: llama.cpp as shipped
# by node-llama-cpp@3.22.1 on npm (source as a git bundle, prebuilt linux-x64
# shared libraries). Idempotent: a second run only checks what is there.
#
# Layout of ${MESA_LLAMACPP_DIR:-$HOME/.cache/mesa/llamacpp-3.22.1}:
#   npm/*.tgz      the two packages as `npm pack` wrote them
#   pkg/ lx/       the extracted packages
#   src/           llama.cpp work tree cloned from the bundle (include/, ggml/include/)
#   lib/           prebuilt libllama.v0.5.0.so, libggml*.so (+ CPU variants)
#   READY          marker written last; its presence means the cache is complete
# Exit status: 0 ready, 1 could not set up (no npm, no network, ...). Tests that
# need the reference skip with a message when it is absent.
set -euo pipefail

VERSION=3.22.1
DIR="${MESA_LLAMACPP_DIR:-$HOME/.cache/mesa/llamacpp-${VERSION}}"
say() { echo "setup_reference: $*"; }
fail() { echo "setup_reference: ERROR: $*" >&2; exit 1; }

complete() {
  [ -f "$DIR/READY" ] && [ -f "$DIR/src/include/llama.h" ] &&
    [ -f "$DIR/src/ggml/include/ggml.h" ] && [ -f "$DIR/lib/libllama.v0.5.0.so" ] &&
    [ -f "$DIR/lib/libggml.v0.5.0.so" ] && [ -f "$DIR/lib/libggml-base.so" ]
}

if complete; then
  say "reference already present in $DIR (nothing downloaded)"
  exit 0
fi

mkdir -p "$DIR/npm"
cd "$DIR"

# 1. Download the two packages (only the npm registry is needed).
main_tgz="npm/node-llama-cpp-${VERSION}.tgz"
lx_tgz="npm/node-llama-cpp-linux-x64-${VERSION}.tgz"
if [ -f "$main_tgz" ] && [ -f "$lx_tgz" ]; then
  say "packages already downloaded in $DIR/npm"
else
  command -v npm >/dev/null 2>&1 || fail "npm not found (install nodejs/npm, see scripts/setup.sh)"
  say "downloading node-llama-cpp@${VERSION} and @node-llama-cpp/linux-x64@${VERSION} from npm"
  # Few, short retries: without network, fail in seconds rather than minutes.
  if ! (cd npm && npm pack --loglevel=error --fetch-retries=1 --fetch-retry-mintimeout=2000 \
          --fetch-retry-maxtimeout=10000 "node-llama-cpp@${VERSION}" \
          "@node-llama-cpp/linux-x64@${VERSION}" >/dev/null 2>npm-pack.log); then
    tail -n 5 npm/npm-pack.log >&2 || true
    rm -f "$main_tgz" "$lx_tgz"
    fail "npm pack failed (no network or registry unreachable?); the reference tests will skip"
  fi
  [ -f "$main_tgz" ] && [ -f "$lx_tgz" ] || fail "npm pack did not produce the expected files"
fi

# 2. Extract.
if [ ! -f pkg/package/llama/gitRelease.bundle ]; then
  say "extracting $main_tgz"
  rm -rf pkg && mkdir pkg && tar -xzf "$main_tgz" -C pkg
fi
if [ ! -f lx/package/bins/linux-x64/libllama.v0.5.0.so ]; then
  say "extracting $lx_tgz"
  rm -rf lx && mkdir lx && tar -xzf "$lx_tgz" -C lx
fi

# 3. Source work tree from the bundle.
if [ ! -f src/include/llama.h ]; then
  command -v git >/dev/null 2>&1 || fail "git not found"
  say "cloning the llama.cpp source bundle into $DIR/src"
  rm -rf src
  git -c advice.detachedHead=false clone --quiet pkg/package/llama/gitRelease.bundle src ||
    fail "git clone of the bundle failed"
fi

# 4. Prebuilt libraries (CPU variants are loaded at run time from this folder).
say "installing prebuilt libraries into $DIR/lib"
rm -rf lib && mkdir lib
cp lx/package/bins/linux-x64/*.so lib/
cp lx/package/bins/linux-x64/_nlcBuildMetadata.json lib/ 2>/dev/null || true

complete_files_ok=1
for f in src/include/llama.h src/ggml/include/ggml.h lib/libllama.v0.5.0.so \
         lib/libggml.v0.5.0.so lib/libggml-base.so; do
  [ -f "$f" ] || { echo "setup_reference: missing $f" >&2; complete_files_ok=0; }
done
[ "$complete_files_ok" = 1 ] || fail "the packages did not contain what was expected"

date -u +%Y-%m-%dT%H:%M:%SZ > READY
say "reference ready in $DIR"
say "  headers: $DIR/src/include, $DIR/src/ggml/include"
say "  libs:    $DIR/lib ($(ls lib | tr '\n' ' '))"
say "configure Mesa with -DMESA_LLAMACPP_DIR=$DIR to build mesa_llama_ref"
