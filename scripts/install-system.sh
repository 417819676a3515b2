#!/usr/bin/env bash
# Host packages aios needs: clang/llvm to build BPF (clang-19 too where the suite has it: bookworm's
# default clang 14 cannot emit the BTF type tags upstream sched_ext schedulers use, e.g. __kptr; and
# clang-22 where the suite has it (bookworm-security does): clang 19 miscompiles 7.2's scx_qmap arena code,
# reusing an arena pointer without its addr_space_cast, which the kernel verifier refuses), gcc for
# the static guest workloads, qemu for the micro-VM, bpftool to dump vmlinux.h, libbpf for the host-mode loader, the archive keyring for the
# private apt configuration that fetches guest packages (never installed on the host), bubblewrap for the
# namespace sandbox of the python tool (aios/kernel/sandbox.py), g++ and ninja for the LLM core's C++
# attention kernel (aios/kernel/csrc/attention.cpp, built by torch on first use).
# Idempotent: installs only what is missing (and runs `apt-get update` only then).
set -euo pipefail
pkgs=(clang llvm binutils gcc qemu-system-x86 bpftool libbpf1 zstd cpio debian-archive-keyring bubblewrap g++ ninja-build)
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
# clang-22 arrived in bookworm-security after the machine image was made: package lists from before
# that do not know it, so refresh them once when it is neither installed nor known (a fresh CI
# machine); without it, scx_qmap does not pass the kernel verifier (see the header).
if ! dpkg -s clang-22 >/dev/null 2>&1 && ! apt-cache show clang-22 >/dev/null 2>&1; then
  echo "system packages: clang-22 unknown to apt, refreshing the package lists"
  $SUDO apt-get update -qq || true
fi
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
echo "system packages: installing ${missing[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
