"""Which inputs a tenant may read, decided in one place: `InputPolicy` (the deployment's rules)
and `InputResolver` (those rules + the storage's own tenant prefixes + each tenant's own rules).

The API checks a submitted job's URIs with `InputResolver.check` and the engine reads them with
`InputResolver.read`, the same object built once per process, so the door and the engine always
give the same answer. The rules, in the order they are tried:

1. The tenant's own prefix in the result storage (`{prefix}{tenant}/`, results and uploads):
   `s3://bucket/...` in service mode, `file:///root/...` in embedded mode.
2. The deployment's `InputPolicy`: allowed S3 buckets/prefixes (`{tenant}` placeholder), and in
   embedded mode local paths under the input root.
3. For `s3://` URIs the deployment refuses, the tenant's own allowed S3 rules (from the tenant
   store), looked up only then, so inputs the deployment allows cost no lookup.

Everything else (http, metadata-service hosts, unknown schemes, `..`) is refused with
`InputNotAllowed`, whose message names the rule.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote, urlsplit

from orchestrator.jobs import MAX_URI_CHARS
from orchestrator.storage.base import BUCKET_RE, Storage, int_in_range, validate_id, validate_key
from orchestrator.storage.errors import InputNotAllowed, InputNotFound, ObjectNotFound
from orchestrator.storage.local import read_local_file
from orchestrator.storage.s3 import S3Client, read_s3_object

__all__ = ["InputPolicy", "InputResolver", "S3Location", "TenantRules"]

_SCHEME_RE = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):")
# Cloud instance-metadata endpoints: never fetched, named in the refusal so the reason is clear.
_METADATA_HOSTS = frozenset(
    {
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack
        "169.254.170.2",  # AWS ECS task metadata
        "fd00:ec2::254",  # AWS IMDS over IPv6
        "100.100.100.200",  # Alibaba Cloud
        "metadata",
        "metadata.google.internal",
        "instance-data",
        "instance-data.ec2.internal",
    }
)


@dataclass(frozen=True)
class S3Location:
    """A parsed, policy-approved `s3://bucket/key` input."""

    bucket: str
    key: str

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


def _is_metadata_host(host: str | None) -> bool:
    if not host:
        return False
    host = host.strip("[]").lower().rstrip(".")
    if host in _METADATA_HOSTS:
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_link_local


class InputPolicy:
    """Decides which input URIs a tenant may read.

    - `s3://bucket/key`: only under an allowed rule. A rule is `bucket`, `s3://bucket` (the whole
      bucket) or `s3://bucket/some/prefix/`; the placeholder `{tenant}` in a prefix is replaced by
      the requesting tenant, so `s3://uploads/{tenant}/` lets each tenant read only its own folder.
      Prefixes match on whole path segments. (A tenant's own prefix in the result storage is
      `InputResolver`'s rule, not a policy rule.)
    - Local paths and `file://` URIs: only when `embedded` is true and `input_root` is set, and only
      if the path, symlinks resolved, lies under `input_root`. `..` segments are always refused.
    - `http(s)://`, link-local / metadata-service hosts and any other scheme: refused.
    """

    def __init__(
        self,
        allowed_s3: Sequence[str] = (),
        *,
        input_root: str | os.PathLike[str] | None = None,
        embedded: bool = False,
    ) -> None:
        if isinstance(allowed_s3, str):
            raise ValueError(f"allowed_s3 {allowed_s3!r} is invalid: expected a sequence of rules, not a string")
        self._rules: tuple[tuple[str, str], ...] = tuple(self._parse_rule(rule) for rule in allowed_s3)
        self.embedded = bool(embedded)
        self.input_root: Path | None = None
        if input_root is not None:
            if not self.embedded:
                raise ValueError(f"input_root {input_root!r} is invalid: local inputs exist only in embedded mode")
            self.input_root = Path(input_root).expanduser().resolve()

    @property
    def allowed_s3(self) -> tuple[str, ...]:
        """The rules as normalized `s3://bucket/prefix` strings (prefix may contain `{tenant}`)."""
        return tuple(f"s3://{bucket}/{prefix}" for bucket, prefix in self._rules)

    def with_s3_rule(self, rule: str) -> InputPolicy:
        """A copy of this policy with one more allowed S3 rule."""
        policy = InputPolicy.__new__(InputPolicy)
        policy._rules = (*self._rules, self._parse_rule(rule))
        policy.embedded = self.embedded
        policy.input_root = self.input_root
        return policy

    @staticmethod
    def _parse_rule(rule: Any) -> tuple[str, str]:
        if not isinstance(rule, str) or not rule:
            raise ValueError(f"allowed S3 rule {rule!r} is invalid: expected 'bucket' or 's3://bucket/prefix/'")
        body = rule[5:] if rule.lower().startswith("s3://") else rule
        bucket, _, prefix = body.partition("/")
        if not BUCKET_RE.fullmatch(bucket) or ".." in bucket or _looks_like_ip(bucket):
            raise ValueError(f"allowed S3 rule {rule!r} is invalid: bucket {bucket!r} is not a valid bucket name")
        prefix = prefix.strip("/")
        if prefix:
            # Only the {tenant} placeholder may appear; check the rest with it stood in for an id.
            probe = prefix.replace("{tenant}", "t")
            if "{" in probe or "}" in probe:
                raise ValueError(f"allowed S3 rule {rule!r} is invalid: the only placeholder is {{tenant}}")
            try:
                validate_key(probe, what="rule prefix")
            except ValueError as exc:
                raise ValueError(f"allowed S3 rule {rule!r} is invalid: {exc}") from exc
            prefix += "/"
        return bucket, prefix

    def check(self, uri: str, *, tenant: str) -> S3Location | Path:
        """Return the parsed location if `tenant` may read `uri`; else raise `InputNotAllowed`.

        The result is an `S3Location` for `s3://` URIs and a resolved `Path` for local inputs.
        """
        validate_id(tenant, "tenant")
        if not isinstance(uri, str) or not uri:
            raise InputNotAllowed(str(uri), "the URI must be a non-empty string")
        if len(uri) > MAX_URI_CHARS:
            raise InputNotAllowed(uri[:80] + "...", f"the URI is longer than {MAX_URI_CHARS} characters")
        if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in uri):
            raise InputNotAllowed(uri, "control characters are not allowed in input URIs")
        match = _SCHEME_RE.match(uri)
        if match is None:
            if not self.embedded:
                raise InputNotAllowed(uri, "local paths are accepted only in embedded mode; use an s3:// URI")
            return self._check_local(uri, uri)
        scheme = match.group(1).lower()
        if scheme == "s3":
            return self._check_s3(uri, tenant)
        if scheme == "file":
            if not self.embedded:
                raise InputNotAllowed(uri, "file:// URIs are accepted only in embedded mode; use an s3:// URI")
            parts = urlsplit(uri)
            if parts.netloc not in ("", "localhost"):
                raise InputNotAllowed(uri, f"file:// URIs may not name a host ({parts.netloc!r})")
            if parts.query or parts.fragment:
                raise InputNotAllowed(uri, "file:// URIs may not carry a query or fragment")
            return self._check_local(uri, unquote(parts.path))
        if scheme in ("http", "https"):
            try:
                host = urlsplit(uri).hostname
            except ValueError:
                host = None
            if _is_metadata_host(host):
                raise InputNotAllowed(uri, f"link-local / metadata-service host {host!r} is never fetched")
            raise InputNotAllowed(uri, f"{scheme}:// inputs are not fetched; upload the file and pass an s3:// URI")
        raise InputNotAllowed(uri, f"unknown scheme {scheme!r}; allowed: s3:// (local paths in embedded mode)")

    def _check_s3(self, uri: str, tenant: str) -> S3Location:
        body = uri[len("s3:") :]
        if not body.startswith("//"):
            raise InputNotAllowed(uri, "s3 URIs have the form s3://bucket/key")
        bucket, _, key = body[2:].partition("/")
        if _looks_like_ip(bucket):
            rule = "link-local / metadata-service host" if _is_metadata_host(bucket) else "IP address"
            raise InputNotAllowed(uri, f"bucket {bucket!r} is an {rule}, not a bucket name")
        if not BUCKET_RE.fullmatch(bucket) or ".." in bucket:
            raise InputNotAllowed(uri, f"bucket {bucket!r} is not a valid S3 bucket name")
        if not key or key.endswith("/"):
            raise InputNotAllowed(uri, "the URI must name an object, not a bucket or folder")
        if any(segment in ("", ".", "..") for segment in key.split("/")):
            raise InputNotAllowed(uri, "empty, '.' and '..' path segments are not allowed in input keys")
        for rule_bucket, rule_prefix in self._rules:
            if bucket == rule_bucket and key.startswith(rule_prefix.replace("{tenant}", tenant)):
                return S3Location(bucket, key)
        allowed = [f"s3://{b}/{p.replace('{tenant}', tenant)}" for b, p in self._rules]
        raise InputNotAllowed(uri, f"not under a bucket/prefix that tenant {tenant!r} may read (allowed: {allowed})")

    def _check_local(self, uri: str, raw_path: str) -> Path:
        if self.input_root is None:
            raise InputNotAllowed(uri, "local inputs need an input root, and none is configured")
        path = PurePosixPath(raw_path)
        if ".." in path.parts:
            raise InputNotAllowed(uri, "'..' path segments are not allowed")
        candidate = Path(path) if path.is_absolute() else self.input_root / path
        resolved = candidate.resolve()  # follows symlinks, so a link out of the root is caught below
        if not resolved.is_relative_to(self.input_root):
            raise InputNotAllowed(uri, f"the path resolves outside the input root {str(self.input_root)!r}")
        return resolved


def _looks_like_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


TenantRules = Callable[[str], "InputPolicy | None"]
"""tenant id -> that tenant's own extra input rules (None: none, or an unknown tenant)."""


class InputResolver:
    """Every input rule in one object: built once per process, used by the API and the engine.

    `storage`: the result storage (its tenant prefixes are readable by their tenant).
    `policy`: the deployment's rules. `tenant_rules`: each tenant's own S3 rules (e.g.
    `TenantStore.input_policy`). `s3_client`: reads `s3://` inputs outside the storage (service
    mode: the storage's own client; embedded mode: one only when S3 inputs are configured).
    """

    def __init__(
        self,
        storage: Storage,
        policy: InputPolicy,
        *,
        tenant_rules: TenantRules | None = None,
        s3_client: S3Client | None = None,
    ) -> None:
        self.storage = storage
        self.policy = policy
        self.tenant_rules = tenant_rules
        self.s3_client = s3_client

    def check(self, uri: str, *, tenant: str) -> None:
        """Raise `InputNotAllowed` (its message names the rule) unless `tenant` may read `uri`.

        Reads nothing: whether the object exists is `read`'s business.
        """
        self._locate(uri, tenant)

    def read(self, uri: str, *, tenant: str, max_bytes: int) -> bytes:
        """`check` the URI, then read it whole (at most `max_bytes`, checksum verified if recorded).

        Raises `InputNotAllowed`, `InputNotFound`, `InputTooLarge`, `ChecksumMismatch`,
        `StorageError` or `StorageUnavailable` (transient: the job is retried).
        """
        int_in_range("max_bytes", max_bytes, 1)
        location = self._locate(uri, tenant)
        try:
            if isinstance(location, str):
                return self.storage.read(location, max_bytes=max_bytes)
            if isinstance(location, S3Location):
                if self.s3_client is None:
                    raise InputNotAllowed(uri, "this deployment has no S3 client configured for s3:// inputs")
                return read_s3_object(self.s3_client, location.bucket, location.key, uri, max_bytes)
            return read_local_file(location, uri, max_bytes)
        except InputNotFound:
            raise
        except ObjectNotFound as exc:
            raise InputNotFound(uri) from exc

    def _locate(self, uri: str, tenant: str) -> str | S3Location | Path:
        """A storage key (the tenant's own object), a policy-approved S3 location or local path."""
        validate_id(tenant, "tenant")
        if isinstance(uri, str) and len(uri) <= MAX_URI_CHARS:
            key = self.storage.key_of(uri)
            if key is not None and key.startswith(self.storage.tenant_prefix(tenant)):
                return key
        try:
            return self.policy.check(uri, tenant=tenant)
        except InputNotAllowed:
            if self.tenant_rules is None or not isinstance(uri, str) or not uri.lower().startswith("s3://"):
                raise
            own = self.tenant_rules(tenant)
            if own is None:
                raise
            return own.check(uri, tenant=tenant)
