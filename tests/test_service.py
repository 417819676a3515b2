"""The kernel as a service, with real parts: ``aios serve`` is a subprocess on the tiny random model
(saved as a model folder), agents are other subprocesses or the official ``openai`` client, and
tokens are minted with ``aios agent add`` against the server's state directory.

What is checked is what the issue asks, judged from recorded state (outputs, audit log, the
victim's data), never from host timing: several agent processes at once give exactly the outputs
of the same agents run in process; the OpenAI endpoint (chat, stream, tools) agrees with the
kernel; attacks over the wire leave the victim's state as it was and leave an audit record.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from _service_agent import Probe
from _service_util import REPO, aios_cli, child_env, mint, start_server, stop_server

import aios
from aios.kernel.identity import AuthenticationFailed, hash_token
from aios.kernel.syscall import SyscallFailed
from aios.service.client import ServiceRefused

openai = pytest.importorskip("openai")

AGENTS = 4
TASKS = [f"Tell me about agent {i} and the weather in Paris." for i in range(AGENTS)]
GUARD_S = 600  # hang guard for one agent process


@pytest.fixture(scope="module")
def model_dir(tiny_lm, tmp_path_factory) -> Path:
    model, tok = tiny_lm
    path = tmp_path_factory.mktemp("svc-model")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def served(model_dir, tmp_path_factory):
    """One ``aios serve`` for the module, with tokens for the probes, a victim, an attacker, an admin."""
    data = tmp_path_factory.mktemp("svc") / "data"
    data.mkdir()
    tokens = {f"agent{i}": mint(data, f"agent{i}") for i in range(AGENTS)}
    tokens.update(alice=mint(data, "alice"), eve=mint(data, "eve"), root=mint(data, "root", "admin"))
    server = start_server(model_dir, data, "--max-body", "65536", "--body-timeout", "2")
    server.tokens = tokens
    yield server
    assert stop_server(server) == 0, server.output()


def post(served, path: str, token: str | None, content: bytes, **headers: str) -> httpx.Response:
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    headers.setdefault("Content-Type", "application/json")
    return httpx.post(served.url + path, content=content, headers=headers, timeout=GUARD_S)


# -- several agent processes vs the same agents in process ------------------------------------------
def test_agent_processes_match_in_process(served, model_dir, tmp_path):
    targets = [served.url, "unix://" + served.socket]  # both listeners, alternately
    procs = [
        subprocess.Popen([sys.executable, str(REPO / "tests" / "_service_agent.py"), targets[i % 2],
                          served.tokens[f"agent{i}"], TASKS[i]],  # fmt: skip
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env())
        for i in range(AGENTS)
    ]
    remote = []
    for p in procs:
        out, err = p.communicate(timeout=GUARD_S)
        assert p.returncode == 0, err
        remote.append(json.loads(out.strip().splitlines()[-1]))

    kernel = aios.Kernel(model=str(model_dir), embedder="hash", data_dir=tmp_path / "inproc")
    try:
        local = aios.run_all(kernel, [(Probe(f"agent{i}"), TASKS[i]) for i in range(AGENTS)])
    finally:
        kernel.shutdown()

    for i, (r, lo) in enumerate(zip(remote, local, strict=True)):
        assert r["error"] is None and lo.ok, (r["error"], lo.error)
        assert r["agent"] == f"agent{i}"  # the token named it; the Agent object's own name was "probe"
        assert r["output"] == lo.output, f"agent{i}: remote {r['output']} != in process {lo.output}"
        assert r["output"]["streamed"] == r["output"]["again"]  # stream deltas add up to the answer
        assert r["output"]["tool"] == 42 and r["output"]["stored"] == r["output"]["answer"]
        # the kernel's timestamps came back with every syscall: waiting <= turnaround, both measured
        kinds = {s["kind"] for s in r["syscalls"]}
        assert {"llm", "memory", "storage", "tool"} <= kinds, kinds
        for s in r["syscalls"]:
            assert s["agent"] == f"agent{i}" and s["status"] == "done"
            assert 0 <= s["waiting_time"] <= s["turnaround_time"]
    assert len({s["id"] for r in remote for s in r["syscalls"]}) == sum(len(r["syscalls"]) for r in remote)


# -- the official openai client ----------------------------------------------------------------------
def test_openai_client_chat_stream_tools(served, model_dir):
    client = openai.OpenAI(base_url=served.url + "/v1", api_key=served.tokens["alice"], max_retries=0,
                           timeout=GUARD_S)  # fmt: skip
    models = [m.id for m in client.models.list()]
    assert models == [model_dir.name]
    msgs = [{"role": "user", "content": "What is the weather in Oslo?"}]

    plain = client.chat.completions.create(model=models[0], messages=msgs, max_tokens=16, extra_body={"priority": -7})
    with aios.connect(served.url, served.tokens["alice"]) as conn:
        sdk = conn.chat(msgs, max_new_tokens=16)
    assert plain.choices[0].message.content == sdk.text  # one kernel, one greedy answer
    assert plain.usage.completion_tokens == sdk.response.completion_tokens
    assert plain.aios["agent"] == "alice" and plain.aios["priority"] == -7  # the kernel's own syscall

    chunks = list(client.chat.completions.create(model=models[0], messages=msgs, max_tokens=16, stream=True,
                                                 stream_options={"include_usage": True}))  # fmt: skip
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [
        plain.choices[0].finish_reason
    ]
    assert chunks[-1].usage.completion_tokens == plain.usage.completion_tokens

    # tools: the tiny random model cannot choose a tool, so the kernel's constrained decoding
    # (``choices``, an aios field) makes it write one call; parsing and the OpenAI shape are real
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "weather in a city",
              "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]  # fmt: skip
    call = '<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}</tool_call>'
    r = client.chat.completions.create(model=models[0], messages=msgs, tools=tools, max_tokens=64,
                                       extra_body={"choices": [call]})  # fmt: skip
    assert r.choices[0].finish_reason == "tool_calls"
    (tc,) = r.choices[0].message.tool_calls
    assert tc.function.name == "get_weather" and json.loads(tc.function.arguments) == {"city": "Oslo"}
    streamed = list(client.chat.completions.create(model=models[0], messages=msgs, tools=tools, max_tokens=64,
                                                   stream=True, extra_body={"choices": [call]}))  # fmt: skip
    deltas = [tcd for c in streamed for tcd in (c.choices[0].delta.tool_calls or [])]
    assert [d.function.name for d in deltas] == ["get_weather"]
    # the tool's answer goes back as a tool message, like any OpenAI agent loop
    follow = client.chat.completions.create(model=models[0], max_tokens=8, messages=[
        *msgs, r.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": tc.id, "content": "cold"}])  # fmt: skip
    assert follow.choices[0].finish_reason in ("stop", "length")

    with pytest.raises(openai.UnprocessableEntityError, match="tempurature"):
        client.chat.completions.create(model=models[0], messages=msgs, extra_body={"tempurature": 0.5})
    with pytest.raises(openai.UnprocessableEntityError):
        client.chat.completions.create(model=models[0], messages=msgs, n=2)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-5", messages=msgs)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=served.url + "/v1", api_key="aios_not-a-token", max_retries=0).models.list()


# -- attacks over the wire, judged from the victim's state and the audit log ----------------------------
def test_authentication_attacks(served):
    t = served.tokens
    alice = aios.connect("unix://" + served.socket, t["alice"])
    alice.storage_put("secret", "alice's data")
    alice.memory_add("alice remembers")
    eve = aios.connect(served.url, t["eve"])
    assert (eve.agent, eve.group) == ("eve", "user")

    body = {"kind": "storage", "request": {"op": "get", "key": "secret", "owner": "alice"}}
    raw = json.dumps(body).encode()
    assert post(served, "/v1/aios/syscalls", None, raw).status_code == 401  # no token
    assert post(served, "/v1/aios/syscalls", "aios_guess", raw).status_code == 401  # a wrong one
    assert post(served, "/v1/aios/syscalls", t["alice"][:-1], raw).status_code == 401  # almost hers
    r = httpx.post(served.url + "/v1/aios/syscalls", json=body, headers={"Authorization": t["eve"]})
    assert r.status_code == 401  # not a bearer token
    # a name or a group in the body: refused, whatever the token
    for forged in ({**body, "agent": "alice"}, {**body, "group": "admin"}):
        r = post(served, "/v1/aios/syscalls", t["eve"], json.dumps(forged).encode())
        assert r.status_code == 403 and r.json()["error"]["type"] == "PermissionDenied"
    r = post(served, "/v1/aios/syscalls", t["eve"], json.dumps({"kind": "storage", "request": {
        "op": "put", "key": "secret", "content": "pwned", "agent": "alice"}}).encode())  # fmt: skip
    assert r.status_code == 422
    # the kernel's own rules still apply to a well-formed call naming alice's namespace
    with pytest.raises(SyscallFailed) as exc:
        eve.storage_get("secret", owner="alice")
    assert exc.value.error.type == "PermissionDenied"
    with pytest.raises(SyscallFailed):
        eve.storage_put("secret", "pwned", owner="alice")
    with pytest.raises(SyscallFailed):
        eve.audit_log()
    # OpenAI's ``user`` field does not make eve alice
    oe = openai.OpenAI(base_url=served.url + "/v1", api_key=t["eve"], max_retries=0, timeout=GUARD_S)
    model = oe.models.list().data[0].id
    r = oe.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=2, user="alice")
    assert r.aios["agent"] == "eve"

    # agent management is an admin syscall over the wire too: eve may not, the admin may
    with pytest.raises(SyscallFailed) as exc:
        eve.agent_add("mallory", "admin")
    assert exc.value.error.type == "PermissionDenied"
    with aios.connect(served.url, t["root"]) as root:
        carol = root.agent_add("carol")["token"]
    with aios.connect(served.url, carol) as conn:
        assert (conn.agent, conn.group) == ("carol", "user")

    # revocation takes effect on the running server at once, and a replayed token stays dead
    assert aios_cli("agent", "revoke", "eve", "--data-dir", str(served.data_dir)).returncode == 0
    with pytest.raises(AuthenticationFailed):
        eve.memory_usage()
    with pytest.raises(AuthenticationFailed):
        aios.connect(served.url, t["eve"])
    with pytest.raises(openai.AuthenticationError):
        oe.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    eve.close()
    listed = aios_cli("agent", "list", "--json", "--data-dir", str(served.data_dir))
    rows = {a["name"]: a for a in json.loads(listed.stdout)}
    assert rows["eve"]["revoked"] and not rows["alice"]["revoked"] and rows["root"]["group"] == "admin"
    assert not any(tok in listed.stdout or hash_token(tok) in listed.stdout for tok in t.values())

    # the victim's state is exactly what alice wrote
    assert alice.storage_get("secret")["content"] == "alice's data"
    assert [m["content"] for m in alice.memory_list()] == ["alice remembers"]
    assert [k["key"] for k in alice.storage_list()] == ["secret"]
    alice.close()

    root = aios.connect(served.url, t["root"])
    denied = root.audit_log(outcome="denied")
    root.close()
    auth = [d for d in denied if d["action"] == "authenticate"]
    assert len(auth) >= 6  # none, wrong, almost, not bearer, revoked x3
    assert any(d["agent"] == "eve" and "403" in d["detail"] for d in denied)
    assert any(d["agent"] == "eve" and "422" in d["detail"] for d in denied)


def test_bad_bodies_get_clear_errors_and_the_kernel_keeps_serving(served):
    t = served.tokens["agent0"]
    cases = [
        (b"{not json", 400, "InvalidJSON"),
        (b'{"kind": "memory", "request": {"op": "add", "content": 5}}', 422, "InvalidRequest"),
        (b'{"kind": "memory", "request": {"op": "add", "content": "x", "colour": 1}}', 422, "InvalidRequest"),
        (b'{"kind": "nope", "request": {}}', 422, "InvalidRequest"),
        (b"[1, 2, 3]", 422, "InvalidRequest"),
        (json.dumps({"kind": "memory", "request": {"op": "add", "content": "x" * 70000}}).encode(), 413, "BodyTooLarge"),
    ]
    for content, status, kind in cases:
        r = post(served, "/v1/aios/syscalls", t, content)
        assert (r.status_code, r.json()["error"]["type"]) == (status, kind), content[:60]
    r = post(served, "/v1/chat/completions", t, b'{"model": "x", "messages": "hi"}')
    assert r.status_code == 422 and r.json()["error"]["param"]
    # a body that claims to be small but is not: the stream is cut at the limit
    r = post(served, "/v1/aios/syscalls", t, b"x" * 70000, **{"Content-Length": "70000"})
    assert r.status_code == 413
    with aios.connect(served.url, t) as conn:
        assert conn.memory_add("still here")["content"] == "still here"
        root = aios.connect(served.url, served.tokens["root"])
        details = [d["detail"] for d in root.audit_log(agent="agent0", outcome="denied")]
        root.close()
    for _, status, kind in cases:
        assert any(d.startswith(f"{status} {kind}") for d in details), (status, kind, details)


def read_http_reply(sock: socket.socket) -> str:
    """One whole HTTP reply (headers, then Content-Length bytes of body), however it is segmented."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536) or b"\r\n\r\n"
    head, _, body = data.partition(b"\r\n\r\n")
    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), 0)  # fmt: skip
    while len(body) < length and (chunk := sock.recv(65536)):
        body += chunk
    return (head + b"\r\n\r\n" + body).decode()


