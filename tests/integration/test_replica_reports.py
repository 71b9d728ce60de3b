"""`workers.app.replica_reports` inside a real `serve.run` (local Ray): one report from every replica,
a replica whose `stats()` fails is left out, and so is one that does not answer, at the cost of the
timeout only (the engine's housekeeping must end before Ray is shut down)."""

from __future__ import annotations

import time

import pytest

pytestmark = pytest.mark.integration

APP = "test-replica-reports"
REPLICAS = 2


@pytest.fixture(scope="module")
def handle(ray_cluster):
    from ray import serve

    @serve.deployment(
        num_replicas=REPLICAS,
        ray_actor_options={"num_cpus": 0.1},
        graceful_shutdown_timeout_s=1,
        graceful_shutdown_wait_loop_s=0.5,
    )
    class Reporter:
        """Answers `stats()` with its replica id; `behave(replica_id, mode)` makes that one fail or hang."""

        def __init__(self) -> None:
            self.replica_id = str(serve.get_replica_context().replica_id.unique_id)
            self.mode = "ok"

        def behave(self, replica_id: str, mode: str) -> None:
            if replica_id in (self.replica_id, "*"):
                self.mode = mode

        def stats(self) -> dict[str, object]:
            if self.mode == "fail":
                raise RuntimeError("stats broke")
            if self.mode == "hang":
                time.sleep(8.0)
            return {"replica_id": self.replica_id, "batch_sizes": {"2": 3}}

    h = serve.run(Reporter.bind(), name=APP, route_prefix=None)
    yield h
    serve.delete(APP)


def _behave(handle, replica_id: str, mode: str) -> None:
    handle.broadcast("behave", replica_id, mode).results(timeout_s=30)


def test_every_replica_answers_once(handle):
    from workers.app import _summed, replica_reports

    _behave(handle, "*", "ok")
    reports = replica_reports(handle, timeout_s=30)
    assert len(reports) == REPLICAS
    assert len({r["replica_id"] for r in reports}) == REPLICAS
    assert _summed(reports, "batch_sizes") == {2: 3 * REPLICAS}


def test_a_failing_replica_is_left_out(handle):
    from workers.app import replica_reports

    _behave(handle, "*", "ok")
    first, second = (r["replica_id"] for r in replica_reports(handle, timeout_s=30))
    _behave(handle, first, "fail")
    try:
        assert [r["replica_id"] for r in replica_reports(handle, timeout_s=30)] == [second]
    finally:
        _behave(handle, "*", "ok")


def test_a_replica_that_does_not_answer_costs_at_most_the_timeout(handle):
    from workers.app import replica_reports

    _behave(handle, "*", "ok")
    first, second = (r["replica_id"] for r in replica_reports(handle, timeout_s=30))
    _behave(handle, first, "hang")
    try:
        started = time.monotonic()
        assert [r["replica_id"] for r in replica_reports(handle, timeout_s=1.0)] == [second]
        assert time.monotonic() - started < 6.0  # well under the 8 s the hanging replica takes
    finally:
        _behave(handle, "*", "ok")
