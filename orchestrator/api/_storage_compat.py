"""Transitional: what the API asks of storage until `orchestrator.storage` (being split into a
package with `InputResolver`, `Storage.key_of` and `Storage.presigns_urls`) provides it. Delete
this module when it does; every function here has that one replacement."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit

from orchestrator.storage import InputNotAllowed, LocalStorage, S3Storage, Storage
from orchestrator.tenants import TenantStore


def key_of(storage: Storage, uri: str) -> str | None:
    """-> `storage.key_of(uri)`."""
    if isinstance(storage, S3Storage):
        head = f"s3://{storage.bucket}/"
        return uri[len(head) :] if uri.startswith(head) else None
    if isinstance(storage, LocalStorage):
        parts = urlsplit(uri)
        if parts.scheme == "file":
            path = Path(unquote(parts.path)).resolve()
            if path.is_relative_to(storage.root):
                return path.relative_to(storage.root).as_posix()
    return None


def presigns_urls(storage: Storage) -> bool:
    """-> `storage.presigns_urls`."""
    return not isinstance(storage, LocalStorage)


class LegacyInputRules:
    """-> `InputResolver(storage, tenant rules).check`."""

    def __init__(self, storage: Storage, tenants: TenantStore) -> None:
        self.storage = storage
        self.tenants = tenants

    def check(self, uri: str, *, tenant: str) -> None:
        scheme = uri.split(":", 1)[0].lower() if ":" in uri else ""
        if scheme == "s3":
            try:
                self.storage.policy.check(uri, tenant=tenant)
            except InputNotAllowed:
                own = self.tenants.input_policy(tenant)
                if own is None:
                    raise
                own.check(uri, tenant=tenant)
            return
        if scheme == "file" and isinstance(self.storage, LocalStorage):
            parts = urlsplit(uri)
            if parts.netloc not in ("", "localhost") or parts.query or parts.fragment:
                raise InputNotAllowed(uri, "file:// URIs may not name a host, query or fragment")
            path = Path(unquote(parts.path))
            if ".." in path.parts:
                raise InputNotAllowed(uri, "'..' path segments are not allowed")
            own_root = (self.storage.root / f"{self.storage.prefix}{tenant}").resolve()
            if not path.resolve().is_relative_to(own_root):
                raise InputNotAllowed(uri, "only files under the tenant's own storage prefix may be read")
            return
        raise InputNotAllowed(
            uri, "inputs must be s3:// objects the tenant may read (upload files with POST /v1/uploads)"
        )
