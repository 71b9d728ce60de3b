"""Webhook delivery end to end: real Redis, a real HTTP receiver on loopback (allowed by setting),
real dispatchers (in this process, and `audio-omni webhooks run` subprocesses that get SIGKILLed).

Signatures are checked with the Standard Webhooks algorithm written out here, independently of
`orchestrator.webhooks.signing`."""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import redis

from orchestrator.jobs import JobStatus
from orchestrator.keys import RedisKeys
from orchestrator.queue import JobQueue
from orchestrator.tenants import TenantStore
from orchestrator.webhooks.deliveries import DeliveryStore
from orchestrator.webhooks.dispatcher import WebhookDispatcher, retry_delay_s
from orchestrator.webhooks.keys import WebhookKeys
from orchestrator.webhooks.settings import WebhookSettings

REPO_ROOT = Path(__file__).resolve().parents[2]
TENANT = "hooks"


# --------------------------------------------------------------------------- a receiver


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    path: str


@dataclass
class Receiver:
    """A loopback HTTP server that records every POST and answers with `statuses` in turn (then 200).
    While `hold` is set, requests wait (up to 30 s) before answering."""

    server: ThreadingHTTPServer
    statuses: list[int] = field(default_factory=list)
    requests: list[Received] = field(default_factory=list)
    arrived: threading.Event = field(default_factory=threading.Event)
    hold: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    scheme: str = "http"

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.server.server_address[1]}/hook"

    def wait_for(self, count: int, timeout_s: float = 30.0) -> list[Received]:
        deadline = time.monotonic() + timeout_s
        while len(self.requests) < count:
            assert time.monotonic() < deadline, f"receiver got {len(self.requests)} of {count} deliveries"
            time.sleep(0.02)
        return list(self.requests)


def _start_receiver(ssl_context: ssl.SSLContext | None = None) -> Receiver:
    receiver: Receiver

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["content-length"]))
            receiver.requests.append(Received({k.lower(): v for k, v in self.headers.items()}, body, self.path))
            receiver.arrived.set()
            if receiver.hold.is_set():
                receiver.release.wait(30)
            status = receiver.statuses.pop(0) if receiver.statuses else 200
            self.send_response(status)
            self.send_header("content-length", "2")
            self.end_headers()
            self.wfile.write(b"no" if status >= 300 else b"ok")

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    if ssl_context is not None:
        server.socket = ssl_context.wrap_socket(server.socket, server_side=True)
    receiver = Receiver(server=server, scheme="https" if ssl_context else "http")
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return receiver


@pytest.fixture()
def receiver() -> Iterator[Receiver]:
    r = _start_receiver()
    yield r
    r.release.set()
    r.server.shutdown()
    r.server.server_close()


# --------------------------------------------------------------------------- the system


@pytest.fixture()
def client(redis_url) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(redis_url)
    yield c
    c.close()


@pytest.fixture()
def keys(redis_prefix) -> RedisKeys:
    return RedisKeys(redis_prefix)


@pytest.fixture()
def queue(client, redis_prefix) -> JobQueue:
    return JobQueue(client, prefix=redis_prefix)


@pytest.fixture()
def tenants(client, redis_prefix) -> TenantStore:
    store = TenantStore(client, prefix=redis_prefix)
    store.create(TENANT)
    return store


def _settings(**overrides: object) -> WebhookSettings:
    values: dict[str, object] = {
        "allow_hosts": ("127.0.0.1",),
        "retry_schedule_s": (0.2, 0.2, 0.2),
        "jitter": 0.0,
        "timeout_s": 2.0,
        "connect_timeout_s": 1.0,
        "delivery_lease_s": 6.0,
        "event_claim_idle_s": 0.5,
        "poll_interval_s": 0.1,
        "concurrency": 4,
    }
    values.update(overrides)
    return WebhookSettings(**values)


