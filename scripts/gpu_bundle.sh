#!/usr/bin/env bash
# Packs what a device machine needs to run scripts/device_check.sh into .gpu-bundle/
# (ignored by git; name it in the device tool's `carry`). Built here, run there: the
# device image has the NVIDIA driver, CUDA 13's cuBLAS/NCCL, PyTorch and CMake, but not
# Debian's gRPC, protobuf, abseil, SQLite or MPI, so those travel as files.
#
#   .gpu-bundle/build/...   stripped copies of mesa, libmesa_cuda.so, gpu_bench,
#                           mesa_make_random_model and every gpu-labelled test binary,
#                           at their paths under the build directory
#   .gpu-bundle/lib/        the shared libraries they load that are neither glibc's,
#                           the compiler's runtime, nor CUDA's big ones (cuBLAS, cuBLASLt,
#                           NCCL and the driver come from the device image; libcudart,
#                           0.7 MB, travels)
#   .gpu-bundle/shared/     the two small shared models the tests read (../shared does
#                           not travel)
#   .gpu-bundle/gpu_tests.json  ctest's list of the gpu-labelled tests (show-only
#                           json-v1), which device_check.sh turns back into a ctest run
#   .gpu-bundle/MANIFEST.txt    commit, build, sizes
#
# Usage: scripts/gpu_bundle.sh [--build-dir build/release] [--out .gpu-bundle] [--build]
#   --build  first builds everything in the build directory (gpu test binaries are only
#            listed by ctest once built); without it, missing binaries are an error.
# Size limit: the device tool carries at most 64 MiB with the working tree; this script
# fails above 56 MiB.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="$ROOT/build/release"
OUTDIR="$ROOT/.gpu-bundle"
DO_BUILD=0
SHARED="${MESA_SHARED_DIR:-$ROOT/../shared}"
LIMIT_MIB=56

die() { echo "gpu_bundle: ERROR: $*" >&2; exit 1; }
usage() { sed -n '2,28p' "$0"; exit "${1:-0}"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --build-dir) BUILD="$(cd "$2" && pwd)"; shift 2 ;;
    --out) OUTDIR="$2"; shift 2 ;;
    --build) DO_BUILD=1; shift ;;
    -h|--help) usage 0 ;;
    *) echo "gpu_bundle: unknown argument $1" >&2; usage 2 >&2 ;;
  esac
done
[ -f "$BUILD/CMakeCache.txt" ] || die "no build in $BUILD (run scripts/build.sh first)"
[ -f "$BUILD/kernels/libmesa_cuda.so" ] || [ "$DO_BUILD" = 1 ] ||
  die "$BUILD has no libmesa_cuda.so: configure where the CUDA toolkit is (MESA_WITH_CUDA=ON) and build"
command -v python3 >/dev/null || die "python3 is needed"
if [ "$DO_BUILD" = 1 ]; then
  cmake --build "$BUILD" -j "${MESA_BUILD_JOBS:-2}"
fi
REQUIRED=(client/cli/mesa kernels/libmesa_cuda.so bench/gpu_bench tests/mesa_make_random_model)
for f in "${REQUIRED[@]}"; do
  [ -x "$BUILD/$f" ] || [ -f "$BUILD/$f" ] || die "$BUILD/$f is missing: build it (or pass --build)"
done

rm -rf "$OUTDIR"
mkdir -p "$OUTDIR/build" "$OUTDIR/lib" "$OUTDIR/shared/models"

# The gpu tests, as ctest knows them (paths made relative to the build directory).
ctest --test-dir "$BUILD" -L gpu --show-only=json-v1 >"$OUTDIR/gpu_tests.raw.json" 2>/dev/null ||
  die "ctest could not list the gpu tests in $BUILD"
TEST_BINS="$(python3 - "$BUILD" "$OUTDIR/gpu_tests.raw.json" "$OUTDIR/gpu_tests.json" <<'EOF'
import json, os, sys
build, raw, out = sys.argv[1], sys.argv[2], sys.argv[3]
tests = json.load(open(raw)).get("tests", [])
keep, bins = [], set()
def rel(p):
    p = os.path.normpath(p)
    return "@BUILD@/" + os.path.relpath(p, build) if p == build or p.startswith(build + os.sep) else p
