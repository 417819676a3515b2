#!/usr/bin/env bash
# Host packages aios needs: clang/llvm to build BPF (clang-19 too where the suite has it: bookworm's
# default clang 14 cannot emit the BTF type tags upstream sched_ext schedulers use, e.g. __kptr; and
# clang-22 where the suite has it (bookworm-security does): clang 19 miscompiles 7.2's scx_qmap arena code,
# reusing an arena pointer without its addr_space_cast, which the kernel verifier refuses), gcc for
# the static guest workloads, qemu for the micro-VM, bpftool to dump vmlinux.h, libbpf for the host-mode loader, the archive keyring for the
# private apt configuration that fetches guest packages (never installed on the host), bubblewrap for the
# namespace sandbox of the python tool (aios/kernel/sandbox.py).
# Idempotent: installs only what is missing (and runs `apt-get update` only then).
set -euo pipefail
pkgs=(clang llvm binutils gcc qemu-system-x86 bpftool libbpf1 zstd cpio debian-archive-keyring bubblewrap)
if apt-cache show clang-19 >/dev/null 2>&1; then pkgs+=(clang-19); fi
if apt-cache show clang-22 >/dev/null 2>&1; then pkgs+=(clang-22); fi
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
