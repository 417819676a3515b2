"""Storage syscall: the requests an agent can make of the storage manager, and its typed errors.

This is the storage manager's edge: pydantic models, one per operation, joined in a discriminated
union on ``op``, so a malformed request is rejected before any handler runs. The errors carry an
``error_type`` the kernel reports to the caller. The manager itself is ``aios.kernel.storage``.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field

from aios.kernel.syscall import Request, Syscall

MAX_CONTENT = 1 << 20  # 1 MiB per item or file: larger things do not belong in an agent's context
MetaValue = str | int | float | bool


class StorageError(Exception):
    """A storage request that cannot be served (typed for the caller: ``error_type``)."""

    error_type = "StorageError"


class NotFound(StorageError):
    error_type = "NotFound"


class InvalidPath(StorageError):
    error_type = "InvalidPath"


class StorageBusy(StorageError):
    """Another process holds the database's write lock past the busy timeout (nothing was written)."""

    error_type = "StorageBusy"


class IndexUnavailable(StorageError):
    """The search index (chromadb) does not answer; SQLite, the source of truth, still does."""

    error_type = "IndexUnavailable"


class _StorageOp(Request):
    """Fields every storage request has. ``owner`` is the namespace (the caller's own when omitted)."""

    owner: str | None = Field(None, min_length=1, max_length=128)


_Key = Annotated[str, Field(min_length=1, max_length=512)]
_Path = Annotated[str, Field(min_length=1, max_length=1024)]
_Content = Annotated[str, Field(max_length=2 * MAX_CONTENT)]
_Prefix = Annotated[str, Field(max_length=512)]
_Limit = Annotated[int, Field(ge=1, le=10_000)]
_Encoding = Literal["utf-8", "base64"]


class PutItem(_StorageOp):
    op: Literal["put"] = "put"
    key: _Key
    content: _Content
    metadata: dict[str, MetaValue] = Field(default_factory=dict, max_length=64)


class GetItem(_StorageOp):
    op: Literal["get"] = "get"
    key: _Key


class DeleteItem(_StorageOp):
    op: Literal["delete"] = "delete"
    key: _Key


class ListItems(_StorageOp):
    op: Literal["list"] = "list"
    prefix: _Prefix = ""
    limit: _Limit = 100


class SearchItems(_StorageOp):
    op: Literal["search"] = "search"
    query: str = Field(min_length=1, max_length=8192)
    k: int = Field(5, ge=1, le=50)
    prefix: _Prefix = ""


class FileWrite(_StorageOp):
    op: Literal["file_write"] = "file_write"
    path: _Path
    content: _Content
    encoding: _Encoding = "utf-8"


class FileRead(_StorageOp):
    op: Literal["file_read"] = "file_read"
    path: _Path
    encoding: _Encoding = "utf-8"


class FileList(_StorageOp):
    op: Literal["file_list"] = "file_list"
    prefix: _Prefix = ""
    limit: _Limit = 100


class FileDelete(_StorageOp):
    op: Literal["file_delete"] = "file_delete"
    path: _Path


class LogAppend(_StorageOp):
    op: Literal["log_append"] = "log_append"
    content: _Content
    event: str = Field("note", min_length=1, max_length=128)


class LogRead(_StorageOp):
    op: Literal["log_read"] = "log_read"
    limit: _Limit = 100


StorageRequest = Annotated[
    PutItem | GetItem | DeleteItem | ListItems | SearchItems | FileWrite | FileRead | FileList | FileDelete
    | LogAppend | LogRead,
    Field(discriminator="op"),
]  # fmt: skip


class StorageSyscall(Syscall):
    kind: ClassVar[str] = "storage"
    request: StorageRequest
