"""Fuzzing the service's request bodies (``aios serve``'s ASGI app, in process, over httpx).

Bodies for ``POST /v1/aios/syscalls`` (``{"kind", "request"}`` for every syscall kind, the request
mutated as in ``test_fuzz_syscalls``), ``POST /v1/chat/completions`` (OpenAI's shape, mutated), and
raw bytes that are not JSON at all. The property: every answer is a refusal the service names (an
HTTP status in 4xx/503 with OpenAI's error shape and a type) or a finished syscall (200); never a
500 (a handler that crashed), never a hang; the kernel still serves afterwards. Derandomized.
"""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from _util import make_tiny_kernel
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_fuzz_syscalls import KINDS, any_json, mutated, syscall_classes

OK = {200, 400, 401, 403, 404, 408, 413, 422, 503}


@pytest.fixture(scope="module")
def service(tiny_lm, tmp_path_factory):
    from aios.service.app import Service

    kernel = make_tiny_kernel(tiny_lm, tmp_path_factory.mktemp("svcfuzz") / "data", embedder="hash",
                              context_window=256)  # fmt: skip
    token = kernel.identities.add("fuzzer")
    yield kernel, Service(kernel).app(), token
    kernel.shutdown()


def _post(app, token: str, path: str, content: bytes) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://svc") as client:
            return await client.post(
                path, content=content, headers={"Authorization": f"Bearer {token}"}, timeout=120
            )

    return asyncio.run(asyncio.wait_for(go(), 180))  # hang guard


def _check(resp: httpx.Response, seen: dict) -> None:
    assert resp.status_code in OK, (resp.status_code, resp.text[:500])
    body = resp.json()
    if resp.status_code == 200:
        key = body.get("status") or body.get("object") or "ok"
    else:
        assert body["error"]["type"] and body["error"]["message"] is not None, body
        key = f"{resp.status_code} {body['error']['type']}"
    seen[key] = seen.get(key, 0) + 1


SETTINGS = settings(
    max_examples=30,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)


def test_syscall_bodies(service):
    kernel, app, token = service
    classes = syscall_classes(kernel)
    bodies = st.one_of(
        [
            st.fixed_dictionaries(
                {"kind": st.just(k), "request": mutated(classes[k].model_fields["request"].annotation)}
            )
            for k in KINDS
        ]
        + [any_json]
    )
    seen: dict = {}

    @SETTINGS
    @given(body=bodies)
    def check(body):
        _check(
            _post(app, token, "/v1/aios/syscalls", json.dumps(body).encode("utf-8", "surrogatepass")), seen
        )

    check()
    print(dict(sorted(seen.items())))
    assert seen.get("done", 0) > 0 and sum(v for k, v in seen.items() if k.startswith("422")) > 0


def test_chat_completion_bodies_and_raw_bytes(service):
    kernel, app, token = service
    message = st.fixed_dictionaries({"role": st.sampled_from(["user", "user", "system", "assistant", "tool", "x"]),
                                     "content": st.text(max_size=40) | st.text(max_size=40) | any_json})  # fmt: skip
    chat = st.fixed_dictionaries(
        {"model": st.just("tiny") | st.just("tiny") | st.text(max_size=10),
         "messages": st.lists(message, min_size=1, max_size=3) | st.lists(message, min_size=1, max_size=2) | any_json},
        optional={
            "max_tokens": st.integers(1, 12) | st.integers(-2, 300) | any_json, "temperature": st.floats() | any_json,
            "stream": st.booleans(), "stop": st.lists(st.text(max_size=5), max_size=2) | any_json,
            "seed": st.integers() | any_json, "n": st.integers(-1, 3), "tools": any_json, "extra": any_json,
        },
    )  # fmt: skip
    raw = st.binary(max_size=200) | st.sampled_from(
        [b"", b"{", b"[]", b"null", b'{"kind": "llm"}', b"\xff\xfe"]
    )
    seen: dict = {}

    @SETTINGS
    @given(body=st.one_of(chat.map(lambda b: json.dumps(b).encode("utf-8", "surrogatepass")), raw))
    def check(body):
        _check(_post(app, token, "/v1/chat/completions", body), seen)

    check()
    print(dict(sorted(seen.items())))
    assert any(k.startswith("4") for k in seen) and any(
        not k[0].isdigit() for k in seen
    )  # refusals and answers
    with_alive = _post(app, token, "/v1/aios/syscalls", json.dumps(
        {"kind": "storage", "request": {"op": "put", "key": "alive", "content": "yes"}}).encode())  # fmt: skip
    assert with_alive.status_code == 200 and with_alive.json()["status"] == "done"
