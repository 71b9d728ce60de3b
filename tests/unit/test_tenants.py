"""Tenants, API keys and admission control on real Redis; the `audio-omni tenants` command."""

from __future__ import annotations

import argparse
import threading

import pytest
import redis
from pydantic import ValidationError

from orchestrator import tenants as tenants_mod
from orchestrator.tenants import (
    QuotaExceeded,
    RateLimited,
    TenantExists,
    TenantLimits,
    TenantNotFound,
    TenantStore,
    hash_api_key,
)


@pytest.fixture()
def store(redis_url, redis_prefix):
    s = TenantStore(redis_url, prefix=redis_prefix)
    yield s
    s.close()


def _all_redis_text(client: redis.Redis, prefix: str) -> str:
    parts = []
    for key in client.scan_iter(match=prefix + "*"):
        parts.append(key.decode())
        kind = client.type(key).decode()
        if kind == "hash":
            parts += [f"{k.decode()}={v.decode()}" for k, v in client.hgetall(key).items()]
        elif kind == "set":
            parts += [m.decode() for m in client.smembers(key)]
        elif kind == "string":
            parts.append(client.get(key).decode())
    return "\n".join(parts)


def test_create_get_list_and_duplicates(store):
    created = store.create("acme", TenantLimits(max_in_flight=5, allowed_input_s3=("s3://inputs/{tenant}/",)))
    assert store.get("acme") == created
    assert created.limits.max_in_flight == 5 and created.limits.allowed_input_s3 == ("s3://inputs/{tenant}/",)
    store.create("zeta")
    assert [t.tenant_id for t in store.list_tenants()] == ["acme", "zeta"]
    with pytest.raises(TenantExists):
        store.create("acme")
    assert store.get("nobody") is None and store.get("../etc") is None
    with pytest.raises(ValueError, match="tenant"):
        store.create("bad/id")


@pytest.mark.parametrize(
    "limits",
    [
        {"max_in_flight": 0},
        {"submissions_per_minute": -1},
        {"max_duration_s": 301.0},
        {"max_steps": 1001},
        {"allowed_input_s3": ("http://evil.example/",)},
        {"allowed_input_s3": ("s3://UPPER/",)},
        {"colour": "red"},
    ],
)
def test_limits_are_validated(limits):
    with pytest.raises(ValidationError):
        TenantLimits.model_validate(limits)


def test_keys_are_stored_only_as_hashes(store, redis_prefix):
    store.create("acme")
    key = store.issue_key("acme")
    assert key.startswith("aok_") and len(key) > 40
    assert store.authenticate(key).tenant_id == "acme"
    stored = _all_redis_text(store.redis, redis_prefix)
    assert key not in stored and key[4:] not in stored
    assert hash_api_key(key) in stored


def test_authenticate_refuses_unknown_malformed_revoked_and_disabled(store):
    store.create("acme")
    first, second = store.issue_key("acme"), store.issue_key("acme")
    assert store.authenticate("aok_unknown") is None
    assert store.authenticate("") is None and store.authenticate("x" * 1000) is None
    first_info, _ = sorted(store.api_keys("acme"), key=lambda k: k.key_id != hash_api_key(first)[:12])
    assert store.revoke("acme", first_info.key_id) == 1
    assert store.authenticate(first) is None and store.authenticate(second).tenant_id == "acme"
    assert store.revoke("acme", "not-a-key-id") == 0
    store.update("acme", disabled=True)
    assert store.authenticate(second) is None
    store.update("acme", disabled=False)
    assert store.authenticate(second).tenant_id == "acme"
    assert store.revoke("acme") == 1 and store.authenticate(second) is None
    with pytest.raises(TenantNotFound):
        store.issue_key("nobody")


def test_rate_limit_allows_the_per_minute_burst_then_says_how_long_to_wait(store):
    tenant = store.create("acme", TenantLimits(submissions_per_minute=5))
    for i in range(5):
        store.admit(tenant, [f"job-{i}"])
    with pytest.raises(RateLimited) as err:
        store.admit(tenant, ["job-5"])
    assert 0 < err.value.retry_after_s <= 12.0  # one emission interval is 60 s / 5
    assert store.in_flight("acme") == 5  # the refused submission reserved nothing


