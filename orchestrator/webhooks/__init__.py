"""Webhooks: signed, durable deliveries of job, batch and workflow events (Standard Webhooks).

- `settings`: `WebhookSettings` (`AUDIO_OMNI_WEBHOOK_*`).
- `targets`: the URL and address policy (`check_webhook_target`), resolution pinned to one address.
- `signing`: tenant secrets (`whsec_...`), `sign` and `verify` (receivers may use `verify`).
- `deliveries`: delivery records in Redis, their state changes (Lua) and the tenant's listing.
- `dispatcher`: the loop that turns queue events into deliveries and sends them (`start_dispatcher`).
"""
