"""The deployment is wired: every key of `infra/k8s/config.env` and `workers.env` is read by the code,
and the engine and API pods, rendered by kustomize, run with the settings the manifests promise
(metrics where Prometheus scrapes, the RayService's pools instead of their own, the same Redis as
the autoscaler).

Rendering: `kubectl kustomize infra/k8s` (kustomize is built into kubectl) when kubectl is here;
else the same objects assembled the way kustomize does (resources plus a ConfigMap per env file),
which `test_fallback_rendering_equals_kustomize` holds equal to kustomize's where both run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import AliasChoices
from pydantic_settings import BaseSettings

from orchestrator.commands import api as api_command
from orchestrator.commands import serve as serve_command
from orchestrator.settings import ObservabilitySettings, ServeSettings, Settings
from orchestrator.webhooks.settings import WebhookSettings
from workers.settings import ENV_PREFIX, PoolSettings, WorkerSettings

REPO_ROOT = Path(__file__).resolve().parents[2]
K8S_DIR = REPO_ROOT / "infra" / "k8s"
ENV_FILES = ("config.env", "workers.env")
ORCHESTRATOR_SETTINGS: tuple[type[BaseSettings], ...] = (
    Settings,
    ServeSettings,
    ObservabilitySettings,
    WebhookSettings,
)
# Variables read by code outside the settings classes: name -> (file, the literal that reads it).
READ_ELSEWHERE = {"QWEN_OMNI_MODEL_PATH": ("model/config/mllm.py", 'MLLM_PATH_ENV = "QWEN_OMNI_MODEL_PATH"')}
SECRET_PLACEHOLDER = "from-a-secret"


# --------------------------------------------------------------------------- names the code reads


def orchestrator_env_names(cls: type[BaseSettings]) -> set[str]:
    """Every environment name a field of `cls` is read from (its upper-case validation aliases)."""
    names: set[str] = set()
    for field in cls.model_fields.values():
        alias = field.validation_alias
        choices = alias.choices if isinstance(alias, AliasChoices) else [alias] if isinstance(alias, str) else []
        names |= {c for c in choices if isinstance(c, str) and c.isupper()}
    return names


def worker_env_names() -> set[str]:
    """`AUDIO_OMNI_<FIELD>` of `WorkerSettings` and `AUDIO_OMNI_<POOL>_<FIELD>` of each pool."""
    names = set()
    for name, field in WorkerSettings.model_fields.items():
        if field.annotation is PoolSettings:
            names |= {f"{ENV_PREFIX}{name}_{sub}".upper() for sub in PoolSettings.model_fields}
        else:
            names.add(f"{ENV_PREFIX}{name}".upper())
    return names


def names_read_by_the_code() -> set[str]:
    names = worker_env_names()
    for cls in ORCHESTRATOR_SETTINGS:
        names |= orchestrator_env_names(cls)
    return names | set(READ_ELSEWHERE)


def unread_keys(env: dict[str, str]) -> list[str]:
    known = names_read_by_the_code()
    return sorted(key for key in env if key.upper() not in known)


def env_file(name: str) -> dict[str, str]:
    env: dict[str, str] = {}
    for raw in (K8S_DIR / name).read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            env[key.strip()] = value.strip()
    return env


@pytest.mark.parametrize("name", ENV_FILES)
def test_every_key_of_the_env_files_is_read_by_the_code(name):
    env = env_file(name)
    assert env, f"{name} is empty"
    assert unread_keys(env) == [], f"{name}: keys no code reads (a setting that does nothing)"


def test_the_check_finds_an_unread_key():
    assert unread_keys({"AUDIO_OMNI_METRICS_PORT": "1", "AUDIO_OMNI_METRICS_PROT": "1"}) == ["AUDIO_OMNI_METRICS_PROT"]
    assert "AUDIO_OMNI_SAMPLER_MAX_REPLICAS" in names_read_by_the_code()
    assert "RAY_ADDRESS" in names_read_by_the_code() and "REDIS_URL" in names_read_by_the_code()


@pytest.mark.parametrize("name", sorted(READ_ELSEWHERE))
def test_keys_read_outside_the_settings_classes_are_read_where_claimed(name):
    path, literal = READ_ELSEWHERE[name]
    assert literal in (REPO_ROOT / path).read_text(), f"{name} is no longer read by {path}"


def test_every_value_in_the_env_files_is_valid(monkeypatch):
    """Each settings class builds from the files' values (a typo in a value fails here, not in a pod)."""
    pod_env({**env_file("config.env"), **env_file("workers.env")}, monkeypatch)
    Settings.from_env()
    ServeSettings.from_env()
    ObservabilitySettings.from_env()
    WebhookSettings.from_env()
    WorkerSettings.from_env(env_file("workers.env"))


# --------------------------------------------------------------------------- rendering


def fallback_render() -> list[dict[str, Any]]:
    """The kustomization's objects as kustomize renders them (namespace, generated ConfigMaps)."""
    kustomization = yaml.safe_load((K8S_DIR / "kustomization.yaml").read_text())
    docs = []
    for generator in kustomization["configMapGenerator"]:
        data: dict[str, str] = {}
        for name in generator["envs"]:
            data.update(env_file(name))
        docs.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": generator["name"]}, "data": data})
    for name in kustomization["resources"]:
        docs += [d for d in yaml.safe_load_all((K8S_DIR / name).read_text()) if d]
    for doc in docs:
        if doc["kind"] != "Namespace":
            doc["metadata"]["namespace"] = kustomization["namespace"]
    return docs


@cache
def kustomize_render() -> tuple[dict[str, Any], ...] | None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        return None
    out = subprocess.run([kubectl, "kustomize", str(K8S_DIR)], capture_output=True, text=True, timeout=120, check=True)
    return tuple(d for d in yaml.safe_load_all(out.stdout) if d)


