"""The LLM kernel: syscalls, agent scheduler, context manager, LLM core and the other managers."""
