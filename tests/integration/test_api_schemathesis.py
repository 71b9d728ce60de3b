"""schemathesis against the served OpenAPI document: generated requests (valid and invalid) to every
operation of a live server on real Redis and S3 must never get a 5xx, and every response must match
the documented status codes, content types, headers and schemas. Bounded: up to 30 examples per
operation, every operation getting all of its examples (no shared time budget cuts the later ones
short), and the test checks that each operation really sent its requests."""

from __future__ import annotations

import uuid
from collections import Counter

import boto3
import pytest
import redis
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from orchestrator.api import ApiSettings, create_app, serve_in_thread
from orchestrator.queue import JobQueue
from orchestrator.storage import S3Storage, make_s3_client
from orchestrator.tenants import TenantLimits, TenantStore

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MAX_EXAMPLES = 30
MIN_REQUESTS = 4  # per operation that takes input (one without parameters or body has one request)
JSON = "application/json"
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
_AUTH: dict[str, str] = {}


@pytest.fixture(scope="module")
def live_api(redis_url, s3_endpoint):
    """A served API with one generously limited tenant (so generated traffic is not throttled)."""
    prefix = f"test:{uuid.uuid4().hex[:12]}:"
    bucket = f"test-{uuid.uuid4().hex[:12]}"
    boto = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    boto.create_bucket(Bucket=bucket)
    queue = JobQueue(redis_url, prefix=prefix)
    storage = S3Storage(
        bucket, client=make_s3_client(endpoint_url=s3_endpoint, region="us-east-1", addressing_style="path")
    )
    tenants = TenantStore(queue.redis, prefix=prefix)
    tenants.create("fuzz", TenantLimits(max_in_flight=1_000_000, submissions_per_minute=1_000_000))
    _AUTH["Authorization"] = f"Bearer {tenants.issue_key('fuzz')}"
    app = create_app(
        None, queue=queue, storage=storage, tenants=tenants, api_settings=ApiSettings(max_upload_bytes=1 << 20)
    )
    try:
        with serve_in_thread(app) as url:
            yield url
    finally:
        client = redis.Redis.from_url(redis_url)
        keys = list(client.scan_iter(match=prefix + "*", count=1000))
        for i in range(0, len(keys), 500):
            client.delete(*keys[i : i + 500])
        client.close()
        for obj in boto.list_objects_v2(Bucket=bucket).get("Contents", []):
            boto.delete_object(Bucket=bucket, Key=obj["Key"])
        boto.delete_bucket(Bucket=bucket)
        queue.close()


@pytest.fixture(scope="module")
def api_schema(live_api):
    schema = schemathesis.openapi.from_url(f"{live_api}/openapi.json")
    schema.config.base_url = live_api
    return schema


def _run_operation(operation, base_url: str, sent: Counter) -> None:
    """Up to MAX_EXAMPLES generated cases (schema-valid and schema-violating) against one
    operation; `sent[operation.label]` counts the requests that went out."""
    strategy = st.one_of(operation.as_strategy(GenerationMode.POSITIVE), operation.as_strategy(GenerationMode.NEGATIVE))

    @given(case=strategy)
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,  # the same requests on every run: a failure here is reproducible
        suppress_health_check=list(HealthCheck),
    )
    def check(case) -> None:
        # Public endpoints ignore the header; the others get a valid key so cases reach the handlers.
        # A generated Authorization header (any letter case) is replaced, not sent beside the key.
        case.headers = {k: v for k, v in (case.headers or {}).items() if k.lower() != "authorization"} | _AUTH
        sent[operation.label] += 1
        case.call_and_validate(base_url=base_url, checks=CHECKS)

    check()


def test_no_server_errors_and_responses_match_the_schema(api_schema, live_api):
    sent: Counter = Counter()
    operations = [result.ok() for result in api_schema.get_all_operations()]
    labels = {op.label for op in operations}
    assert {"POST /v1/jobs", "POST /v1/batches", "GET /v1/jobs/{job_id}", "POST /v1/uploads"} <= labels
    failures: list[str] = []
    for operation in operations:
        try:
            _run_operation(operation, live_api, sent)
        except Exception as exc:  # collect all operations' failures, then report them together
            failures.append(f"{operation.label}: {exc}")
    assert not failures, "\n\n".join(failures)
    print("schemathesis requests by operation:", dict(sent))
    starved = {op.label: sent[op.label] for op in operations if sent[op.label] < _floor(op)}
    assert not starved, f"operations that sent fewer requests than their floor: {starved}"
    # The generated cases really went over HTTP and reached the handlers.
    served = _requests_by_status(live_api)
    assert sum(served.values()) >= sum(sent.values()), (served, sent)
    assert served.get("422", 0) > 0 and served.get("404", 0) > 0, served


def _floor(operation) -> int:
    """Requests an operation must have sent: MIN_REQUESTS, or 1 for one that takes no input at all
    (hypothesis has a single distinct case for it)."""
    raw = operation.definition.raw
    return MIN_REQUESTS if raw.get("parameters") or raw.get("requestBody") else 1


def test_happy_path_responses_match_the_schema(api_schema, live_api):
    """Random specs rarely satisfy the per-task rules, so the 2xx (and 409) responses are checked
    with hand-made cases through the same schemathesis checks."""
    ops = {op.label: op for op in (r.ok() for r in api_schema.get_all_operations())}

    def call(label: str, **parts):
        case = api_schema.make_case(operation=ops[label], **parts)
        return case.call_and_validate(base_url=live_api, headers=dict(_AUTH), checks=CHECKS)

    job = call("POST /v1/jobs", body={"task": "text_to_audio", "prompt": "rain on a tin roof"}, media_type=JSON)
    assert job.status_code == 201
    job_id = job.json()["job_id"]
    assert call("GET /v1/jobs/{job_id}", path_parameters={"job_id": job_id}).status_code == 200
    assert call("GET /v1/jobs/{job_id}/result", path_parameters={"job_id": job_id}).status_code == 409
    assert call("DELETE /v1/jobs/{job_id}", path_parameters={"job_id": job_id}).status_code == 200
    batch = call("POST /v1/batches", body={"jobs": [{"task": "tts", "transcript": "hello"}] * 3}, media_type=JSON)
    assert batch.status_code == 201
    page = call(
        "GET /v1/batches/{batch_id}", path_parameters={"batch_id": batch.json()["batch_id"]}, query={"limit": 2}
    )
    assert page.status_code == 200 and page.json()["total"] == 3


def _requests_by_status(base_url: str) -> dict[str, float]:
    import httpx

    counts: dict[str, float] = {}
    for line in httpx.get(f"{base_url}/metrics").text.splitlines():
        if line.startswith("audio_omni_api_requests_total{"):
            labels, value = line.rsplit(" ", 1)
            status = labels.split('status="', 1)[1].split('"', 1)[0]
            counts[status] = counts.get(status, 0.0) + float(value)
    print("schemathesis responses by status:", counts)
    return counts


def test_unauthenticated_requests_are_401_in_the_documented_shape(api_schema, live_api):
    import httpx

    for path in ("/v1/jobs/x", "/v1/batches/x", "/v1/jobs/x/result"):
        response = httpx.get(f"{live_api}{path}")
        assert response.status_code == 401
        assert set(response.json()["error"]) == {"code", "message", "field", "details", "request_id"}