def test_slow_and_vanishing_clients(served, model_dir):
    t = served.tokens["agent1"]
    host, port = served.url.removeprefix("http://").split(":")
    # a slow client: headers, then half the body, then nothing
    slow = socket.create_connection((host, int(port)), timeout=GUARD_S)
    slow.sendall(b"POST /v1/aios/syscalls HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + t.encode()
                 + b"\r\nContent-Type: application/json\r\nContent-Length: 200\r\n\r\n{\"kind\": ")  # fmt: skip
    # ... while it stalls, the kernel serves everyone else
    with aios.connect(served.url, served.tokens["agent2"]) as other:
        assert other.chat("still serving?", max_new_tokens=4).response.completion_tokens == 4
    reply = read_http_reply(slow)
    slow.close()
    assert reply.startswith("HTTP/1.1 408") and "RequestTimeout" in reply, reply

    # a client that leaves mid-stream: the syscall it started still runs to the end
    with httpx.stream("POST", served.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {t}"},
                      json={"model": model_dir.name,
                            "messages": [{"role": "user", "content": "a long story"}],
                            "max_tokens": 450, "stream": True}, timeout=GUARD_S) as resp:  # fmt: skip
        assert resp.status_code == 200
        first = next(resp.iter_lines())
        assert first.startswith("data: ")
    syscall_id = json.loads(first[6:])["id"].removeprefix("chatcmpl-")
    root = aios.connect(served.url, served.tokens["root"])
    deadline = time.monotonic() + GUARD_S  # hang guard: wait for the server to notice and the syscall to end
    while True:
        aborted = [d for d in root.audit_log(agent="agent1") if syscall_id in d["detail"]]
        inflight = root.health()["inflight"]
        if aborted and inflight == 0:
            break
        assert time.monotonic() < deadline, "the abandoned stream was never noticed or never finished"
        time.sleep(0.2)
    root.close()


