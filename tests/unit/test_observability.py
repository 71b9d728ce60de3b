"""Metrics: names by Prometheus convention, the shared state exported by exactly one process (a Redis
lock; real Redis), queue-wait / end-to-end / stage histograms, pool replicas' figures, build info;
and infra/grafana/: every metric the dashboard and the alert rules name is one the code exports
(collected from the real registries after exercising every metric)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest
import redis
import yaml
from prometheus_client.parser import text_string_to_metric_families

from orchestrator.metrics import ApiMetrics, EngineMetrics, LeaderLock, leader_key
from orchestrator.queue import JobQueue

REPO_ROOT = Path(__file__).resolve().parents[2]
GRAFANA = REPO_ROOT / "infra" / "grafana"
DASHBOARD = GRAFANA / "audio-omni-dashboard.json"
ALERTS = GRAFANA / "audio-omni-alerts.yaml"
UNITLESS_HISTOGRAMS = {"audio_omni_sampler_batch_size"}  # a count of requests, not a time


@dataclass
class FakeClaim:  # the fields of orchestrator.queue.Claim the metrics read
    submitted_at: float
    started_at: float


def claimed(job_id: str, *, waited_s: float = 3.0, attempt: int = 1) -> SimpleNamespace:
    return SimpleNamespace(job_id=job_id, attempt=attempt, token=FakeClaim(1000.0, 1000.0 + waited_s))


def finished(job_id: str, outcome: str, **timings: float) -> SimpleNamespace:
    return SimpleNamespace(job_id=job_id, outcome=outcome, timings=timings)


def samples(text: bytes | str) -> dict[str, list]:
    """{sample name: [samples]} of a Prometheus text exposition."""
    out: dict[str, list] = {}
    for family in text_string_to_metric_families(text.decode() if isinstance(text, bytes) else text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append(sample)
    return out


def value(text: bytes, name: str, **labels: str) -> float:
    found = [s.value for s in samples(text).get(name, []) if all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(found) == 1, f"{name}{labels}: {found}"
    return found[0]


@pytest.fixture()
def queue(redis_url, redis_prefix):
    q = JobQueue(redis_url, prefix=redis_prefix)
    yield q
    q.close()


def exercised_engine(queue: JobQueue, holder: str = "engine-a") -> EngineMetrics:
    """An engine's metrics with every metric given a value: jobs of each outcome, stages, replicas
    with GPU figures, and the shared state (this one elected)."""
    metrics = EngineMetrics(holder=holder)
    for i, outcome in enumerate(("succeeded", "failed", "retry", "cancelled", "abandoned")):
        metrics.job_claimed(claimed(f"j{i}", attempt=1 + i % 2))
        metrics.job_finished(finished(f"j{i}", outcome, load=0.1, generate=1.5))
    gpu = {"memory_allocated_bytes": 1e9, "memory_reserved_bytes": 2e9, "memory_total_bytes": 8e10}
    metrics.observe_replica_reports({"r1": {"batch_sizes": {4: 2}, "gpu": {**gpu, "utilization_ratio": 0.5}}})
    exporter = metrics.attach(queue, queue.redis, backlog_key=queue.keys.autoscale_backlog, ttl_s=10)
    assert exporter.refresh()
    return metrics


def exercised_api(queue: JobQueue) -> ApiMetrics:
    metrics = ApiMetrics(holder="api-a")
    metrics.requests.labels("POST", "/v1/jobs", "201").inc()
    metrics.latency.labels("/v1/jobs").observe(0.01)
    metrics.submitted.labels("job").inc()
    metrics.refused.labels("rate").inc()
    metrics.attach(queue, ttl_s=10).refresh()
    return metrics


@pytest.fixture()
def exported(queue) -> set[str]:
    """Every sample name the engine and the API export once every metric has a value."""
    names = set(samples(exercised_engine(queue).render()))
    queue.redis.delete(leader_key(queue.keys.prefix, "shared"))  # let the API be the exporter too
    return names | set(samples(exercised_api(queue).render()))


# --------------------------------------------------------------------------- PromQL -> metric names

_FUNCTIONS_AND_KEYWORDS = {
    "sum", "max", "min", "avg", "count", "rate", "irate", "increase", "delta", "deriv", "histogram_quantile",
    "clamp_min", "clamp_max", "absent", "by", "without", "on", "ignoring", "group_left", "group_right", "and",
    "or", "unless", "offset", "bool", "le", "topk", "bottomk", "abs", "time", "vector", "scalar",
}  # fmt: skip


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (labels, strings, durations, functions and
    keywords left out)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges and subqueries
    names = set()
    for match in re.finditer(r"(?<![\w.$])[a-zA-Z_:][a-zA-Z0-9_:]*", text):
        if not re.match(r"\s*\(", text[match.end() :]) and match.group() not in _FUNCTIONS_AND_KEYWORDS:
            names.add(match.group())
    return names


def dashboard_queries() -> list[tuple[str, str]]:
    def walk(panels: list[dict]) -> list[tuple[str, str]]:
        found = []
        for panel in panels:
            found += [(panel["title"], t["expr"]) for t in panel.get("targets", [])]
            found += walk(panel.get("panels", []))
        return found

    return walk(json.loads(DASHBOARD.read_text())["panels"])


def alert_queries() -> list[tuple[str, str]]:
    rules = yaml.safe_load(ALERTS.read_text())
    return [(rule["alert"], rule["expr"]) for group in rules["groups"] for rule in group["rules"]]


def unknown_metrics(queries: list[tuple[str, str]], exported: set[str]) -> list[str]:
    return sorted(f"{where}: {name}" for where, expr in queries for name in metric_names(expr) - exported)


def test_metric_name_extraction():
    expr = 'histogram_quantile(0.99, sum by (le) (rate(a_seconds_bucket{status="x", route!~"/v1/(jobs)"}[5m]))) > 2'
    assert metric_names(expr) == {"a_seconds_bucket"}
    assert metric_names("max(a) > max(a offset 10m) and deriv(sum(b)[15m:1m]) > 0 or absent(c)") == {"a", "b", "c"}


def test_every_dashboard_query_names_an_exported_metric(exported):
    queries = dashboard_queries()
    assert len(queries) >= 20
    assert unknown_metrics(queries, exported) == []
    titles = {p["title"] for p in json.loads(DASHBOARD.read_text())["panels"] if p["type"] == "row"}
    assert titles == {"Queue", "Throughput", "Latency", "Pools", "Failures", "Autoscaling"}


def test_every_alert_query_names_an_exported_metric(exported):
    alerts = alert_queries()
    names = {name for name, _ in alerts}
    assert {"AudioOmniBacklogGrowing", "AudioOmniDeadLetters", "AudioOmniNoConsumer"} <= names
    assert {"AudioOmniJobErrorRate", "AudioOmniLatencyP99High"} <= names
    assert unknown_metrics(alerts, exported) == []
    runbooks = (REPO_ROOT / "docs" / "operations.md").read_text().lower()
    for group in yaml.safe_load(ALERTS.read_text())["groups"]:
        for rule in group["rules"]:
            anchor = rule["annotations"]["runbook"].split("#", 1)[1]
            assert f"### {anchor.replace('-', ' ')}" in runbooks, f"{rule['alert']}: no runbook section {anchor}"


def test_the_check_catches_a_misspelt_metric(exported):
    assert unknown_metrics([("p", "sum(audio_omni_queue_depht)")], exported) == ["p: audio_omni_queue_depht"]


def test_names_follow_prometheus_conventions(queue):
    families = list(text_string_to_metric_families(exercised_engine(queue).render().decode()))
    families += list(text_string_to_metric_families(exercised_api(queue).render().decode()))
    assert families
    for family in families:
        assert family.name.startswith("audio_omni_"), family.name
        if family.type == "counter":
            assert {s.name for s in family.samples} <= {family.name + "_total", family.name + "_created"}
        if family.type == "histogram" and family.name not in UNITLESS_HISTOGRAMS:
            assert family.name.endswith("_seconds"), family.name
        if family.type == "gauge" and "memory" in family.name:
            assert family.name.endswith("_bytes"), family.name


# --------------------------------------------------------------------------- one exporter of shared state


def test_the_shared_state_is_exported_by_exactly_one_process(queue):
    queue.submit({"task": "text_to_audio", "prompt": "rain", "tenant": "acme"})
    a, b = EngineMetrics(holder="engine-a"), EngineMetrics(holder="engine-b")
    api = ApiMetrics(holder="api-a")
    key = queue.keys.autoscale_backlog
    ea = a.attach(queue, queue.redis, backlog_key=key, ttl_s=10)
    eb = b.attach(queue, queue.redis, backlog_key=key, ttl_s=10)
    eapi = api.attach(queue, ttl_s=10)
    assert ea.refresh() and not eb.refresh() and not eapi.refresh()
    texts = [a.render(), b.render(), api.render()]
    exporting = [t for t in texts if "audio_omni_queue_depth" in samples(t)]
    assert len(exporting) == 1 and exporting[0] is texts[0]
    assert value(texts[0], "audio_omni_queue_depth", priority="normal") == 1
    assert value(texts[0], "audio_omni_metrics_leader", holder="engine-a") == 1
    assert value(texts[0], "audio_omni_jobs_running") == 0 and value(texts[0], "audio_omni_dead_letters") == 0

    ea.lock.release()  # engine a shuts down: the next contender takes over at once
    assert eb.refresh() and not ea.refresh()
    assert "audio_omni_queue_depth" not in samples(a.render())
    assert value(b.render(), "audio_omni_metrics_leader", holder="engine-b") == 1


def test_a_holder_that_stops_renewing_loses_the_lock_when_it_expires(redis_url, redis_prefix):
    client = redis.Redis.from_url(redis_url)
    key = leader_key(redis_prefix, "pools")
    first = LeaderLock(client, key, "first", ttl_s=10)
    second = LeaderLock(client, key, "second", ttl_s=10)
    assert first.acquire() and first.acquire()  # renews
    assert not second.acquire()
    client.pexpire(key, 1)  # as if `first` had stopped renewing for a whole TTL
    while client.exists(key):
        pass
    assert second.acquire() and not first.acquire() and not first.held
    with pytest.raises(ValueError, match="role"):
        leader_key(redis_prefix, "other")
    client.close()


def test_shared_state_counts_dead_letters_running_jobs_and_engines(queue):
    from workers.autoscaling import backlog_report, publish_backlog

    queue.redis.xadd(queue.keys.dead_letter, {"job_id": "x", "error": "out of attempts"})
    queue.submit({"task": "text_to_audio", "prompt": "rain", "tenant": "acme"})
    queue.submit({"task": "text_to_audio", "prompt": "hail", "tenant": "acme"})
    queue.claim("c1", count=1)
    key = queue.keys.autoscale_backlog
    publish_backlog(queue.redis, key, "engine-1", backlog_report(1, 2, 3))
    publish_backlog(queue.redis, key, "engine-gone", backlog_report(0, 5, 5, now_s=1.0))  # stale: not counted
    metrics = EngineMetrics()
    metrics.attach(queue, queue.redis, backlog_key=key, ttl_s=10).refresh()
    text = metrics.render()
    assert value(text, "audio_omni_dead_letters") == 1
    assert value(text, "audio_omni_jobs_running") == 1
    assert value(text, "audio_omni_queue_depth", priority="normal") == 1
    assert value(text, "audio_omni_engines") == 1
    assert value(text, "audio_omni_pool_backlog", pool="encoder") == 1 + 2
    assert value(text, "audio_omni_pool_backlog", pool="sampler") == 1 + 3


# --------------------------------------------------------------------------- per-process figures


def test_queue_wait_and_end_to_end_latency():
    metrics = EngineMetrics()
    metrics.job_claimed(claimed("a", waited_s=3.0))
    metrics.job_finished(finished("a", "succeeded", load=0.5))
    metrics.job_claimed(claimed("b", waited_s=7.0, attempt=2))  # a retry: waited, but not in the queue only
    metrics.job_finished(finished("b", "retry"))
    text = metrics.render()
    assert value(text, "audio_omni_queue_wait_seconds_count") == 1
    assert value(text, "audio_omni_queue_wait_seconds_sum") == pytest.approx(3.0)
    assert value(text, "audio_omni_job_latency_seconds_count", status="succeeded") == 1
    assert 3.0 <= value(text, "audio_omni_job_latency_seconds_sum", status="succeeded") < 60
    assert "audio_omni_job_latency_seconds_count" not in {  # a retry is not an end
        s.name for s in samples(text)["audio_omni_job_latency_seconds_count"] if s.labels.get("status") == "retry"
    }
    assert value(text, "audio_omni_redeliveries_total") == 1
    assert value(text, "audio_omni_jobs_total", status="retry") == 1
    assert value(text, "audio_omni_stage_seconds_count", stage="load") == 1
    assert value(text, "audio_omni_jobs_in_flight") == 0


def test_replica_reports_count_each_loop_once_and_drop_gone_replicas():
    metrics = EngineMetrics()
    gpu = {"memory_allocated_bytes": 1.0, "memory_reserved_bytes": 2.0, "memory_total_bytes": 4.0}
    # A new exporter takes the counters it finds as its baseline (an earlier one counted them).
    metrics.observe_replica_reports({"r1": {"batch_sizes": {4: 10}, "gpu": gpu}}, baseline=True)
    metrics.observe_replica_reports({"r1": {"batch_sizes": {4: 12, 1: 1}, "gpu": gpu}, "r2": {"batch_sizes": {}}})
    text = metrics.render()
    assert value(text, "audio_omni_sampler_batch_size_count") == 3
    assert value(text, "audio_omni_sampler_batch_size_sum") == 2 * 4 + 1
    assert value(text, "audio_omni_sampler_replicas") == 2
    assert value(text, "audio_omni_sampler_gpu_memory_reserved_bytes", replica="r1") == 2.0
    assert "audio_omni_sampler_gpu_utilization_ratio" not in samples(text)  # no pynvml figure given
    metrics.observe_replica_reports({"r2": {"batch_sizes": {}}})  # r1 gone (scaled down)
    assert "audio_omni_sampler_gpu_memory_reserved_bytes" not in samples(metrics.render())
    metrics.forget_replicas()
    assert value(metrics.render(), "audio_omni_sampler_replicas") == 0


def test_build_info(monkeypatch):
    monkeypatch.setenv("AUDIO_OMNI_GIT_SHA", "0123abc")
    text = EngineMetrics().render()
    (sample,) = samples(text)["audio_omni_build_info"]
    assert sample.value == 1 and sample.labels["git_sha"] == "0123abc" and sample.labels["component"] == "engine"
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", sample.labels["version"])
    (api,) = samples(ApiMetrics().render())["audio_omni_build_info"]
    assert api.labels["component"] == "api"


def test_gpu_stats_are_none_without_cuda():
    from workers.sampler import gpu_stats

    assert gpu_stats("cpu") is None


def test_two_api_replicas_with_default_names_never_both_export(queue):
    first, second = ApiMetrics(), ApiMetrics()  # as create_app builds them, one per replica
    assert first.holder != second.holder
    assert first.attach(queue, ttl_s=10).refresh()
    assert not second.attach(queue, ttl_s=10).refresh()
    assert "audio_omni_queue_depth" in samples(first.render())
    assert "audio_omni_queue_depth" not in samples(second.render())
