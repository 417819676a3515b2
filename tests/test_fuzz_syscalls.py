"""Fuzzing every syscall request model the kernel serves (property-based, ``hypothesis``).

Bodies are built from each request model's own fields (the valid literals, nested models such as chat
messages, wrong types, huge and empty sizes, any Unicode, surrogates, NUL bytes, deep nesting) so that
many pass validation and reach the managers. The property, for every one of them:

- validation either builds the request or raises pydantic's ``ValidationError`` (nothing else);
- a built request submitted through an agent's context ends DONE or FAILED with a typed error whose
  type is a stable name, never a bare Python exception that escaped a manager (``KeyError`` ...);
  or is refused at submission with ``SyscallRejected``; it never hangs (hang guard: 120 s);
- afterwards the kernel still serves a plain request (nothing took it down).

Fast and reproducible: bounded examples, no deadline, derandomized (the same inputs on every run,
so the test cannot flake), no example database.
"""

from __future__ import annotations

import types
import typing

import pytest
from _util import make_tiny_kernel
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, TypeAdapter, ValidationError

import aios
from aios.kernel.syscall import Syscall, SyscallFailed, SyscallRejected

# Names that only an exception escaping a manager's own checks would produce.
UNTYPED = {
    "Exception", "RuntimeError", "TypeError", "KeyError", "IndexError", "AttributeError",
    "AssertionError", "UnboundLocalError", "NameError", "RecursionError", "ZeroDivisionError",
    "UnicodeEncodeError", "UnicodeDecodeError", "NotImplementedError", "OverflowError",
}  # fmt: skip

SPECIAL = [
    "", " ", "*", ".", "..", "../..", "/", "/etc/passwd", "a/../../b", "\x00", "a\x00b", "\ud800",
    "\u202e\u0644\u0627", "😀" * 50, "%2e%2e/x", "C:\\x", "x" * 5000, "y" * ((1 << 20) + 7),
    "<tool_call>{\"name\": \"calculator\", \"arguments\": {\"expression\": \"2+2\"}}</tool_call>",
]  # fmt: skip

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40)
    | st.sampled_from(SPECIAL)
)
any_json = st.recursive(
    scalars,
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
    max_leaves=16,
)


def _literals(tp) -> list:
    if typing.get_origin(tp) is typing.Literal:
        return list(typing.get_args(tp))
    return [v for a in typing.get_args(tp) for v in _literals(a)]


def for_type(tp, depth: int = 0, chaos: bool = False) -> st.SearchStrategy:
    """Values of ``tp`` (right types, any values); with ``chaos``, mixed with arbitrary JSON."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Literal:
        good = st.sampled_from(list(args))
    elif origin in (typing.Union, types.UnionType):
        good = st.one_of([for_type(a, depth, chaos) for a in args])
    elif origin is typing.Annotated:
        good = for_type(args[0], depth, chaos)
    elif origin in (list, tuple, set):
        item = for_type(args[0], depth + 1, chaos) if args else any_json
        good = st.one_of(
            st.lists(item, min_size=1, max_size=3), st.lists(item, min_size=1, max_size=2), st.just([])
        )
    elif origin is dict or tp is dict:
        value = for_type(args[1], depth + 1, chaos) if len(args) == 2 else any_json
        good = st.dictionaries(st.text(max_size=12), value, max_size=4)
    elif isinstance(tp, type) and issubclass(tp, BaseModel):
        good = model_body(tp, depth + 1, chaos) if depth < 3 else any_json
    elif tp is str:
        good = st.text(max_size=60) | st.sampled_from(SPECIAL)
    elif tp is bool:
        good = st.booleans()
    elif tp is int:
        good = st.one_of(st.integers(min_value=1, max_value=12), st.integers(-3, 300), st.integers())
    elif tp is float:
        good = st.one_of(
            st.floats(min_value=0, max_value=1), st.floats(min_value=-2, max_value=6), st.floats()
        )
    elif tp is type(None):
        good = st.none()
    else:
        good = any_json
    return st.one_of(good, any_json) if chaos else good


def model_body(model: type[BaseModel], depth: int = 0, chaos: bool = False) -> st.SearchStrategy:
    fields = {name: for_type(f.annotation, depth, chaos) for name, f in model.model_fields.items()}
    required = {n for n, f in model.model_fields.items() if f.is_required()}
    body = st.fixed_dictionaries(
        {n: s for n, s in fields.items() if n in required},
        optional={n: s for n, s in fields.items() if n not in required},
    )
    if not chaos:
        return body
    extra = st.dictionaries(st.text(max_size=10), any_json, max_size=2)  # unknown keys
    return st.one_of(body, st.builds(lambda a, b: {**b, **a}, body, extra), any_json)


def _minimal(tp, name: str = ""):
    """A small valid-looking value of ``tp`` (templates start from these)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Literal:
        return args[0]
    if origin in (typing.Union, types.UnionType):
        return _minimal(next(a for a in args if a is not type(None)), name)
    if origin is typing.Annotated:
        return _minimal(args[0], name)
    if origin in (list, tuple, set):
        return [_minimal(args[0])] if args else []
    if origin is dict or tp is dict:
        return {}
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return template(tp, {})
    return {str: "x", int: 1, float: 0.5, bool: False}.get(tp, "x")