def test_in_flight_quota_counts_unfinished_jobs_only(store, redis_prefix):
    tenant = store.create("acme", TenantLimits(max_in_flight=3))
    store.admit(tenant, ["j1", "j2"])
    for job_id in ("j1", "j2"):
        store.redis.hset(f"{redis_prefix}job:{job_id}", mapping={"status": "running", "tenant": "acme"})
    store.admit(tenant, ["j3"])
    with pytest.raises(QuotaExceeded) as err:
        store.admit(tenant, ["j4"])
    assert (err.value.in_flight, err.value.limit) == (3, 3)
    store.redis.hset(f"{redis_prefix}job:j1", "status", "succeeded")
    # j3 has no job record yet but is inside its grace period: it still counts.
    store.admit(tenant, ["j4"])
    with pytest.raises(QuotaExceeded):
        store.admit(tenant, ["j5", "j6"])
    store.release("acme", ["j4"])
    store.admit(tenant, ["j5"])


def test_abandoned_reservations_expire_after_the_grace_period(store, monkeypatch):
    tenant = store.create("acme", TenantLimits(max_in_flight=2))
    store.admit(tenant, ["ghost-1", "ghost-2"])  # never became jobs (the API died mid-submit)
    with pytest.raises(QuotaExceeded):
        store.admit(tenant, ["j1"])
    # A negative grace puts every reservation past it at once (no waiting on the clock).
    monkeypatch.setattr(tenants_mod, "RESERVATION_GRACE_S", -0.001)
    store.admit(tenant, ["j1"])
    assert store.in_flight("acme") == 1


def test_admission_is_atomic_under_concurrency(redis_url, redis_prefix):
    setup = TenantStore(redis_url, prefix=redis_prefix)
    tenant = setup.create("acme", TenantLimits(max_in_flight=5))
    outcomes: list[str] = []
    lock = threading.Lock()

    def submit(i: int) -> None:
        s = TenantStore(redis_url, prefix=redis_prefix)
        try:
            s.admit(tenant, [f"job-{i}"])
            result = "ok"
        except QuotaExceeded:
            result = "quota"
        finally:
            s.close()
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes.count("ok") == 5 and outcomes.count("quota") == 15
    assert setup.in_flight("acme") == 5
    setup.close()


def _cli(redis_url: str, prefix: str, *argv: str) -> argparse.Namespace:
    from orchestrator.commands import tenants as cmd

    parser = argparse.ArgumentParser()
    cmd.add_arguments(parser, "tenants")
    return parser.parse_args(["--redis-url", redis_url, "--redis-prefix", prefix, *argv])


def test_tenants_command_create_list_revoke(redis_url, redis_prefix, capsys):
    from orchestrator.commands import tenants as cmd

    assert cmd.run(_cli(redis_url, redis_prefix, "create", "acme", "--max-in-flight", "7", "--per-minute", "9")) == 0
    key = capsys.readouterr().out.strip().splitlines()[-1]
    store = TenantStore(redis_url, prefix=redis_prefix)
    tenant = store.authenticate(key)
    assert tenant is not None and tenant.limits.max_in_flight == 7 and tenant.limits.submissions_per_minute == 9

    assert cmd.run(_cli(redis_url, redis_prefix, "create", "acme")) == 1  # exists
    assert "already exists" in capsys.readouterr().err
    assert cmd.run(_cli(redis_url, redis_prefix, "create", "acme", "--new-key")) == 0
    second = capsys.readouterr().out.strip().splitlines()[-1]
    assert second != key and store.authenticate(second).tenant_id == "acme"

    assert cmd.run(_cli(redis_url, redis_prefix, "list")) == 0
    listing = capsys.readouterr().out
    assert "acme" in listing and key not in listing and hash_api_key(key)[:12] in listing

    assert cmd.run(_cli(redis_url, redis_prefix, "revoke", "acme", "--key-id", hash_api_key(key)[:12])) == 0
    assert store.authenticate(key) is None and store.authenticate(second) is not None
    assert cmd.run(_cli(redis_url, redis_prefix, "revoke", "acme")) == 0
    assert store.authenticate(second) is None
    assert cmd.run(_cli(redis_url, redis_prefix, "create", "bad/name")) == 2
    capsys.readouterr()
    assert cmd.run(_cli(redis_url, redis_prefix, "create", "x1", "--max-steps", "0")) == 2
    err = capsys.readouterr().err
    assert "--max-steps: Input should be greater than or equal to 1 (got 0)" in err
    assert "input_value" not in err and "validation error" not in err  # no pydantic dump
    store.close()


