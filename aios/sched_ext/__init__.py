"""sched_ext toolchain: micro-VM sandbox, BPF build, staged verifier and loaders.

Nothing here loads an unverified scheduler on the host: verification and
measurement run inside a qemu micro-VM (see ``vm.py``).
"""