def test_sigterm_drains_in_flight_syscalls(model_dir, tmp_path):
    data = tmp_path / "d"
    data.mkdir()
    token = mint(data, "worker")
    server = start_server(model_dir, data, "--drain-timeout", "0")
    conn = aios.connect(server.url, token)
    stream = conn.chat_stream("Tell me a very long story.", max_new_tokens=400)
    deltas = iter(stream)
    next(deltas)  # the syscall is running in the kernel now
    with ThreadPoolExecutor(1) as pool:
        rest = pool.submit(lambda: list(deltas))
        server.proc.send_signal(15)
        outcome = None
        try:
            rest.result(timeout=GUARD_S)
            outcome = stream.syscall.status.value
        except SyscallFailed as exc:  # pragma: no cover - only if the stream itself carried the failure
            outcome = exc.error.type
    if outcome == "failed":
        outcome = stream.syscall.error.type
    # it either finished before the kernel stopped, or failed with the typed shutdown error
    assert outcome in ("done", "KernelShutdown"), outcome
    assert server.proc.wait(GUARD_S) == 0, server.output()
    assert "drained and stopped" in server.output()
    assert not Path(server.socket).exists()
    with pytest.raises((httpx.ConnectError, ServiceRefused)):
        conn.memory_usage()
    conn.close()


def test_example_06_uses_only_the_openai_client(served):
    env = {**child_env(), "AIOS_TOKEN": served.tokens["agent3"]}
    script = REPO / "examples" / "06_openai_client_agent.py"
    assert "import aios" not in script.read_text()
    done = subprocess.run([sys.executable, str(script), served.url], capture_output=True, text=True, env=env,
                          timeout=GUARD_S)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "answer:" in done.stdout and "'agent': 'agent3'" in done.stdout, done.stdout
