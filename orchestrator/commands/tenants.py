"""`audio-omni tenants create|list|revoke|update`: manage API tenants and their keys.

    audio-omni tenants create acme --max-in-flight 500 --per-minute 120
        ... prints the new API key alone on its last line (shown once; only its hash is kept)
    audio-omni tenants create acme --new-key     # another key for an existing tenant (rotation)
    audio-omni tenants list
    audio-omni tenants revoke acme [--key-id ID]  # one key, or every key of the tenant
    audio-omni tenants update acme --max-steps 200 [--disable | --enable] [--admin | --no-admin]
    audio-omni tenants create ops --admin        # may use the operator routes (dead letters)
    audio-omni tenants webhook-secret acme [--rotate]
        ... prints the tenant's webhook signing secret (whsec_...), creating it if missing; --rotate
        replaces it (the previous one keeps signing deliveries for a day, AUDIO_OMNI_WEBHOOK_SECRET_OVERLAP_S)

Reads `REDIS_URL` / `AUDIO_OMNI_REDIS_PREFIX` like the API does.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from orchestrator.tenants import TenantLimits


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    parser.add_argument("--redis-url", default=None, help="Redis URL (default: $REDIS_URL)")
    parser.add_argument("--redis-prefix", default=None, help="Redis key prefix (default: aomni:)")
    sub = parser.add_subparsers(dest="tenants_action", metavar="ACTION", required=True)

    def limit_flags(p: argparse.ArgumentParser) -> None:
        p.add_argument("--max-in-flight", type=int, default=None, help="unfinished jobs at once")
        p.add_argument("--per-minute", type=int, default=None, help="submissions per minute")
        p.add_argument("--max-duration-s", type=float, default=None, help="longest audio a job may ask for")
        p.add_argument("--max-steps", type=int, default=None, help="most sampling steps a job may ask for")
        p.add_argument(
            "--allow-input",
            action="append",
            default=None,
            metavar="RULE",
            help="extra S3 input location (bucket or s3://bucket/prefix/); repeatable",
        )

    create = sub.add_parser("create", help="create a tenant and print a new API key (last line)")
    create.add_argument("tenant", help="tenant id: 1-64 of [A-Za-z0-9_.-]")
    create.add_argument("--new-key", action="store_true", help="the tenant exists: issue another key")
    create.add_argument(
        "--admin", action=argparse.BooleanOptionalAction, default=False, help="may use the operator routes"
    )
    limit_flags(create)
    sub.add_parser("list", help="list tenants, their limits and key ids")
    revoke = sub.add_parser("revoke", help="revoke a tenant's keys (all, or one by --key-id)")
    revoke.add_argument("tenant")
    revoke.add_argument("--key-id", default=None, help="revoke only this key (see `list`)")
    update = sub.add_parser("update", help="change a tenant's limits, or disable / enable it")
    update.add_argument("tenant")
    limit_flags(update)
    state = update.add_mutually_exclusive_group()
    state.add_argument("--disable", action="store_true", help="refuse all its keys")
    state.add_argument("--enable", action="store_true")
    update.add_argument(
        "--admin",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="grant (--admin) or withdraw (--no-admin) the operator routes",
    )
    secret = sub.add_parser("webhook-secret", help="print the tenant's webhook signing secret (created if missing)")
    secret.add_argument("tenant")
    secret.add_argument("--rotate", action="store_true", help="replace it with a new secret and print that")


def _limits(args: argparse.Namespace, base: TenantLimits | None = None) -> TenantLimits:
    """`base` (default: the default limits) with the limit flags that were given applied."""
    from orchestrator.tenants import TenantLimits

    changes: dict[str, object] = {
        "max_in_flight": args.max_in_flight,
        "submissions_per_minute": args.per_minute,
        "max_duration_s": args.max_duration_s,
        "max_steps": args.max_steps,
        "allowed_input_s3": tuple(args.allow_input) if args.allow_input is not None else None,
    }
    changes = {k: v for k, v in changes.items() if v is not None}
    current = (base or TenantLimits()).model_dump()
    return TenantLimits.model_validate({**current, **changes})


# The flag that sets each limit, to name it in an error.
_FLAGS = {
    "max_in_flight": "--max-in-flight",
    "submissions_per_minute": "--per-minute",
    "max_duration_s": "--max-duration-s",
    "max_steps": "--max-steps",
    "allowed_input_s3": "--allow-input",
}


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%SZ") if ts else "-"


def run(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from orchestrator.jobs import format_validation_error
    from orchestrator.settings import Settings
    from orchestrator.tenants import TenantExists, TenantNotFound, TenantStore

    settings = Settings.from_env(redis_url=args.redis_url, redis_prefix=args.redis_prefix)
    store = TenantStore.from_settings(settings)
    try:
        action = args.tenants_action
        if action == "create":
            if args.new_key:
                if store.get(args.tenant) is None:
                    raise TenantNotFound(args.tenant)
            else:
                tenant = store.create(args.tenant, _limits(args), admin=args.admin)
                role = " (admin)" if tenant.admin else ""
                print(f"created tenant {tenant.tenant_id}{role}: {tenant.limits.model_dump_json()}")
            key = store.issue_key(args.tenant)
            print("API key (shown once, store it now):")
            print(key)
            return 0
        if action == "list":
            rows = store.list_tenants()
            if not rows:
                print("no tenants")
            for t in rows:
                keys = ", ".join(k.key_id for k in store.api_keys(t.tenant_id)) or "none"
                state = (" ADMIN" if t.admin else "") + (" DISABLED" if t.disabled else "")
                lim = t.limits
                print(
                    f"{t.tenant_id}{state}  created {_when(t.created_at)}  in-flight {store.in_flight(t.tenant_id)}"
                    f"/{lim.max_in_flight}  per-minute {lim.submissions_per_minute}  max-duration "
                    f"{lim.max_duration_s:g}s  max-steps {lim.max_steps}  inputs {list(lim.allowed_input_s3)}  "
                    f"keys [{keys}]"
                )
            return 0
        if action == "revoke":
            if store.get(args.tenant) is None:
                raise TenantNotFound(args.tenant)
            count = store.revoke(args.tenant, args.key_id)
            print(f"revoked {count} key(s) of tenant {args.tenant}")
            return 0 if count or args.key_id is None else 1
        if action == "update":
            current = store.get(args.tenant)
            if current is None:
                raise TenantNotFound(args.tenant)
            disabled = True if args.disable else (False if args.enable else None)
            tenant = store.update(
                args.tenant, limits=_limits(args, current.limits), disabled=disabled, admin=args.admin
            )
            notes = ", ".join(n for n, on in (("admin", tenant.admin), ("disabled", tenant.disabled)) if on)
            print(
                f"updated tenant {tenant.tenant_id}{f' ({notes})' if notes else ''}: {tenant.limits.model_dump_json()}"
            )
            return 0
        if action == "webhook-secret":
            print(store.rotate_webhook_secret(args.tenant) if args.rotate else store.webhook_secret(args.tenant))
            return 0
        raise AssertionError(action)
    except (TenantExists, TenantNotFound) as exc:
        print(f"audio-omni tenants: {exc}", file=sys.stderr)
        return 1
    except ValidationError as exc:
        for field, message in format_validation_error(exc):
            print(f"audio-omni tenants: {_FLAGS.get(field, field)}: {message}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"audio-omni tenants: {exc}", file=sys.stderr)
        return 2
    finally:
        store.close()
