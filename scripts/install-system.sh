#!/usr/bin/env bash
# Host packages aios needs: clang/llvm to build BPF, qemu for the micro-VM, bpftool to dump
# vmlinux.h, busybox for the guest's shell, libbpf for the host-mode loader.
# Idempotent: installs only what is missing (and runs `apt-get update` only then).
set -euo pipefail
pkgs=(clang llvm qemu-system-x86 bpftool busybox-static libbpf1 zstd cpio)
missing=()
for p in "${pkgs[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "system packages: all present"
  exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "system packages: installing ${missing[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
