"""`/docs` works where the service runs: Swagger UI from the installed package renders every
operation in headless Chromium that can reach nothing but loopback, with no console error; the
OpenAPI document names every operation with a readable, unique id."""

from __future__ import annotations

import json
import re
from urllib.parse import urlsplit

import httpx
import pytest
from headless_chromium import CHROMIUM, SKIP_REASON, chromium_page

from orchestrator.api import create_app, serve_in_thread
from orchestrator.queue import JobQueue
from orchestrator.storage import LocalStorage
from orchestrator.tenants import TenantStore

pytestmark = pytest.mark.integration

READABLE_ID = re.compile(r"[a-z][a-z0-9]*(_[a-z0-9]+)*")
METHODS = {"get", "put", "post", "delete", "patch", "head", "options"}


@pytest.fixture()
def api_url(redis_url, redis_prefix, tmp_path):
    queue = JobQueue(redis_url, prefix=redis_prefix, lease_s=30)
    tenants = TenantStore(queue.redis, prefix=redis_prefix)
    app = create_app(None, queue=queue, storage=LocalStorage(tmp_path / "out"), tenants=tenants)
    with serve_in_thread(app) as url:
        yield url
    queue.close()


def _operations(document: dict) -> list[tuple[str, str, dict]]:
    return [
        (path, method, operation)
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if method in METHODS
    ]


def test_every_operation_has_a_readable_unique_id(api_url):
    document = httpx.get(f"{api_url}/openapi.json").json()
    operations = _operations(document)
    assert len(operations) >= 14  # jobs, batches, workflows, uploads, ops, openai, reports...
    ids = [op.get("operationId") for _, _, op in operations]
    assert all(isinstance(i, str) and READABLE_ID.fullmatch(i) for i in ids), ids
    assert len(set(ids)) == len(ids), sorted(i for i in ids if ids.count(i) > 1)
    # Readable: the function's name, not FastAPI's default "<name>_<path>_<method>" concatenation.
    assert not [i for i in ids if "_v1_" in i or i.endswith(("_get", "_post", "_delete"))], ids
    by_route = {(path, method): op["operationId"] for path, method, op in operations}
    assert by_route[("/v1/jobs", "post")] == "submit_job"
    assert by_route[("/v1/audio/speech", "post")] == "create_speech"
    assert by_route[("/v1/batches/{batch_id}/report", "get")] == "get_batch_report"


def test_docs_page_and_assets_come_from_this_server(api_url):
    page = httpx.get(f"{api_url}/docs")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "cdn" not in page.text.lower()
    for url in re.findall(r'(?:src|href)="([^"]+)"', page.text):
        assert url.startswith("/docs/"), url  # everything from this server
        assert httpx.get(f"{api_url}{url}").status_code == 200, url
    assert httpx.get(f"{api_url}/redoc").status_code == 404  # ReDoc (CDN-only) is off
    view = httpx.get(f"{api_url}/docs/openapi.json").json()
    assert view["openapi"] == "3.0.3"
    text = json.dumps(view)
    assert '{"type": "null"}' not in text and '"const":' not in text  # 3.1-only forms rewritten
    original = httpx.get(f"{api_url}/openapi.json").json()
    assert original["openapi"].startswith("3.1") and set(view["paths"]) == set(original["paths"])


@pytest.mark.skipif(CHROMIUM is None, reason=SKIP_REASON)
def test_docs_render_in_chromium_with_only_loopback(api_url, tmp_path):
    expected = len(_operations(httpx.get(f"{api_url}/openapi.json").json()))
    with chromium_page() as page:
        page.load(f"{api_url}/docs")
        shown = page.wait_for(f"(n => n >= {expected} && n)(document.querySelectorAll('.opblock').length)")
        title = page.evaluate(
            "document.querySelector('.info .title') && document.querySelector('.info .title').innerText"
        )
        # Open the job submission: its body schema (the 3.0 view of JobSpec) renders with an example.
        page.evaluate("document.querySelector('#operations-jobs-submit_job .opblock-summary-control').click()")
        body = page.wait_for(
            "document.querySelector('#operations-jobs-submit_job .body-param__example, "
            "#operations-jobs-submit_job .microlight') !== null"
        )
        errors = page.evaluate("document.querySelectorAll('.errors-wrapper, .loading-container .error').length")
        png = page.screenshot()
        problems = page.problems()
        urls = page.requested_urls()
    assert shown == expected and body
    assert title and "Audio-Omni jobs API" in title
    assert errors == 0
    assert problems == [], problems
    loopback = urlsplit(api_url).netloc
    outside = [u for u in urls if not (u.startswith("data:") or urlsplit(u).netloc == loopback)]
    assert outside == [], outside
    assert {urlsplit(u).path for u in urls} >= {"/docs", "/docs/openapi.json", "/docs/assets/swagger-ui-bundle.js"}
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    (tmp_path / "docs.png").write_bytes(png)
