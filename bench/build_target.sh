# Sourced by the bench scripts: bench_build_target TARGET SUBDIR configures $BUILD_DIR
# (Release) when it has no build files yet, builds TARGET in it and prints the built
# binary's path ($BUILD_DIR/SUBDIR/TARGET); progress and errors go to stderr, and a
# failed build or a missing binary exits the script. Needs ROOT and BUILD_DIR.
bench_build_target() {
  local target="$1" subdir="$2"
  if [ ! -f "$BUILD_DIR/build.ninja" ] && [ ! -f "$BUILD_DIR/Makefile" ]; then
    echo "configuring $BUILD_DIR" >&2
    cmake -S "$ROOT" -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release >&2 || exit 1
  fi
  echo "building $target in $BUILD_DIR" >&2
  cmake --build "$BUILD_DIR" --target "$target" -j "$(nproc)" >&2 || exit 1
  local bin="$BUILD_DIR/$subdir/$target"
  [ -x "$bin" ] || { echo "ERROR: $bin not built" >&2; exit 1; }
  echo "$bin"
}
