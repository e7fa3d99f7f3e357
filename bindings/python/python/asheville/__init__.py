"""Asheville: encrypted, deduplicated, erasure-coded storage over many backends.

    import asheville
    with asheville.Repository.create("data", "acme", "secret") as repo:
        repo.put("/hello.txt", b"hello")
        print(repo.get("/hello.txt"))

Errors are ``asheville.AshevilleError`` (with ``.kind``, like ``"not_found"``)
or one of its subclasses. Calls that do I/O release the GIL.
"""

from __future__ import annotations

import io
import json
from typing import Any, Dict, List, Optional, Tuple

from . import _asheville
from ._asheville import (
    AlreadyExistsError,
    AshevilleError,
    IntegrityError,
    InvalidInputError,
    NotFoundError,
    QuotaExceededError,
    WrongKeyError,
)

__version__: str = _asheville.__version__
__all__ = [
    "Repository",
    "AshevilleError",
    "NotFoundError",
    "AlreadyExistsError",
    "InvalidInputError",
    "IntegrityError",
    "WrongKeyError",
    "QuotaExceededError",
]


class _ReadStream(io.RawIOBase):
    """A file-like reader of one stored file (wrap in ``io.BufferedReader``
    for ``readline`` and friends; ``Repository.open_file`` does)."""

    def __init__(self, inner: Any) -> None:
        super().__init__()
        self._inner = inner

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        data = self._inner.read(len(b))
        n = len(data)
        b[:n] = data
        return n

    def close(self) -> None:
        if not self.closed:
            self._inner.close()
        super().close()


class _WriteStream(io.RawIOBase):
    """A file-like writer; the file is committed by ``close()`` (an
    exception inside a ``with`` block aborts it instead)."""

    def __init__(self, inner: Any) -> None:
        super().__init__()
        self._inner = inner

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        return self._inner.write(bytes(b))

    def close(self) -> None:
        if not self.closed:
            self._inner.close()
        super().close()

    def abort(self) -> None:
        if not self.closed:
            self._inner.abort()
        super().close()

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None:
            self.abort()
        else:
            self.close()


class Repository:
    """A repository acting as one tenant. Use as a context manager."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    @classmethod
    def create(
        cls, dir: str, tenant: str, passphrase: str, config: Optional[Dict[str, Any]] = None
    ) -> "Repository":
        """Makes a repository in ``dir`` (three local backends with rs(2,1)
        unless ``config``, a RepoConfig as a dict, says otherwise)."""
        cfg = json.dumps(config) if config is not None else None
        return cls(_asheville.Repository.create(str(dir), tenant, passphrase, cfg))

    @classmethod
    def open(cls, dir: str, tenant: str, passphrase: str) -> "Repository":
        """Opens the repository in ``dir`` as ``tenant``."""
        return cls(_asheville.Repository.open(str(dir), tenant, passphrase))

    def __enter__(self) -> "Repository":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Closes the repository."""
        self._inner.close()

    def put(self, path: str, data: bytes) -> None:
        """Stores ``data`` as the next version of ``path``."""
        self._inner.put(path, data)

    def get(self, path: str) -> bytes:
        """The latest version of ``path``."""
        return self._inner.get(path)

    def put_file(self, path: str, local: str) -> None:
        """Stores a local file or directory under ``path``."""
        self._inner.put_file(path, str(local))

    def get_file(self, path: str, local: str) -> None:
        """Restores ``path`` (a file or a directory) to ``local``."""
        self._inner.get_file(path, str(local))

    def open_file(self, path: str, mode: str = "rb") -> Any:
        """A file object: ``"rb"`` streams the latest version, ``"wb"``
        streams a new one (committed on ``close()``)."""
        if mode == "rb":
            return io.BufferedReader(_ReadStream(self._inner.open_reader(path)), 1 << 20)
        if mode == "wb":
            return _WriteStream(self._inner.open_writer(path))
        raise ValueError("mode is 'rb' or 'wb'")

    def stat(self, path: str) -> Dict[str, Any]:
        """The latest version's metadata: path, version, size, mtime_ns,
        mode, created_ns, chunks."""
        return json.loads(self._inner.stat_json(path))

    def list(
        self, path: str = "/", depth: int = 1, cursor: Optional[str] = None, limit: int = 1000
    ) -> Tuple[List[Dict[str, Any]], Optional[str]]:
        """One page of ``path`` (``depth`` 0: everything below): the entries
        and the cursor of the next page (``None`` at the end)."""
        page = json.loads(self._inner.list_json(path, depth, cursor, limit))
        return page["entries"], page["cursor"]

    def delete(self, path: str) -> None:
        """Deletes ``path``."""
        self._inner.delete(path)

    def sync_dir(self, user: str, source: str, dir: str) -> Dict[str, Any]:
        """Syncs the local directory ``dir`` as ``source`` of ``user`` now;
        returns the finished job (state, progress, item errors)."""
        return json.loads(self._inner.sync_dir_json(user, source, str(dir)))

    def sync_status(self, user: str) -> List[Dict[str, Any]]:
        """Each source of ``user`` (``source``) with its newest job
        (``last_job``: state, progress, history), or ``None``."""
        return json.loads(self._inner.sync_status_json(user))

    def usage(self, meter: str = "storage.bytes_ingested") -> List[Dict[str, Any]]:
        """Daily usage rows of ``meter`` (``value`` is a decimal string)."""
        return json.loads(self._inner.usage_json(meter))