@pytest.fixture()
def run_dispatcher(client, keys) -> Iterator[Callable[..., WebhookDispatcher]]:
    """`run_dispatcher(settings=None)`: a dispatcher looping in a thread until the test ends."""
    started: list[tuple[threading.Event, threading.Thread]] = []

    def start(settings: WebhookSettings | None = None, **kwargs: object) -> WebhookDispatcher:
        dispatcher = WebhookDispatcher(client, keys, settings or _settings(), **kwargs)  # type: ignore[arg-type]
        stop = threading.Event()
        thread = threading.Thread(target=dispatcher.run, args=(stop,), daemon=True)
        thread.start()
        started.append((stop, thread))
        return dispatcher

    yield start
    for stop, _thread in started:
        stop.set()
    for _, thread in started:
        thread.join(30)


def _add_event(client: redis.Redis, keys: RedisKeys, kind: str, object_id: str, event: str, url: str) -> str:
    """An event in the contract's format (what the queue's scripts append)."""
    entry = client.xadd(
        WebhookKeys(keys).events, {"object": kind, "id": object_id, "event": event, "tenant": TENANT, "url": url}
    )
    return entry.decode()


def _finished_job(queue: JobQueue, job_id: str = "job-1", batch_id: str | None = None) -> str:
    spec = {"task": "text_to_audio", "prompt": "rain", "tenant": TENANT}
    if batch_id:
        spec["batch_id"] = batch_id
    queue.submit(spec, job_id=job_id)
    return job_id


