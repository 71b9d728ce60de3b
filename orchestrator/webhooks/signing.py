"""Standard Webhooks signatures (https://www.standardwebhooks.com): sign a delivery, verify one.

A tenant's secret is `whsec_` followed by the base64 of 32 random bytes; the key is those bytes.
Each delivery carries three headers::

    webhook-id:        msg_...            (the same on every retry of one event: deduplicate on it)
    webhook-timestamp: 1712345678         (Unix seconds of this attempt)
    webhook-signature: v1,<base64 HMAC-SHA256(key, f"{id}.{timestamp}.{body}")>

Several space-separated signatures may be present (while a rotated secret's predecessor is still
honoured); a receiver accepts the delivery when any of them matches its secret. `verify` is the
receiver's side and depends on nothing but the standard library, so receivers can copy its use:

    from orchestrator.webhooks.signing import verify
    verify(secret, request.headers, raw_body)   # raises WebhookVerificationError
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import time
from collections.abc import Iterable, Mapping

__all__ = [
    "SECRET_PREFIX",
    "WebhookVerificationError",
    "new_secret",
    "secret_key",
    "sign",
    "signature_header",
    "verify",
    "webhook_headers",
]

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32
DEFAULT_TOLERANCE_S = 300  # a delivery older or newer than this is refused (replay protection)


class WebhookVerificationError(ValueError):
    """A delivery's headers or signature do not check out; the message says which."""


def new_secret() -> str:
    """A fresh tenant secret: `whsec_<base64 of 32 random bytes>`."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode("ascii")


def secret_key(secret: str) -> bytes:
    """The HMAC key of a `whsec_...` secret (its base64-decoded bytes). ValueError if malformed."""
    if not isinstance(secret, str) or not secret.startswith(SECRET_PREFIX):
        raise ValueError(f"a webhook secret starts with {SECRET_PREFIX!r}")
    try:
        key = base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("a webhook secret is 'whsec_' followed by base64") from None
    if not key:
        raise ValueError("a webhook secret must not be empty")
    return key


def _body_bytes(body: bytes | str) -> bytes:
    return body.encode("utf-8") if isinstance(body, str) else bytes(body)


def sign(secret: str, msg_id: str, timestamp: int, body: bytes | str) -> str:
    """`v1,<base64 HMAC-SHA256>` of `{msg_id}.{timestamp}.{body}` under the secret's key."""
    signed = f"{msg_id}.{int(timestamp)}.".encode() + _body_bytes(body)
    digest = hmac.new(secret_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def signature_header(secrets_: Iterable[str], msg_id: str, timestamp: int, body: bytes | str) -> str:
    """The `webhook-signature` value: one `v1,...` signature per secret, space-separated."""
    parts = [sign(s, msg_id, timestamp, body) for s in secrets_]
    if not parts:
        raise ValueError("at least one secret is needed to sign a delivery")
    return " ".join(parts)


def webhook_headers(secrets_: Iterable[str], msg_id: str, timestamp: int, body: bytes | str) -> dict[str, str]:
    """The three Standard Webhooks headers of one attempt."""
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(timestamp)),
        "webhook-signature": signature_header(secrets_, msg_id, timestamp, body),
    }


def _header(headers: Mapping[str, str], name: str) -> str:
    for key, value in headers.items():
        if key.lower() == name:
            return value
    raise WebhookVerificationError(f"missing header {name!r}")


def verify(
    secret: str,
    headers: Mapping[str, str],
    body: bytes | str,
    *,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
    now: float | None = None,
) -> None:
    """Check a received delivery: `body` exactly as received (the raw bytes, not re-serialised JSON)
    and its headers (any case). Raises `WebhookVerificationError` when a header is missing, the
    timestamp is further than `tolerance_s` from now, or no `v1` signature matches."""
    msg_id = _header(headers, "webhook-id")
    raw_ts = _header(headers, "webhook-timestamp")
    signatures = _header(headers, "webhook-signature")
    try:
        timestamp = int(raw_ts)
    except ValueError:
        raise WebhookVerificationError(f"webhook-timestamp {raw_ts!r} is not an integer") from None
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_s:
        raise WebhookVerificationError(
            f"webhook-timestamp {timestamp} is {current - timestamp:+.0f} s from now (tolerance {tolerance_s:g} s)"
        )
    expected = sign(secret, msg_id, timestamp, body).encode("ascii")
    for candidate in signatures.split():
        if candidate.startswith("v1,") and hmac.compare_digest(candidate.encode("ascii", "replace"), expected):
            return
    raise WebhookVerificationError("no webhook-signature matches the secret")