for t in tests:
    cmd = t.get("command") or []
    if not cmd:
        continue
    props = {p["name"]: p["value"] for p in t.get("properties", [])}
    exe = os.path.normpath(cmd[0])
    if not exe.startswith(build + os.sep):
        sys.exit(f"gpu test {t['name']} runs {exe}, outside the build directory")
    bins.add(os.path.relpath(exe, build))
    keep.append({"name": t["name"], "command": [rel(c) if c.startswith("/") else c for c in cmd],
                 "working_directory": rel(props.get("WORKING_DIRECTORY", build)),
                 "environment": props.get("ENVIRONMENT", []),
                 "timeout": props.get("TIMEOUT"),
                 "labels": props.get("LABELS", []),
                 "skip_regular_expression": props.get("SKIP_REGULAR_EXPRESSION", [])})
json.dump({"tests": keep}, open(out, "w"), indent=1)
print("\n".join(sorted(bins)))
EOF
)"
rm -f "$OUTDIR/gpu_tests.raw.json"
[ -n "$TEST_BINS" ] || echo "gpu_bundle: warning: ctest lists no gpu tests in $BUILD (build the test targets first)" >&2

# Binaries: stripped copies at their build paths.
BINS=("${REQUIRED[@]}")
while IFS= read -r b; do [ -n "$b" ] && BINS+=("$b"); done <<<"$TEST_BINS"
for b in "${BINS[@]}"; do
  mkdir -p "$OUTDIR/build/$(dirname "$b")"
  cp "$BUILD/$b" "$OUTDIR/build/$b"
  strip --strip-unneeded "$OUTDIR/build/$b" 2>/dev/null || true
done

# Their shared libraries, minus what every Linux or the device image has.
is_system_lib() {
  case "$(basename "$1")" in
    libc.so*|libm.so*|libdl.so*|libpthread.so*|librt.so*|ld-linux*|libstdc++.so*|libgcc_s.so*|\
    libcuda.so*|libcublas.so*|libcublasLt.so*|libnccl.so*|linux-vdso*) return 0 ;;
  esac
  return 1
}
missing=""
for b in "${BINS[@]}"; do
  while read -r name arrow path _; do
    [ "$arrow" = "=>" ] || continue
    if [ "$path" = "not" ]; then missing="$missing $name"; continue; fi
    is_system_lib "$name" && continue
    [ -f "$OUTDIR/lib/$name" ] || cp -L "$path" "$OUTDIR/lib/$name"
  done < <(ldd "$BUILD/$b" 2>/dev/null || true)
done
[ -z "$missing" ] || die "libraries not found for the bundled binaries here:$missing"

for m in stories260K-f32.gguf tinystories-656k-f32.gguf; do
  if [ -f "$SHARED/models/$m" ]; then cp "$SHARED/models/$m" "$OUTDIR/shared/models/"; else
    echo "gpu_bundle: warning: $SHARED/models/$m not found; tests that need it will skip" >&2; fi
done

size_b=$(du -sb "$OUTDIR" | cut -f1)
{
  echo "commit: $(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)$(git -C "$ROOT" diff --quiet 2>/dev/null || echo ' (uncommitted changes)')"
  echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(. /etc/os-release && echo "$PRETTY_NAME"), $(uname -m)"
  echo "cuda: $(grep -m1 -o 'CMAKE_CUDA_COMPILER_VERSION "[^"]*"' "$BUILD"/CMakeFiles/*/CMakeCUDACompiler.cmake 2>/dev/null)"
  echo "cuda code: $(grep -o 'arch=compute_[0-9a-z]*,code=[^ ]*' "$BUILD/build.ninja" | sort -u | tr '\n' ' ')"
  echo "glibc needed: $(objdump -T "$OUTDIR"/build/client/cli/mesa 2>/dev/null | grep -o 'GLIBC_[0-9.]*' | sort -Vu | tail -1)"
  echo "size: $((size_b / 1048576)) MiB"
  echo "binaries:"; printf '  %s\n' "${BINS[@]}"
  echo "libraries:"; (cd "$OUTDIR/lib" && ls | sed 's/^/  /')
} >"$OUTDIR/MANIFEST.txt"
[ "$size_b" -le $((LIMIT_MIB * 1048576)) ] ||
  die "the bundle is $((size_b / 1048576)) MiB, over ${LIMIT_MIB} MiB (the device tool carries 64 MiB with the tree)"
echo "gpu_bundle: $OUTDIR ($((size_b / 1048576)) MiB, ${#BINS[@]} binaries, $(ls "$OUTDIR/lib" | wc -l) libraries)"
echo "gpu_bundle: carry [\"$(basename "$OUTDIR")\"] and run: bash scripts/device_check.sh"