def _check_signature(secret: str, received: Received) -> None:
    """The Standard Webhooks check, written out: HMAC-SHA256 over `id.timestamp.body` with the
    base64-decoded secret, one of the space-separated `v1,` signatures must match."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{received.headers['webhook-id']}.{received.headers['webhook-timestamp']}.".encode() + received.body
    expected = "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    assert expected in received.headers["webhook-signature"].split(" ")
    assert abs(time.time() - int(received.headers["webhook-timestamp"])) < 60


def _wait_status(store: DeliveryStore, delivery_id: str, status: str, timeout_s: float = 30.0):
    deadline = time.monotonic() + timeout_s
    while True:
        view = store.get(delivery_id)
        if view is not None and view.status == status:
            return view
        assert time.monotonic() < deadline, f"delivery {delivery_id} is {view}, not {status}"
        time.sleep(0.02)


# --------------------------------------------------------------------------- tests


def test_one_correctly_signed_delivery_per_event(client, keys, queue, tenants, receiver, run_dispatcher):
    job_id = _finished_job(queue)
    _finished_job(queue, "job-2", batch_id="batch-1")
    entries = [
        _add_event(client, keys, "job", job_id, "succeeded", receiver.url),
        _add_event(client, keys, "batch", "batch-1", "completed", receiver.url + "?src=batch"),
        _add_event(client, keys, "job", "gone-job", "failed", receiver.url),
    ]
    dispatcher = run_dispatcher()
    got = receiver.wait_for(3)
    for entry in entries:
        _wait_status(dispatcher.store, "msg_" + entry, "delivered")
    time.sleep(0.5)  # a few more rounds of the loop: nothing is sent twice
    assert len(receiver.requests) == 3

    secret = tenants.webhook_secret(TENANT)
    by_id = {r.headers["webhook-id"]: r for r in got}
    assert set(by_id) == {"msg_" + e for e in entries}
    for received in got:
        _check_signature(secret, received)
        assert received.headers["content-type"] == "application/json"
        assert received.headers["host"] == f"127.0.0.1:{receiver.server.server_address[1]}"

    job = json.loads(by_id["msg_" + entries[0]].body)
    assert job["type"] == "job.succeeded" and job["data"]["job_id"] == job_id
    assert job["data"]["status"] == JobStatus.QUEUED.value  # the record as it stands (no engine ran)
    when = datetime.datetime.fromisoformat(job["timestamp"].replace("Z", "+00:00"))
    assert when.tzinfo is not None and abs(when.timestamp() - time.time()) < 60
    batch = json.loads(by_id["msg_" + entries[1]].body)
    assert batch["type"] == "batch.completed" and batch["data"]["batch_id"] == "batch-1"
    assert by_id["msg_" + entries[1]].path == "/hook?src=batch"
    gone = json.loads(by_id["msg_" + entries[2]].body)
    assert gone["type"] == "job.failed" and gone["data"] == {"job_id": "gone-job"}

    view = dispatcher.store.get("msg_" + entries[0])
    assert view.attempts == 1 and view.last_status_code == 200 and view.delivered_at is not None
    assert client.xlen(WebhookKeys(keys).events) == 0  # taken in, acknowledged and dropped


def test_a_receiver_failing_twice_gets_the_event_on_the_third_try(
    client, keys, queue, tenants, receiver, run_dispatcher
):
    receiver.statuses = [500, 500]
    entry = _add_event(client, keys, "job", _finished_job(queue), "succeeded", receiver.url)
    dispatcher = run_dispatcher()
    view = _wait_status(dispatcher.store, "msg_" + entry, "delivered")
    got = receiver.wait_for(3)
    assert len(got) == 3 and view.attempts == 3 and view.last_status_code == 200 and view.last_error is None
    assert {r.headers["webhook-id"] for r in got} == {"msg_" + entry}  # one id: receivers deduplicate
    assert len({r.body for r in got}) == 1  # the same body every time, signed afresh
    secret = tenants.webhook_secret(TENANT)
    for received in got:
        _check_signature(secret, received)


def test_retries_run_out_and_410_stops_at_once(client, keys, queue, tenants, receiver, run_dispatcher):
    receiver.statuses = [503] * 3 + [410]
    settings = _settings(retry_schedule_s=(0.1, 0.1))
    first = _add_event(client, keys, "job", _finished_job(queue), "succeeded", receiver.url)
    dispatcher = run_dispatcher(settings)
    failed = _wait_status(dispatcher.store, "msg_" + first, "failed")
    assert failed.attempts == 3 and failed.last_status_code == 503 and "HTTP 503: no" in failed.last_error
    assert failed.next_attempt_at is None
    second = _add_event(client, keys, "job", "job-1", "cancelled", receiver.url)
    gone = _wait_status(dispatcher.store, "msg_" + second, "failed")
    assert gone.attempts == 1 and gone.last_status_code == 410 and "410 Gone" in gone.last_error
    assert len(receiver.requests) == 4


def test_an_address_the_policy_refuses_is_never_contacted(client, keys, queue, tenants, receiver, run_dispatcher):
    entry = _add_event(client, keys, "job", _finished_job(queue), "succeeded", receiver.url)
    dispatcher = run_dispatcher(_settings(allow_hosts=()))
    view = _wait_status(dispatcher.store, "msg_" + entry, "failed")
    assert view.attempts == 1 and view.last_status_code is None
    assert "127.0.0.1 is a loopback address" in view.last_error
    assert receiver.requests == []


def test_backoff_is_jittered_within_its_cap():
    settings = WebhookSettings(retry_schedule_s=(5, 30, 120), jitter=1.0, allow_hosts=())
    draws = [retry_delay_s(settings, 2) for _ in range(200)]
    assert all(0 <= d <= 30 for d in draws) and max(draws) - min(draws) > 10
    half = WebhookSettings(retry_schedule_s=(5, 30, 120), jitter=0.5, allow_hosts=())
    assert all(60 <= retry_delay_s(half, 3) <= 120 for _ in range(100))
    assert retry_delay_s(settings, 4) is None  # the schedule ran out: the delivery fails


def _dispatcher_process(redis_url: str, prefix: str, log: Path, **env: str) -> subprocess.Popen:
    environment = {
        **os.environ,
        "AUDIO_OMNI_REDIS_URL": redis_url,
        "AUDIO_OMNI_REDIS_PREFIX": prefix,
        "AUDIO_OMNI_WEBHOOK_ALLOW_HOSTS": "127.0.0.1",
        "AUDIO_OMNI_WEBHOOK_POLL_INTERVAL_S": "0.1",
        **env,
    }
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "orchestrator.cli", "webhooks", "run"],
            cwd=REPO_ROOT,
            env=environment,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def test_a_dispatcher_killed_mid_delivery_loses_nothing(
    client, keys, queue, tenants, receiver, run_dispatcher, redis_url, redis_prefix, tmp_path
):
    receiver.hold.set()  # the first delivery hangs in the receiver while its sender is killed
    entry = _add_event(client, keys, "job", _finished_job(queue), "succeeded", receiver.url)
    log = tmp_path / "dispatcher.log"
    proc = _dispatcher_process(
        redis_url,
        redis_prefix,
        log,
        AUDIO_OMNI_WEBHOOK_TIMEOUT_S="1",
        AUDIO_OMNI_WEBHOOK_CONNECT_TIMEOUT_S="0.5",
        AUDIO_OMNI_WEBHOOK_DELIVERY_LEASE_S="3",
    )
    try:
        assert receiver.arrived.wait(60), log.read_text()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    receiver.hold.clear()
    receiver.release.set()
    store = DeliveryStore(client, keys)
    assert store.get("msg_" + entry).status == "pending"

    dispatcher = run_dispatcher()  # takes the delivery over once the dead one's lease lapses
    view = _wait_status(dispatcher.store, "msg_" + entry, "delivered")
    got = receiver.wait_for(2)
    time.sleep(0.5)
    assert len(receiver.requests) == 2 and view.attempts == 2
    assert {r.headers["webhook-id"] for r in got} == {"msg_" + entry}


def test_an_event_read_by_a_dead_dispatcher_is_taken_over(client, keys, queue, tenants, receiver, run_dispatcher):
    events = WebhookKeys(keys).events
    client.xgroup_create(events, "webhooks", id="0", mkstream=True)
    entry = _add_event(client, keys, "job", _finished_job(queue), "succeeded", receiver.url)
    # a dispatcher reads the event, then dies before taking it in: the entry stays pending for it
    assert client.xreadgroup("webhooks", "dead-dispatcher", {events: ">"}, count=10)
    dispatcher = run_dispatcher()
    _wait_status(dispatcher.store, "msg_" + entry, "delivered")
    assert len(receiver.wait_for(1)) == 1
    assert client.xpending(events, "webhooks")["pending"] == 0


def test_two_dispatchers_send_each_event_once(client, keys, queue, tenants, receiver, run_dispatcher):
    entries = [
        _add_event(client, keys, "job", _finished_job(queue, f"j{i}"), "succeeded", receiver.url) for i in range(20)
    ]
    first, _second = run_dispatcher(), run_dispatcher()
    for entry in entries:
        _wait_status(first.store, "msg_" + entry, "delivered")
    time.sleep(0.5)
    ids = [r.headers["webhook-id"] for r in receiver.requests]
    assert sorted(ids) == sorted("msg_" + e for e in entries)


def test_after_a_rotation_deliveries_carry_both_signatures(client, keys, queue, tenants, receiver, run_dispatcher):
    old = tenants.webhook_secret(TENANT)
    new = tenants.rotate_webhook_secret(TENANT)
    assert new != old and tenants.webhook_secret(TENANT) == new
    entry = _add_event(client, keys, "job", _finished_job(queue), "succeeded", receiver.url)
    dispatcher = run_dispatcher()
    _wait_status(dispatcher.store, "msg_" + entry, "delivered")
    (received,) = receiver.wait_for(1)
    _check_signature(new, received)
    _check_signature(old, received)
    # without an overlap, only the current secret signs
    assert tenants.webhook_signing_secrets(TENANT, overlap_s=0) == [new]


def test_listing_pages_newest_first_filtered_by_status(client, keys, queue, tenants, receiver, run_dispatcher):
    receiver.statuses = [410]  # the first delivery fails at once; the rest are delivered
    entries = []
    dispatcher = run_dispatcher()
    for i in range(5):  # one at a time: each is created after the previous one
        entries.append(_add_event(client, keys, "job", _finished_job(queue, f"j{i}"), "succeeded", receiver.url))
        _wait_status(dispatcher.store, "msg_" + entries[-1], "failed" if i == 0 else "delivered")
    store = dispatcher.store
    seen, cursor = [], None
    while True:
        page = store.page(TENANT, limit=2, cursor=cursor)
        seen += [d.delivery_id for d in page.items]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == ["msg_" + e for e in reversed(entries)]
    assert [d.delivery_id for d in store.page(TENANT, status="failed").items] == ["msg_" + entries[0]]
    assert len(store.page(TENANT, status="delivered").items) == 4
    assert store.page(TENANT, status="pending").items == []
    assert store.page("someone-else").items == []
    with pytest.raises(ValueError, match="cursor 'bogus' is invalid"):
        store.page(TENANT, cursor="bogus")
    with pytest.raises(ValueError, match="delivery status 'lost' is invalid"):
        store.page(TENANT, status="lost")


def _self_signed(tmp_path: Path, host: str) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


def test_https_goes_to_the_checked_address_with_the_host_name_as_tls_server_name(
    client, keys, queue, tenants, run_dispatcher, tmp_path
):
    cert, key = _self_signed(tmp_path, "hooks.test")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server_names: list[str | None] = []
    context.sni_callback = lambda sock, name, ctx: server_names.append(name)
    receiver = _start_receiver(context)
    port = receiver.server.server_address[1]
    try:
        lookups: list[str] = []

        def resolver(host, *args):  # "hooks.test" names the loopback receiver; resolved once per attempt
            lookups.append(host)
            return socket.getaddrinfo("127.0.0.1", *args)

        settings = _settings(allow_hosts=("hooks.test", "127.0.0.1"), ca_bundle=str(cert))
        good = _add_event(client, keys, "job", _finished_job(queue), "succeeded", f"https://hooks.test:{port}/in")
        dispatcher = run_dispatcher(settings, resolver=resolver)
        _wait_status(dispatcher.store, "msg_" + good, "delivered")
        (received,) = receiver.wait_for(1)
        assert received.headers["host"] == f"hooks.test:{port}" and server_names == ["hooks.test"]
        assert lookups == ["hooks.test"]

        # a name the certificate does not cover fails the TLS check, though it resolves to the same address
        wrong = _add_event(client, keys, "job", "job-1", "failed", f"https://127.0.0.1:{port}/in")
        failed = _wait_status(dispatcher.store, "msg_" + wrong, "failed", timeout_s=60)
        assert "ConnectError" in failed.last_error and len(receiver.requests) == 1
    finally:
        receiver.server.shutdown()
        receiver.server.server_close()


# --------------------------------------------------------------------------- through the API and the queue


@pytest.fixture()
def api(redis_url, redis_prefix, tmp_path, monkeypatch):
    """The HTTP API on loopback over the test's Redis prefix (results in a local folder), with a
    key of tenant `hooks` and one of tenant `other`."""
    import httpx

    from orchestrator.api import create_app, serve_in_thread
    from orchestrator.storage import LocalStorage

    monkeypatch.delenv("AUDIO_OMNI_WEBHOOK_ALLOW_HOSTS", raising=False)
    queue = JobQueue(redis_url, prefix=redis_prefix, lease_s=30)
    storage = LocalStorage(tmp_path / "results")
    store = TenantStore(queue.redis, prefix=redis_prefix)
    store.create(TENANT)
    store.create("other")
    key, other_key = store.issue_key(TENANT), store.issue_key("other")
    app = create_app(None, queue=queue, storage=storage, tenants=store)
    with (
        serve_in_thread(app) as url,
        httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}) as http,
        httpx.Client(base_url=url, headers={"Authorization": f"Bearer {other_key}"}) as other,
    ):
        yield {"http": http, "other": other, "queue": queue, "storage": storage, "tenants": store}
    queue.close()


def _play_engine(api, job_id: str, *, fail: str | None = None) -> None:
    """What an engine does with one job: claim it, then write a result and acknowledge, or fail it."""
    queue, storage = api["queue"], api["storage"]
    (claim,) = queue.claim("test-engine", count=1, block_ms=2000)
    assert claim.job_id == job_id
    if fail is not None:
        queue.fail(claim, fail, retryable=False, error_code="bad_audio")
        return
    location = storage.put_result(
        tenant=claim.tenant, job_id=claim.job_id, batch_id=claim.batch_id, metadata={"seed": claim.seed}, data=b"RIFF"
    )
    queue.ack_success(claim, location.result_uri, extra={"metadata_uri": location.metadata_uri})


def _bodies(receiver: Receiver, count: int) -> dict[str, dict]:
    return {json.loads(r.body)["type"] + ":" + r.path: json.loads(r.body) for r in receiver.wait_for(count)}


def test_submit_over_http_finish_in_the_queue_delivery_to_the_receiver(
    api, receiver, run_dispatcher, monkeypatch, client, keys
):
    http = api["http"]
    t2a = {"task": "text_to_audio", "prompt": "rain on a tin roof"}
    # refused at submission: private, metadata, loopback literal and a name that resolves to loopback
    for url in ("http://10.0.0.1/hook", "http://169.254.169.254/latest", "http://[::1]/x", receiver.url):
        response = http.post("/v1/jobs", json={**t2a, "webhook_url": url})
        assert response.status_code == 422, response.text
        assert response.json()["error"]["code"] == "webhook_url_refused"
    response = http.post("/v1/jobs", json={**t2a, "webhook_url": "http://localhost:9/hook"})
    assert response.status_code == 422 and "loopback" in response.json()["error"]["message"]
    response = http.post("/v1/batches", json={"jobs": [t2a], "webhook_url": "http://192.168.0.1/"})
    assert response.status_code == 422 and response.json()["error"]["code"] == "webhook_url_refused"
    assert sum(api["queue"].queue_depths().values()) == 0

    monkeypatch.setenv("AUDIO_OMNI_WEBHOOK_ALLOW_HOSTS", "127.0.0.1")  # the deployment allows the receiver
    job = http.post(
        "/v1/jobs",
        json={**t2a, "webhook_url": receiver.url + "?job", "metadata": {"order": 7}, "custom_id": "row-7"},
    )
    assert job.status_code == 201, job.text
    job_id = job.json()["job_id"]
    cancelled = http.post("/v1/jobs", json={**t2a, "webhook_url": receiver.url + "?cancel"}).json()["job_id"]
    batch = http.post("/v1/batches", json={"jobs": [t2a, t2a], "webhook_url": receiver.url + "?batch"})
    assert batch.status_code == 201, batch.text
    batch_id, batch_jobs = batch.json()["batch_id"], batch.json()["job_ids"]

    dispatcher = run_dispatcher()
    _play_engine(api, job_id)
    assert http.delete(f"/v1/jobs/{cancelled}").status_code == 200
    _play_engine(api, batch_jobs[0])
    _play_engine(api, batch_jobs[1], fail="the input is not audio")

    got = _bodies(receiver, 3)
    time.sleep(0.5)
    assert len(receiver.requests) == 3  # one per event; the batch's own jobs have no webhook_url
    assert set(got) == {"job.succeeded:/hook?job", "job.cancelled:/hook?cancel", "batch.completed:/hook?batch"}
    data = got["job.succeeded:/hook?job"]["data"]
    assert data["job_id"] == job_id and data["status"] == "succeeded" and data["result_available"] is True
    assert data["metadata"] == {"order": 7} and data["custom_id"] == "row-7"
    assert got["job.cancelled:/hook?cancel"]["data"]["status"] == "cancelled"
    done = got["batch.completed:/hook?batch"]["data"]
    assert done["batch_id"] == batch_id and done["done"] is True
    assert done["counts"]["succeeded"] == 1 and done["counts"]["failed"] == 1
    secret = api["tenants"].webhook_secret(TENANT)
    for received in receiver.requests:
        _check_signature(secret, received)

    # the tenant sees its deliveries over HTTP; another tenant sees none of them
    listing = http.get("/v1/webhooks/deliveries", params={"limit": 2})
    assert listing.status_code == 200, listing.text
    first = listing.json()
    assert len(first["items"]) == 2 and first["next_cursor"]
    rest = http.get("/v1/webhooks/deliveries", params={"cursor": first["next_cursor"]}).json()
    items = first["items"] + rest["items"]
    assert rest["next_cursor"] is None and len(items) == 3
    assert {i["type"] for i in items} == {"job.succeeded", "job.cancelled", "batch.completed"}
    assert all(i["status"] == "delivered" and i["attempts"] == 1 and i["last_status_code"] == 200 for i in items)
    assert {i["delivery_id"] for i in items} == {r.headers["webhook-id"] for r in receiver.requests}
    failed = http.get("/v1/webhooks/deliveries", params={"status": "failed"}).json()
    assert failed == {"items": [], "next_cursor": None}
    assert api["other"].get("/v1/webhooks/deliveries").json()["items"] == []
    bad = http.get("/v1/webhooks/deliveries", params={"cursor": "not-a-cursor"})
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "cursor"
    assert http.get("/v1/webhooks/deliveries", params={"status": "lost"}).status_code == 422
    assert client.xlen(WebhookKeys(keys).events) == 0
    assert dispatcher.store.pending_events(group="webhooks") == 0


def test_webhooks_deliveries_command(
    client, keys, queue, tenants, receiver, run_dispatcher, redis_url, capsys, monkeypatch
):
    from orchestrator.cli import main

    entry = _add_event(client, keys, "job", _finished_job(queue), "succeeded", receiver.url)
    _wait_status(run_dispatcher().store, "msg_" + entry, "delivered")
    argv = ["webhooks", "--redis-url", redis_url, "--redis-prefix", keys.prefix, "deliveries", "--tenant", TENANT]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert f"msg_{entry}  job.succeeded  job-1  delivered  attempts 1  last 200" in out
    assert main([*argv, "--json", "--status", "delivered"]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    assert json.loads(line)["delivery_id"] == "msg_" + entry
    assert main([*argv, "--status", "failed"]) == 0
    assert capsys.readouterr().out.strip() == "no deliveries"
    assert main([*argv, "--cursor", "zzz"]) == 2
    assert "cursor 'zzz' is invalid" in capsys.readouterr().err
    # a bad setting stops `webhooks run` at once, naming the variable
    monkeypatch.setenv("AUDIO_OMNI_WEBHOOK_ALLOW_HOSTS", "10.0.0.0/33")
    assert main(["webhooks", "--redis-url", redis_url, "run"]) == 2
    assert "AUDIO_OMNI_WEBHOOK_ALLOW_HOSTS: webhook allow entry '10.0.0.0/33' is invalid" in capsys.readouterr().err


def test_workflows_announce_their_end(api, receiver, run_dispatcher, monkeypatch):
    monkeypatch.setenv("AUDIO_OMNI_WEBHOOK_ALLOW_HOSTS", "127.0.0.1")
    http = api["http"]
    steps = [
        {"id": "rain", "task": "text_to_audio", "prompt": "rain", "duration_s": 1.0, "steps": 2},
        {"id": "wind", "task": "text_to_audio", "prompt": "wind", "duration_s": 1.0, "steps": 2},
    ]
    refused = http.post("/v1/workflows", json={"steps": steps, "webhook_url": "http://10.1.1.1/"})
    assert refused.status_code == 422 and refused.json()["error"]["code"] == "webhook_url_refused"
    done = http.post("/v1/workflows", json={"steps": steps, "webhook_url": receiver.url + "?done"})
    assert done.status_code in (200, 201, 202), done.text
    stopped = http.post("/v1/workflows", json={"steps": steps, "webhook_url": receiver.url + "?stopped"})
    done_id, stopped_id = done.json()["workflow_id"], stopped.json()["workflow_id"]
    assert http.delete(f"/v1/workflows/{stopped_id}").status_code == 200
    run_dispatcher()
    for step in done.json()["steps"]:
        _play_engine(api, step["job_id"])
    got = _bodies(receiver, 2)
    time.sleep(0.5)
    assert set(got) == {"workflow.succeeded:/hook?done", "workflow.cancelled:/hook?stopped"}
    assert len(receiver.requests) == 2  # the steps themselves have no webhook_url
    succeeded = got["workflow.succeeded:/hook?done"]["data"]
    assert succeeded["workflow_id"] == done_id and succeeded["status"] == "succeeded"
    assert [s["status"] for s in succeeded["steps"]] == ["succeeded", "succeeded"]
    assert got["workflow.cancelled:/hook?stopped"]["data"]["workflow_id"] == stopped_id


def test_malformed_events_are_dropped_and_unknown_tenants_wait_for_their_secret(
    client, keys, queue, tenants, receiver, run_dispatcher
):
    events = WebhookKeys(keys).events
    client.xadd(events, {"object": "planet", "id": "p1", "event": "exploded", "tenant": TENANT, "url": receiver.url})
    client.xadd(events, {"object": "job", "id": "j1"})  # no event, tenant or url
    stranger = client.xadd(
        events, {"object": "job", "id": "j9", "event": "failed", "tenant": "stranger", "url": receiver.url}
    ).decode()
    good = _add_event(client, keys, "job", _finished_job(queue), "succeeded", receiver.url)
    dispatcher = run_dispatcher(_settings(retry_schedule_s=(0.3,) * 10))
    _wait_status(dispatcher.store, "msg_" + good, "delivered")
    assert client.xlen(events) == 0  # the malformed entries were acknowledged and deleted
    waiting = dispatcher.store.get("msg_" + stranger)
    deadline = time.monotonic() + 20
    while waiting.attempts < 2:  # retried: an operator may still create the tenant
        assert time.monotonic() < deadline
        time.sleep(0.05)
        waiting = dispatcher.store.get("msg_" + stranger)
    assert waiting.status == "pending" and "tenant 'stranger' is not registered" in waiting.last_error
    tenants.create("stranger")
    _wait_status(dispatcher.store, "msg_" + stranger, "delivered")
    assert len(receiver.wait_for(2)) == 2
    _check_signature(tenants.webhook_secret("stranger"), receiver.requests[-1])


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_a_receiver_that_trickles_its_answer_is_cut_off_at_the_attempt_deadline(
    client, keys, queue, tenants, run_dispatcher, tmp_path, scheme
):
    """httpx's read timeout restarts with every byte; the attempt's own deadline does not."""
    context = None
    if scheme == "https":
        cert, key = _self_signed(tmp_path, "hooks.test")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    closed = threading.Event()

    def trickle() -> None:
        conn, _ = listener.accept()
        if context is not None:
            conn = context.wrap_socket(conn, server_side=True)
        conn.recv(65536)
        try:
            conn.sendall(b"HTTP/1.1 200 OK\r\nx-slow: ")
            for _ in range(300):  # a byte every 0.2 s: never a read timeout of 0.5 s
                time.sleep(0.2)
                conn.sendall(b"z")
        except OSError:
            closed.set()  # the dispatcher hung up
        finally:
            conn.close()

    threading.Thread(target=trickle, daemon=True).start()
    try:
        host = "hooks.test" if scheme == "https" else "127.0.0.1"

        def resolver(name, *args):
            return socket.getaddrinfo("127.0.0.1", *args)

        settings = _settings(
            allow_hosts=("127.0.0.1", "hooks.test"),
            timeout_s=0.5,
            connect_timeout_s=0.5,
            retry_schedule_s=(60.0,),
            ca_bundle=str(tmp_path / "cert.pem") if scheme == "https" else None,
        )
        entry = _add_event(client, keys, "job", _finished_job(queue), "succeeded", f"{scheme}://{host}:{port}/in")
        dispatcher = run_dispatcher(settings, resolver=resolver)
        deadline = time.monotonic() + 30
        view = dispatcher.store.get("msg_" + entry)
        while view is None or not view.last_error:
            assert time.monotonic() < deadline, "the trickling attempt was never cut off"
            time.sleep(0.05)
            view = dispatcher.store.get("msg_" + entry)
        assert view.status == "pending" and view.attempts == 1  # retried later, per the schedule
        assert "no complete answer from 127.0.0.1 within 1.5 s" in view.last_error
        assert closed.wait(10)
    finally:
        listener.close()