def rendered() -> list[dict[str, Any]]:
    docs = kustomize_render()
    return list(docs) if docs is not None else fallback_render()


def the(kind: str, name: str) -> dict[str, Any]:
    found = [d for d in rendered() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def test_fallback_rendering_equals_kustomize():
    docs = kustomize_render()
    if docs is None:
        pytest.skip("kubectl (with its built-in kustomize) is not installed")
    key = lambda d: (d["kind"], d["metadata"]["name"])  # noqa: E731
    ours = {key(d): d for d in fallback_render()}
    theirs = {key(d): d for d in docs}
    assert set(ours) == set(theirs)
    for k in (("ConfigMap", "audio-omni-config"), ("ConfigMap", "audio-omni-workers")):
        assert ours[k]["data"] == theirs[k]["data"]
    for k in (("Deployment", "audio-omni-engine"), ("Deployment", "audio-omni-api")):
        assert ours[k]["spec"] == theirs[k]["spec"]


def container_env(deployment: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """(the container, its environment as the pod gets it: envFrom ConfigMaps, then env)."""
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(the("ConfigMap", source["configMapRef"]["name"])["data"])
    for item in container.get("env", []):
        env[item["name"]] = item.get("value", SECRET_PLACEHOLDER)
    return container, env


def pod_env(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """This process's environment replaced by `env` for the names the code reads."""
    for name in list(os.environ):
        if name.upper() in names_read_by_the_code() or name.upper().startswith(("AUDIO_OMNI_", "AWS_", "S3_")):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)


def port_named(container: dict[str, Any], name: str) -> int:
    (port,) = [p["containerPort"] for p in container["ports"] if p["name"] == name]
    return int(port)


def test_engine_runs_with_the_settings_the_manifests_promise(monkeypatch):
    engine = the("Deployment", "audio-omni-engine")
    container, env = container_env(engine)
    assert container["args"][0] == "serve"
    parser = argparse.ArgumentParser()
    serve_command.add_arguments(parser, "serve")
    pod_env(env, monkeypatch)
    resolved = serve_command.resolve(parser.parse_args(container["args"][1:]))
    options = resolved.options

    # /metrics where Prometheus is told to scrape it, on every interface of the pod.
    annotations = engine["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/path"] == "/metrics"
    assert options.metrics_port == port_named(container, "metrics") == int(annotations["prometheus.io/port"])
    assert options.metrics_addr == "0.0.0.0"
    # The RayService's pools, reached through its head service; never pools of its own.
    assert options.deploy is False
    assert resolved.ray_address == env["RAY_ADDRESS"] and resolved.ray_address.startswith("ray://")
    head_service = resolved.ray_address.removeprefix("ray://").split(":")[0]
    rayservice = the("RayService", "audio-omni")
    assert head_service == f"{rayservice['metadata']['name']}-head-svc"
    served = yaml.safe_load(rayservice["spec"]["serveConfigV2"])
    apps = {a["name"] for a in served["applications"]}
    assert apps == {f"{resolved.worker_settings.app_name}-{pool}" for pool in ("encoder", "sampler")}
    # The queue the engine consumes is the one the pools' autoscaler reads.
    ws, settings = resolved.worker_settings, resolved.settings
    assert ws.backlog_redis_url == settings.redis_url and ws.backlog_prefix == settings.redis_prefix
    assert settings.s3_bucket and settings.s3_access_key_id is not None
    assert options.webhooks is True and resolved.observability.log_format == "json"
    # Shutdown: the pod waits longer than the longest job the engine lets finish.
    assert engine["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > ws.max_job_s


def test_api_runs_with_the_settings_the_manifests_promise(monkeypatch):
    deployment = the("Deployment", "audio-omni-api")
    container, env = container_env(deployment)
    assert container["args"][0] == "api"
    parser = argparse.ArgumentParser()
    api_command.add_arguments(parser, "api")
    args = parser.parse_args(container["args"][1:])
    pod_env(env, monkeypatch)
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert args.host == "0.0.0.0"
    assert args.port == port_named(container, "http") == int(annotations["prometheus.io/port"])
    settings = Settings.from_env(redis_url=args.redis_url, redis_prefix=args.redis_prefix, s3_bucket=args.bucket)
    engine_settings = Settings.from_env()
    assert (settings.redis_url, settings.redis_prefix) == (engine_settings.redis_url, engine_settings.redis_prefix)
    assert ObservabilitySettings.from_env(log_level=args.log_level).log_format == "json"


def test_a_bad_setting_is_refused_by_name(monkeypatch):
    pod_env({"AUDIO_OMNI_METRICS_PORT": "99999", "S3_BUCKET": "b"}, monkeypatch)
    parser = argparse.ArgumentParser()
    serve_command.add_arguments(parser, "serve")
    with pytest.raises(ValueError, match="metrics_port"):
        serve_command.resolve(parser.parse_args([]))
    monkeypatch.setenv("AUDIO_OMNI_METRICS_PORT", "9090")
    monkeypatch.setenv("AUDIO_OMNI_METRICS_ADDR", "not an address")
    with pytest.raises(ValueError, match="metrics_addr"):
        serve_command.resolve(parser.parse_args([]))
    # Flags win over the environment.
    monkeypatch.delenv("AUDIO_OMNI_METRICS_ADDR")
    monkeypatch.setenv("AUDIO_OMNI_DEPLOY_POOLS", "false")
    resolved = serve_command.resolve(parser.parse_args(["--deploy", "--metrics-port", "0", "--engines", "3"]))
    assert resolved.options.deploy is True and resolved.options.metrics_port == 0 and resolved.options.engines == 3
