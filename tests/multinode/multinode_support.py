"""Helpers of the multi-node fault tests: free ports, waiting, an S3 proxy that can fail, and the one
"every job done exactly once" check shared by every fault test."""

from __future__ import annotations

import hashlib
import http.client
import io
import json
import socket
import threading
import time
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

# Job leases of the engines in these tests (seconds): short, so a lost holder is replaced quickly.
LEASE_S = 4.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(check: Callable[[], bool], timeout_s: float, message: str, every_s: float = 0.2) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{message} (waited {timeout_s:g} s)")
        time.sleep(every_s)


# --------------------------------------------------------------------------- S3 outage


_UNAVAILABLE = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>ServiceUnavailable</Code>'
    b"<Message>injected outage</Message></Error>"
)


class FaultProxy:
    """A loopback HTTP proxy in front of an S3 endpoint. While `failing`, every request is answered
    `503 ServiceUnavailable` without reaching the endpoint (nothing is written); otherwise requests
    pass through unchanged. `refused` counts the requests answered 503, by method."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        parts = urlsplit(upstream)
        self._host, self._port = parts.hostname or "127.0.0.1", parts.port or 80
        self.failing = threading.Event()
        self.refused: dict[str, int] = {}
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="s3-fault-proxy", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _refuse(self, method: str) -> None:
        with self._lock:
            self.refused[method] = self.refused.get(method, 0) + 1

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return b"".join(chunks)
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _forward(self) -> None:
                body = self._body()
                if proxy.failing.is_set():
                    proxy._refuse(self.command)
                    self.send_response(503)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(_UNAVAILABLE)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(_UNAVAILABLE)
                    return
                headers = {
                    k: v for k, v in self.headers.items() if k.lower() not in ("transfer-encoding", "connection")
                }
                headers["Content-Length"] = str(len(body))
                conn = http.client.HTTPConnection(proxy._host, proxy._port, timeout=60)
                try:
                    conn.request(self.command, self.path, body=body, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                    self.send_response(resp.status, resp.reason)
                    for k, v in resp.getheaders():
                        if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                            self.send_header(k, v)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(data)
                finally:
                    conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

        return Handler


# --------------------------------------------------------------------------- every job done exactly once


def s3_versions(client: Any, bucket: str) -> dict[str, int]:
    """{key: number of versions written} of a versioned bucket."""
    counts: dict[str, int] = {}
    for page in client.get_paginator("list_object_versions").paginate(Bucket=bucket):
        for v in page.get("Versions", []):
            counts[v["Key"]] = counts.get(v["Key"], 0) + 1
    return counts


def check_metadata_describes_result(client: Any, bucket: str, meta_key: str) -> dict[str, Any]:
    """The metadata JSON at `meta_key` names a result object that exists, whole (its sha256 and size)."""
    meta = json.loads(client.get_object(Bucket=bucket, Key=meta_key)["Body"].read())
    obj = meta["result_object"]
    body = client.get_object(Bucket=bucket, Key=obj["key"])["Body"].read()
    assert len(body) == obj["size_bytes"] and hashlib.sha256(body).hexdigest() == obj["sha256"], (
        f"{obj['key']} is not the object its metadata describes"
    )
    return meta


def check_done_once(queue: Any, client: Any, bucket: str, batch_id: str, job_ids: Sequence[str]) -> list[Any]:
    """Every job succeeded, with exactly one result object and one metadata object, whole; the
    metadata was written once (one version: no second run reached completion) by the attempt that
    the queue recorded. Returns the job records."""
    import soundfile as sf

    records = queue.get_many(list(job_ids))
    bad = {r.job_id: (r.status.value, r.error) for r in records if r.status.value != "succeeded"}
    assert not bad, f"jobs not succeeded: {bad}"
    versions = s3_versions(client, bucket)
    for record in records:
        job_id = record.job_id
        mine = sorted(k for k in versions if k.rsplit("/", 1)[-1].rsplit(".", 1)[0] == job_id)
        base = f"{record.tenant}/{batch_id}/{job_id}"
        assert mine == [f"{base}.json", f"{base}.wav"], mine
        assert versions[f"{base}.json"] == 1, f"{job_id}: metadata written {versions[f'{base}.json']} times"
        meta = check_metadata_describes_result(client, bucket, f"{base}.json")
        assert meta["attempt"] == record.attempts, (job_id, meta["attempt"], record.attempts)
        body = client.get_object(Bucket=bucket, Key=f"{base}.wav")["Body"].read()
        info = sf.info(io.BytesIO(body))
        assert info.samplerate == 44_100 and abs(info.duration - 1.0) < 1e-3, info
    return records
