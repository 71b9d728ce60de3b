"""Standard Webhooks signing: checked against the specification's published test vector and an
independent computation of the algorithm; `verify` refuses every kind of tampering."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from orchestrator.webhooks.signing import (
    WebhookVerificationError,
    new_secret,
    secret_key,
    sign,
    signature_header,
    verify,
    webhook_headers,
)

# The example of the Standard Webhooks specification (and of its reference libraries' tests).
SPEC_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SPEC_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
SPEC_TS = 1614265330
SPEC_BODY = '{"test": 2432232314}'
SPEC_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def _independent_signature(secret: str, msg_id: str, ts: int, body: bytes) -> str:
    key = base64.b64decode(secret.split("_", 1)[1])
    mac = hmac.new(key, msg_id.encode() + b"." + str(ts).encode() + b"." + body, hashlib.sha256)
    return "v1," + base64.b64encode(mac.digest()).decode()


def test_the_specifications_test_vector():
    assert sign(SPEC_SECRET, SPEC_ID, SPEC_TS, SPEC_BODY) == SPEC_SIGNATURE
    verify(SPEC_SECRET, webhook_headers([SPEC_SECRET], SPEC_ID, SPEC_TS, SPEC_BODY), SPEC_BODY, now=SPEC_TS + 10)


def test_new_secrets_are_random_32_byte_keys_and_sign_like_the_spec_says():
    a, b = new_secret(), new_secret()
    assert a != b and a.startswith("whsec_") and len(secret_key(a)) == 32
    body = '{"type":"job.succeeded","data":{"job_id":"j1","text":"caf\u00e9"}}'.encode()
    assert sign(a, "msg_1-0", 1_700_000_000, body) == _independent_signature(a, "msg_1-0", 1_700_000_000, body)
    # str and bytes bodies sign the same UTF-8 bytes
    assert sign(a, "msg_1-0", 1, body.decode()) == sign(a, "msg_1-0", 1, body)


def test_verify_accepts_any_matching_signature_among_several():
    old, new = new_secret(), new_secret()
    headers = webhook_headers([new, old], "msg_9-1", 1000, b"{}")
    assert len(headers["webhook-signature"].split()) == 2
    verify(old, headers, b"{}", now=1000)
    verify(new, {k.upper(): v for k, v in headers.items()}, b"{}", now=1000)  # header names in any case


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda h, b: (h, b + b" "), "no webhook-signature matches"),
        (lambda h, b: ({**h, "webhook-id": "msg_other"}, b), "no webhook-signature matches"),
        (lambda h, b: ({**h, "webhook-timestamp": str(int(h["webhook-timestamp"]) + 1)}, b), "no webhook-signature"),
        (lambda h, b: ({**h, "webhook-timestamp": "soon"}, b), "not an integer"),
        (lambda h, b: ({k: v for k, v in h.items() if k != "webhook-id"}, b), "missing header 'webhook-id'"),
        (lambda h, b: ({**h, "webhook-signature": "v2," + h["webhook-signature"][3:]}, b), "no webhook-signature"),
    ],
)
def test_verify_refuses_tampering(change, message):
    secret = new_secret()
    headers = webhook_headers([secret], "msg_5-0", 5000, b'{"a":1}')
    bad_headers, bad_body = change(headers, b'{"a":1}')
    with pytest.raises(WebhookVerificationError, match=message):
        verify(secret, bad_headers, bad_body, now=5000)


def test_verify_refuses_another_secret_and_stale_or_future_timestamps():
    secret = new_secret()
    headers = webhook_headers([secret], "msg_5-0", 5000, b"x")
    with pytest.raises(WebhookVerificationError, match="no webhook-signature"):
        verify(new_secret(), headers, b"x", now=5000)
    with pytest.raises(WebhookVerificationError, match=r"\+301 s from now"):
        verify(secret, headers, b"x", now=5301)
    with pytest.raises(WebhookVerificationError, match="-400 s"):
        verify(secret, headers, b"x", now=4600)
    verify(secret, headers, b"x", now=5300)  # within the default tolerance of 300 s


@pytest.mark.parametrize("bad", ["", "secret", "whsec_", "whsec_not base64!", "whsk_AAAA"])
def test_malformed_secrets_are_refused_with_a_clear_message(bad):
    with pytest.raises(ValueError, match="webhook secret"):
        secret_key(bad)


def test_signing_needs_a_secret():
    with pytest.raises(ValueError, match="at least one secret"):
        signature_header([], "msg_1-0", 1, b"")
