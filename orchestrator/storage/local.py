"""Embedded-mode storage: objects as files under a local folder (`LocalStorage`)."""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlsplit

from orchestrator.storage.base import (
    MAX_PRESIGN_EXPIRY_S,
    READ_CHUNK,
    SIDECAR_SUFFIX,
    TMP_PREFIX,
    Data,
    ObjectInfo,
    Storage,
    check_sha256,
    content_type_for,
    hash_data,
    int_in_range,
    normalize_prefix,
    validate_key,
)
from orchestrator.storage.errors import InputNotAllowed, InputTooLarge, ObjectNotFound, StorageError

__all__ = ["LocalStorage", "read_local_file"]


class LocalStorage(Storage):
    """Objects as files under `root` (embedded mode), same key layout as S3.

    Writes go to a temp file in the target directory, are fsynced and then renamed over the
    target, so a reader sees the old object or the new one, never a torn one. The SHA-256 lives in
    a hidden sidecar `.{name}.sha256` next to the file. The content type always follows the key's
    extension (files carry no type), so `put`'s `content_type` is ignored.
    """

    presigns_urls = False  # `url` is a file:// URI: the API serves these results as bytes

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        prefix: str = "",
    ) -> None:
        self.root = Path(root).expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.prefix = normalize_prefix(prefix)

    def path(self, key: str) -> Path:
        """The file that holds `key`."""
        return self.root.joinpath(*validate_key(key).split("/"))

    @staticmethod
    def _sidecar(path: Path) -> Path:
        return path.with_name(f".{path.name}{SIDECAR_SUFFIX}")

    def uri(self, key: str) -> str:
        return self.path(key).as_uri()

    def url(self, key: str, *, expires_s: int = 3600) -> str:
        """A `file://` URI; local files do not expire, so `expires_s` is only validated (same range as S3)."""
        int_in_range("expires_s", expires_s, 1, MAX_PRESIGN_EXPIRY_S)
        return self.uri(key)

    def _write_atomic(self, path: Path, data: Data) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=TMP_PREFIX, dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                if isinstance(data, bytes | bytearray | memoryview):
                    handle.write(data)
                else:
                    while chunk := data.read(READ_CHUNK):
                        handle.write(chunk)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(tmp_name, 0o644)  # mkstemp makes 0600; results are meant to be shared
            os.replace(tmp_name, path)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise
        _fsync_dir(path.parent)

    def put(self, key: str, data: Data, *, content_type: str | None = None) -> ObjectInfo:
        path = self.path(key)
        sha256, size = hash_data(data)
        sidecar = self._sidecar(path)
        try:
            # Drop the old checksum first: a crash mid-way then leaves an unverified file,
            # never a checksum that belongs to other bytes.
            sidecar.unlink(missing_ok=True)
            self._write_atomic(path, data)
            self._write_atomic(sidecar, sha256.encode("ascii"))
        except OSError as exc:
            raise StorageError(f"cannot write {self.uri(key)}: {exc}") from exc
        return ObjectInfo(key, size, content_type_for(key), sha256)

    def _recorded_sha256(self, path: Path) -> str | None:
        try:
            return self._sidecar(path).read_text("ascii").strip() or None
        except FileNotFoundError:
            return None

    def get(self, key: str, *, verify: bool = True) -> bytes:
        path = self.path(key)
        try:
            data = path.read_bytes()
        except (FileNotFoundError, IsADirectoryError) as exc:
            raise ObjectNotFound(self.uri(key)) from exc
        except OSError as exc:
            raise StorageError(f"cannot read {self.uri(key)}: {exc}") from exc
        if verify:
            check_sha256(self.uri(key), self._recorded_sha256(path), data)
        return data

    def head(self, key: str) -> ObjectInfo | None:
        path = self.path(key)
        try:
            info = path.stat()
        except FileNotFoundError:
            return None
        if not stat.S_ISREG(info.st_mode):
            return None
        return ObjectInfo(key, info.st_size, content_type_for(key), self._recorded_sha256(path))

    def delete(self, key: str) -> None:
        path = self.path(key)
        try:
            path.unlink(missing_ok=True)
            self._sidecar(path).unlink(missing_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot delete {self.uri(key)}: {exc}") from exc

    def read(self, key: str, *, max_bytes: int) -> bytes:
        path = self.path(key)
        data = read_local_file(path, self.uri(key), max_bytes)
        check_sha256(self.uri(key), self._recorded_sha256(path), data)
        return data

    def key_of(self, uri: str) -> str | None:
        if not isinstance(uri, str) or not uri.startswith("file:"):
            return None
        try:
            parts = urlsplit(uri)
        except ValueError:
            return None
        if parts.netloc not in ("", "localhost") or parts.query or parts.fragment:
            return None
        path = PurePosixPath(unquote(parts.path))
        if not path.is_absolute() or ".." in path.parts:
            return None
        try:
            relative = Path(path).relative_to(self.root)
            key = validate_key("/".join(relative.parts))
        except ValueError:
            return None
        # A symlink inside the root must not lead out of it.
        if not self.path(key).resolve().is_relative_to(self.root):
            return None
        return key


def _fsync_dir(directory: Path) -> None:
    """Make a rename durable; some filesystems cannot fsync a directory, which is fine to skip."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def read_local_file(path: Path, uri: str, max_bytes: int) -> bytes:
    """A regular file's bytes (the last path component not followed if a symlink), refused when
    over `max_bytes`. Raises `ObjectNotFound` (named by `uri`), `InputNotAllowed` (not a regular
    file), `InputTooLarge` or `StorageError`."""
    int_in_range("max_bytes", max_bytes, 1)
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError as exc:
        raise ObjectNotFound(uri) from exc
    except OSError as exc:
        raise StorageError(f"cannot open input {uri!r}: {exc}") from exc
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise InputNotAllowed(uri, "the path is not a regular file")
        if info.st_size > max_bytes:
            raise InputTooLarge(uri, info.st_size, max_bytes)
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise InputTooLarge(uri, len(data), max_bytes)
    return data