def template(model: type[BaseModel], fixed: dict) -> dict:
    """Every required field, and every optional field whose default is None, filled minimally, except
    ``owner`` (the caller's own namespace): a body that passes the op-specific checks of any op."""
    body = dict(fixed)
    for name, f in model.model_fields.items():
        if name in body or name == "owner":
            continue
        if f.is_required() or f.default is None:
            body[name] = _minimal(f.annotation, name)
    if "messages" in model.model_fields:
        body["messages"] = [{"role": "user", "content": "hello"}]
    return body


def templates(annotation) -> list[tuple[type[BaseModel], dict]]:
    """One template per model and per value of its ``op`` literal."""
    models = [a for a in typing.get_args(annotation) if isinstance(a, type) and issubclass(a, BaseModel)]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        models = [annotation]
    out = []
    for m in models:
        ops = _literals(m.model_fields["op"].annotation) if "op" in m.model_fields else [None]
        out += [(m, template(m, {} if op is None else {"op": op})) for op in ops]
    return out


def mutated(annotation) -> st.SearchStrategy:
    """A template with up to three fields replaced (a typed value, any JSON, or removed) and sometimes
    an unknown key added; now and then a body built from scratch."""

    scratch = model_body(templates(annotation)[0][0], chaos=True)

    @st.composite
    def build(draw):
        if draw(st.integers(0, 8)) == 0:
            return draw(scratch)
        model, base = draw(st.sampled_from(templates(annotation)))
        body = dict(base)
        names = draw(st.lists(st.sampled_from(sorted(model.model_fields)), max_size=3, unique=True))
        for n in names:
            how = draw(st.sampled_from(["typed", "typed", "typed", "json", "drop"]))
            if how == "drop":
                body.pop(n, None)
            else:
                body[n] = draw(for_type(model.model_fields[n].annotation, chaos=how == "json"))
        if draw(st.integers(0, 7)) == 0:
            body[draw(st.text(min_size=1, max_size=8))] = draw(any_json)
        return body

    return build()


def syscall_classes(kernel) -> dict[str, type[Syscall]]:
    served = set(kernel._handlers) | {"llm"}
    out: dict[str, type[Syscall]] = {}
    todo = list(Syscall.__subclasses__())
    while todo:
        cls = todo.pop()
        todo += cls.__subclasses__()
        if cls.kind in served and "request" in cls.model_fields and cls.__module__.startswith("aios."):
            out[cls.kind] = cls
    return out


@pytest.fixture(scope="module")
def fuzz_kernel(tiny_lm, tmp_path_factory):
    kernel = make_tiny_kernel(tiny_lm, tmp_path_factory.mktemp("fuzz") / "data", embedder="hash",
                              context_window=256)  # fmt: skip
    yield kernel
    kernel.shutdown()


KINDS = ["llm", "memory", "storage", "tool", "access", "identity"]


def _adapter(cls: type[Syscall]) -> TypeAdapter:
    field = cls.model_fields["request"]
    return TypeAdapter(typing.Annotated[field.annotation, field] if field.discriminator else field.annotation)


def test_every_served_kind_is_fuzzed(fuzz_kernel):
    classes = syscall_classes(fuzz_kernel)
    assert set(classes) == set(KINDS)
    for cls in classes.values():  # the templates the fuzzer mutates are valid requests, every op
        for _, body in templates(cls.model_fields["request"].annotation):
            _adapter(cls).validate_python(body)


@pytest.mark.parametrize(
    "kind, group", [(k, "user") for k in KINDS] + [("access", "admin"), ("identity", "admin")]
)  # admins reach the code paths users are refused
def test_fuzzed_requests_get_a_result_or_a_typed_error(fuzz_kernel, kind, group):
    cls = syscall_classes(fuzz_kernel)[kind]
    annotation = cls.model_fields["request"].annotation
    adapter = _adapter(cls)
    seen: dict[str, int] = {}

    @settings(
        max_examples=40 if kind == "llm" else 60,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )
    @given(body=mutated(annotation))
    def check(body):
        try:
            request = adapter.validate_python(body)
        except ValidationError:
            seen["invalid"] = seen.get("invalid", 0) + 1
            return
        with aios.agent_context(fuzz_kernel, f"fuzz-{group}", group=group) as ctx:
            try:
                ctx.call(cls(request=request), timeout=120)
                outcome = "done"
            except SyscallFailed as exc:
                outcome = exc.error.type
                assert outcome and outcome.isidentifier() and outcome not in UNTYPED, exc
            except SyscallRejected as exc:
                outcome = type(exc).__name__
        seen[outcome] = seen.get(outcome, 0) + 1

    check()
    print(kind, group, dict(sorted(seen.items())))
    assert sum(n for o, n in seen.items() if o != "invalid") > 0  # requests did reach the kernel
    with aios.agent_context(fuzz_kernel, "bystander"):  # and it still serves
        aios.storage_put("alive", "yes")
        assert aios.storage_get("alive")["content"] == "yes"