def test_admin_flag_is_stored_granted_and_withdrawn(store):
    assert store.create("ops", admin=True).admin is True
    assert store.get("ops").admin is True
    plain = store.create("acme")
    assert plain.admin is False and store.get("acme").admin is False
    assert store.update("acme", admin=True).admin is True and store.get("acme").admin is True
    # other changes keep the flag
    assert store.update("acme", disabled=True).admin is True
    assert store.update("acme", admin=False).admin is False and store.get("acme").admin is False
    key = store.issue_key("ops")
    assert store.authenticate(key).admin is True


def test_webhook_secret_is_created_once_and_rotation_keeps_the_previous_one(store, monkeypatch):
    from orchestrator.webhooks.signing import secret_key

    store.create("acme")
    first = store.webhook_secret("acme")
    assert first.startswith("whsec_") and len(secret_key(first)) == 32
    assert store.webhook_secret("acme") == first  # created on first use only
    assert store.webhook_signing_secrets("acme", overlap_s=3600) == [first]
    rotated = store.rotate_webhook_secret("acme")
    assert rotated != first and store.webhook_secret("acme") == rotated
    assert store.webhook_signing_secrets("acme", overlap_s=3600) == [rotated, first]
    assert store.webhook_signing_secrets("acme", overlap_s=0) == [rotated]  # the overlap is over
    # a secret is never part of the tenant record handed to the API
    assert "whsec_" not in store.get("acme").model_dump_json()
    with pytest.raises(TenantNotFound):
        store.webhook_secret("nobody")
    with pytest.raises(TenantNotFound):
        store.rotate_webhook_secret("nobody")
    assert store.get("nobody") is None  # asking did not create a record


def test_tenants_command_admin_and_webhook_secret(redis_url, redis_prefix, capsys):
    from orchestrator.commands import tenants as cmd

    assert cmd.run(_cli(redis_url, redis_prefix, "create", "ops", "--admin")) == 0
    assert "created tenant ops (admin)" in capsys.readouterr().out
    assert cmd.run(_cli(redis_url, redis_prefix, "create", "acme")) == 0
    capsys.readouterr()
    store = TenantStore(redis_url, prefix=redis_prefix)
    assert store.get("ops").admin and not store.get("acme").admin
    assert cmd.run(_cli(redis_url, redis_prefix, "update", "acme", "--admin")) == 0
    assert "(admin)" in capsys.readouterr().out and store.get("acme").admin
    assert cmd.run(_cli(redis_url, redis_prefix, "update", "acme", "--no-admin", "--max-steps", "9")) == 0
    capsys.readouterr()
    assert not store.get("acme").admin and store.get("acme").limits.max_steps == 9
    assert cmd.run(_cli(redis_url, redis_prefix, "list")) == 0
    listing = capsys.readouterr().out.splitlines()
    assert any(line.startswith("ops ADMIN ") for line in listing)
    assert any(line.startswith("acme ") and "ADMIN" not in line for line in listing)

    assert cmd.run(_cli(redis_url, redis_prefix, "webhook-secret", "acme")) == 0
    secret = capsys.readouterr().out.strip()
    assert secret.startswith("whsec_") and secret == store.webhook_secret("acme")
    assert cmd.run(_cli(redis_url, redis_prefix, "webhook-secret", "acme")) == 0
    assert capsys.readouterr().out.strip() == secret
    assert cmd.run(_cli(redis_url, redis_prefix, "webhook-secret", "acme", "--rotate")) == 0
    rotated = capsys.readouterr().out.strip()
    assert rotated != secret and rotated == store.webhook_secret("acme")
    assert cmd.run(_cli(redis_url, redis_prefix, "webhook-secret", "nobody")) == 1
    assert "tenant 'nobody' not found" in capsys.readouterr().err
    store.close()
