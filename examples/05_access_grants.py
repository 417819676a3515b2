"""Access grants: each agent owns its memory, storage and files; others need a grant.

    python examples/05_access_grants.py

No LLM call here, so no model is loaded.
"""

import aios

with aios.Kernel() as kernel:
    with aios.agent_context(kernel, "alice"):
        aios.storage_put("notes", "Alice's project notes: launch on Friday.")

    with aios.agent_context(kernel, "bob"):
        try:
            aios.storage_get("notes", owner="alice")
        except aios.SyscallFailed as exc:
            print("bob before the grant:", exc.error.type)

    with aios.agent_context(kernel, "alice"):
        aios.grant("storage", "notes", "read", to="bob")
        print("alice's grants:", aios.grants())

    with aios.agent_context(kernel, "bob"):
        print("bob after the grant:", aios.storage_get("notes", owner="alice")["content"])

    with aios.agent_context(kernel, "alice"):
        aios.revoke("storage", "notes", "read", frm="bob")

    with aios.agent_context(kernel, "bob"):
        try:
            aios.storage_get("notes", owner="alice")
        except aios.SyscallFailed as exc:
            print("bob after the revoke:", exc.error.type)
