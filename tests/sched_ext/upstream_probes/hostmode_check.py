"""Run inside the micro-VM by test_sx_upstream.py: aios's host-mode loader on a kernel with sched_ext.

argv: OBJECT SOURCE VERDICT_JSON.  Prints one JSON document: the refusals it saw, the load plan it
applied from this kernel's BTF, the sched_ext state before, while loaded and after unload, the
scheduler's work counted by the kernel, and the exit record read after unload.
"""

import json
import os
import sys
import time
import types
from pathlib import Path

from aios.sched_ext.libbpf import HostModeRefused, HostScheduler

obj, source, verdict_file = sys.argv[1:4]
v = json.loads(Path(verdict_file).read_text())
verdict = types.SimpleNamespace(ok=v["ok"], facts={"object_sha256": v["object_sha256"]}, source=source)
out: dict = {"refused": {}}

for label, bad in (("unverified", None),
                   ("other_bytes", types.SimpleNamespace(ok=True, facts={"object_sha256": "0" * 64}, source=source))):
    try:
        HostScheduler(obj, verified=bad).load()
        out["refused"][label] = ""
    except HostModeRefused as e:
        out["refused"][label] = str(e)

s = HostScheduler(obj, verified=verdict)
out["before"] = s.state().model_dump()
s.load()
out["plan"] = s.plan.facts()
out["loaded"] = s.state().model_dump()
pids = []
for _ in range(4):  # some work for the scheduler to schedule
    pid = os.fork()
    if pid == 0:
        n = 0
        for i in range(200000):
            n += i
        os._exit(0)
    pids.append(pid)
for pid in pids:
    os.waitpid(pid, 0)
time.sleep(0.2)
out["during"] = s.state().model_dump()
out["exit_while_loaded"] = s.exit_info()
out["exit_after_unload"] = s.unload()
out["after"] = s.state().model_dump()
print("@@HOSTMODE " + json.dumps(out))
