"""Webhooks: signed, durable deliveries of job, batch and workflow events (Standard Webhooks).

- `settings`: `WebhookSettings` (`AUDIO_OMNI_WEBHOOK_*`).
- `targets`: the URL and address policy (`check_webhook_target`), resolution pinned to one address.
- `signing`: tenant secrets (`whsec_...`), `sign` and `verify` (receivers may use `verify`).
- `keys`: the Redis keys of deliveries (`WebhookKeys`, from the deployment's `RedisKeys`).
- `deliveries`: delivery records in Redis, their state changes (Lua) and the tenant's listing.
- `payloads`: the body of a delivery (the object's API view).
- `sender`: one attempt over HTTP, pinned to the checked address, under a deadline.
- `dispatcher`: the loop that turns queue events into deliveries and sends them (`start_dispatcher`).

How to receive and verify deliveries: docs/webhooks.md.
"""
