#!/usr/bin/env bash
# Installs every system dependency of Mesa from Debian bookworm packages.
# Run as root (or with sudo available). Safe to run again.
set -euo pipefail
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
PKGS=(
  cmake g++ ninja-build pkg-config ccache openssh-client git
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler libabsl-dev
  libopenmpi-dev openmpi-bin libgtest-dev libgmock-dev libbenchmark-dev
  slurm-wlm munge
  nlohmann-json3-dev libcli11-dev libspdlog-dev libfmt-dev libsqlite3-dev
  libhwy-dev libopenblas-dev python3 python3-numpy python3-yaml gnuplot-nox
  clang libclang-rt-14-dev
  openssl libssl-dev  # TLS: PEM checks (rpc/), test certificates (scripts/make_test_certs.sh)
  prometheus-cpp-dev libcpp-httplib-dev python3-prometheus-client
)
# npm (for the llama.cpp reference) may come from another Node.js install.
command -v npm >/dev/null 2>&1 || PKGS+=(nodejs npm)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  echo "setup: all system packages present"
fi
