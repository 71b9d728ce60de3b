"""infra/: every manifest validates offline against the Kubernetes and KubeRay schemas, the deployment
invariants hold, and the RayService's Serve config is exactly what the code builds from its settings.

Schemas: core objects and every pod template against the Kubernetes 1.33 schemas shipped by
`kubernetes-validate` (strict: unknown fields fail); the RayService against the reduced KubeRay schema
under tests/fixtures/k8s/ (see its README); `serveConfigV2` against Ray's `ServeDeploySchema`.
"""

from __future__ import annotations

import importlib.util
import json
import re
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
K8S_DIR = REPO_ROOT / "infra" / "k8s"
DOCKER_DIR = REPO_ROOT / "infra" / "docker"
FIXTURES = REPO_ROOT / "tests" / "fixtures" / "k8s"
K8S_VERSION = "1.33.0"
CONTAINER_PATHS = ("containers", "initContainers")


# --------------------------------------------------------------------------- loading


@cache
def render_module():
    """infra/k8s/render_serve_config.py, loaded by path (infra/ is not a package)."""
    spec = importlib.util.spec_from_file_location("render_serve_config", K8S_DIR / "render_serve_config.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@cache
def kustomization() -> dict[str, Any]:
    return yaml.safe_load((K8S_DIR / "kustomization.yaml").read_text())


@cache
def documents() -> tuple[tuple[str, dict[str, Any]], ...]:
    """(file name, object) for every object of every resource the kustomization lists."""
    out = []
    for name in kustomization()["resources"]:
        for doc in yaml.safe_load_all((K8S_DIR / name).read_text()):
            if doc is not None:
                out.append((name, doc))
    return tuple(out)


def objects(kind: str) -> list[dict[str, Any]]:
    return [doc for _, doc in documents() if doc["kind"] == kind]


def the(kind: str, name: str) -> dict[str, Any]:
    found = [doc for doc in objects(kind) if doc["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def rayservice() -> dict[str, Any]:
    return the("RayService", "audio-omni")


def pod_templates() -> list[tuple[str, dict[str, Any]]]:
    """(where, pod template) for every pod the manifests create, the RayService's groups included."""
    out = []
    for _, doc in documents():
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        if doc["kind"] in ("Deployment", "StatefulSet"):
            out.append((where, doc["spec"]["template"]))
        elif doc["kind"] == "RayService":
            cluster = doc["spec"]["rayClusterConfig"]
            out.append((f"{where}/head", cluster["headGroupSpec"]["template"]))
            for group in cluster.get("workerGroupSpecs", []):
                out.append((f"{where}/{group['groupName']}", group["template"]))
    return out


def containers() -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{where}/{c['name']}", c)
        for where, template in pod_templates()
        for path in CONTAINER_PATHS
        for c in template["spec"].get(path, [])
    ]


def env_file(name: str) -> dict[str, str]:
    return render_module().read_env_file(K8S_DIR / name)


@cache
def settings():
    return render_module().worker_settings(env_file("workers.env"))


def serve_config_in_manifest() -> dict[str, Any]:
    return yaml.safe_load(rayservice()["spec"]["serveConfigV2"])


def deployment_options(pool: str) -> dict[str, Any]:
    name = f"{settings().app_name}-{pool}"
    (app,) = [a for a in serve_config_in_manifest()["applications"] if a["name"] == name]
    (deployment,) = app["deployments"]
    return deployment


_UNITS = {"": 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def quantity(value: str | int | float) -> float:
    """A Kubernetes resource quantity ("500m", "64Gi", 2) as a number."""
    match = re.fullmatch(r"([0-9.]+)([a-zA-Z]*)", str(value))
    if not match or match.group(2) not in _UNITS:
        raise ValueError(f"not a resource quantity: {value!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


# --------------------------------------------------------------------------- schemas


@cache
def kuberay_validator() -> jsonschema.Validator:
    from importlib.resources import files

    from referencing import Registry, Resource

    definitions_path = files("kubernetes_validate") / "kubernetes-json-schema" / f"v{K8S_VERSION}-local-strict"
    definitions = json.loads((definitions_path / "_definitions.json").read_text())
    schema = json.loads((FIXTURES / "kuberay-v1-rayservice.schema.json").read_text())
    registry = Registry().with_resources(
        [(definitions["$id"], Resource.from_contents(definitions)), (schema["$id"], Resource.from_contents(schema))]
    )
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema, registry=registry)


def test_kustomization_lists_every_manifest_and_env_file():
    listed = set(kustomization()["resources"])
    on_disk = {p.name for p in K8S_DIR.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk
    for generator in kustomization()["configMapGenerator"]:
        for name in generator["envs"]:
            assert env_file(name), f"{name} is empty"


CORE_OBJECTS = [(f, d) for f, d in documents() if d["kind"] != "RayService"]  # the CR: KubeRay schema below


@pytest.mark.parametrize(
    "doc", [d for _, d in CORE_OBJECTS], ids=[f"{f}:{d['kind']}/{d['metadata']['name']}" for f, d in CORE_OBJECTS]
)
def test_core_objects_validate_against_kubernetes_schemas(doc):
    import kubernetes_validate

    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_rayservice_validates_against_kuberay_schema():
    kuberay_validator().validate(rayservice())


@pytest.mark.parametrize(
    "path, value",
    [
        (("spec", "rayClusterConfig", "enableInTreeAutoscalling"), True),  # misspelt field
        (("spec", "rayClusterConfig", "autoscalerOptions", "upscalingMode"), "Fast"),  # not in the enum
        (("spec", "rayClusterConfig", "workerGroupSpecs", 0, "minReplicas"), -1),
        (("spec", "rayClusterConfig", "workerGroupSpecs", 0, "template", "spec", "containerz"), []),
    ],
)
def test_kuberay_schema_rejects_what_kuberay_rejects(path, value):
    broken = json.loads(json.dumps(rayservice()))
    node = broken
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(jsonschema.ValidationError):
        kuberay_validator().validate(broken)


def test_kubernetes_schema_rejects_unknown_container_field():
    import kubernetes_validate

    broken = json.loads(json.dumps(the("Deployment", "audio-omni-api")))
    broken["spec"]["template"]["spec"]["containers"][0]["resource"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


# --------------------------------------------------------------------------- Serve config = the code's


def test_serve_config_is_what_the_code_builds_from_workers_env():
    module = render_module()
    assert serve_config_in_manifest() == module.build_serve_config(env_file("workers.env"))
    # Byte for byte too: `render_serve_config.py --check` passes on the committed manifest.
    assert module.render() == (K8S_DIR / "rayservice.yaml").read_text()


def test_serve_config_validates_with_rays_schema():
    from ray.serve.schema import ServeDeploySchema

    ServeDeploySchema.model_validate(serve_config_in_manifest())


def test_app_builder_on_the_cluster_builds_the_rendered_deployments():
    """What Serve builds from each application's import_path + args equals the deployments in the
    manifest, and the args carry every worker setting (so a changed setting changes the config)."""
    from ray._common.utils import import_attr
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary
    from ray.serve._private.build_app import build_app
    from ray.serve.deployment import deployment_to_schema

    settings_env = {k: v for k, v in env_file("workers.env").items() if k.startswith("AUDIO_OMNI_")}
    for app in serve_config_in_manifest()["applications"]:
        assert app["args"]["env"] == settings_env
        builder = import_attr(app["import_path"])
        built = build_app(call_user_app_builder_with_args_if_necessary(builder, app["args"]), name=app["name"])
        rebuilt = [deployment_to_schema(d).model_dump(mode="json", exclude_unset=True) for d in built.deployments]
        assert rebuilt == app["deployments"], app["name"]


def test_render_check_mode_detects_a_stale_manifest(tmp_path, capsys):
    module = render_module()
    stale = tmp_path / "rayservice.yaml"
    stale.write_text((K8S_DIR / "rayservice.yaml").read_text().replace("max_replicas: 16", "max_replicas: 17"))
    assert module.main(["--check", "--manifest", str(stale)]) == 1
    assert module.main(["--manifest", str(stale)]) == 0  # rewrites it
    assert module.main(["--check", "--manifest", str(stale)]) == 0
    assert stale.read_text() == (K8S_DIR / "rayservice.yaml").read_text()


@pytest.mark.parametrize("line", ["NO_EQUALS_SIGN", "BAD KEY=1"])
def test_env_file_rejects_malformed_lines(tmp_path, line):
    path = tmp_path / "bad.env"
    path.write_text(f"# comment\n{line}\n")
    with pytest.raises(ValueError, match="expected KEY=VALUE"):
        render_module().read_env_file(path)


# --------------------------------------------------------------------------- invariants


def gpu_group() -> dict[str, Any]:
    groups = [
        g
        for g in rayservice()["spec"]["rayClusterConfig"]["workerGroupSpecs"]
        if "nvidia.com/gpu" in g["template"]["spec"]["containers"][0]["resources"].get("limits", {})
    ]
    assert len(groups) == 1, "expected exactly one GPU worker group"
    return groups[0]


def test_gpu_worker_group_scales_from_zero_with_gpu_limits():
    group = gpu_group()
    assert group["minReplicas"] == 0
    assert group["maxReplicas"] >= 1
    assert group.get("replicas", 0) == 0
    (container,) = group["template"]["spec"]["containers"]
    limits, requests = container["resources"]["limits"], container["resources"]["requests"]
    assert quantity(limits["nvidia.com/gpu"]) >= 1
    assert requests["nvidia.com/gpu"] == limits["nvidia.com/gpu"]  # extended resources: must be equal


def test_gpu_worker_group_holds_every_replica_the_pools_may_ask_for():
    """At max replicas both pools fit on maxReplicas GPU pods: GPU fractions and CPUs."""
    group = gpu_group()
    limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
    gpus, cpus = quantity(limits["nvidia.com/gpu"]), quantity(limits["cpu"])
    enc, smp = settings().encoder, settings().sampler
    assert 0 < enc.num_gpus < 1 and 0 < smp.num_gpus <= 1, "both pools run on GPU fractions"
    per_pod_gpu = gpus // 1
    # Pack per pod: one encoder replica and as many sampler replicas as the rest of the GPUs hold.
    samplers_per_pod = int((per_pod_gpu - enc.num_gpus) // smp.num_gpus)
    assert samplers_per_pod >= 1
    assert enc.num_cpus + samplers_per_pod * smp.num_cpus <= cpus
    pods = group["maxReplicas"]
    assert enc.max_replicas <= pods, f"{enc.max_replicas} encoder replicas need more than {pods} pods"
    assert smp.max_replicas <= pods * samplers_per_pod
    for pool, options in (("encoder", enc), ("sampler", smp)):
        actor = deployment_options(pool)["ray_actor_options"]
        assert actor["num_gpus"] == options.num_gpus


def test_head_runs_no_replicas_and_autoscaling_is_in_tree():
    cluster = rayservice()["spec"]["rayClusterConfig"]
    params = cluster["headGroupSpec"]["rayStartParams"]
    assert params["num-cpus"] == "0" and params["num-gpus"] == "0"
    assert cluster["enableInTreeAutoscaling"] is True
    resources = cluster["autoscalerOptions"]["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"]) and {"cpu", "memory"} <= set(resources["limits"])


def test_serve_config_carries_both_pools_autoscaling_settings():
    for pool in ("encoder", "sampler"):
        options = getattr(settings(), pool)
        scaling = deployment_options(pool)["autoscaling_config"]
        assert scaling["min_replicas"] == options.min_replicas
        assert scaling["max_replicas"] == options.max_replicas
        assert scaling["target_ongoing_requests"] == options.target_ongoing_requests


def test_graceful_shutdown_outlasts_the_longest_job():
    max_job_s = settings().max_job_s  # the longest job the system runs (workers.settings)
    timeouts = []
    for pool in ("encoder", "sampler"):
        timeout_s = deployment_options(pool)["graceful_shutdown_timeout_s"]
        assert timeout_s > max_job_s, f"{pool}: graceful_shutdown_timeout_s {timeout_s} <= max_job_s {max_job_s}"
        timeouts.append(timeout_s)
    grace_s = gpu_group()["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace_s > max(timeouts), f"GPU pods' grace {grace_s} s must exceed the replicas' drain {max(timeouts)} s"
    engine_grace_s = the("Deployment", "audio-omni-engine")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert engine_grace_s > max_job_s


def images() -> list[tuple[str, str]]:
    found = [(where, c["image"]) for where, c in containers()]
    found += [(f"{p.name}: FROM", ref) for p in DOCKER_DIR.glob("Dockerfile*") for ref in dockerfile_bases(p)]
    return found


def dockerfile_bases(path: Path) -> list[str]:
    """Base images of a Dockerfile, with `ARG` defaults substituted; build stages excluded."""
    text = path.read_text()
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", text, flags=re.M))
    stages = set(re.findall(r"^FROM .* AS (\w+)$", text, flags=re.M | re.I))
    bases = []
    for ref in re.findall(r"^FROM (\S+)", text, flags=re.M):
        ref = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], ref)
        if ref not in stages:
            bases.append(ref)
    return bases


def test_every_image_is_pinned_and_none_is_latest():
    assert images()
    for where, ref in images():
        name, _, digest = ref.partition("@")
        tag = name.rsplit(":", 1)[1] if ":" in name.rsplit("/", 1)[-1] else ""
        assert tag or digest, f"{where}: image {ref!r} has neither a tag nor a digest"
        assert tag != "latest", f"{where}: image {ref!r} uses latest"
    for image in kustomization().get("images", []):
        assert image.get("newTag", "") not in ("", "latest") or image.get("digest")


def test_every_pod_and_container_runs_as_non_root():
    for where, template in pod_templates():
        pod = template["spec"].get("securityContext", {})
        assert pod.get("runAsNonRoot") is True, where
        assert pod.get("runAsUser", 0) != 0, where
    for where, container in containers():
        ctx = container.get("securityContext", {})
        assert ctx.get("allowPrivilegeEscalation") is False, where
        assert ctx.get("runAsNonRoot", True) is True and ctx.get("runAsUser", 1) != 0, where
        assert ctx.get("privileged", False) is False, where
    autoscaler = rayservice()["spec"]["rayClusterConfig"]["autoscalerOptions"]["securityContext"]
    assert autoscaler["runAsNonRoot"] is True


def test_every_container_sets_requests_and_limits():
    for where, container in containers():
        resources = container.get("resources", {})
        for key in ("cpu", "memory"):
            request, limit = resources.get("requests", {}).get(key), resources.get("limits", {}).get(key)
            assert request is not None and limit is not None, f"{where}: {key} request/limit missing"
            assert quantity(request) <= quantity(limit), f"{where}: {key} request {request} > limit {limit}"


def test_pods_with_metrics_are_annotated_for_prometheus():
    for where, template in pod_templates():
        ports = {p["containerPort"] for c in template["spec"]["containers"] for p in c.get("ports", [])}
        annotations = template["metadata"].get("annotations", {})
        if annotations.get("prometheus.io/scrape") == "true":
            assert int(annotations["prometheus.io/port"]) in ports, where
    scraped = {w for w, t in pod_templates() if t["metadata"].get("annotations", {}).get("prometheus.io/scrape")}
    for must in ("Deployment/audio-omni-engine", "Deployment/audio-omni-api", "RayService/audio-omni/gpu"):
        assert must in scraped


def test_s3_credentials_come_from_a_secret_only():
    for name in ("audio-omni-engine", "audio-omni-api"):
        (container,) = the("Deployment", name)["spec"]["template"]["spec"]["containers"]
        env = {e["name"]: e for e in container.get("env", [])}
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            assert env[key]["valueFrom"]["secretKeyRef"]["name"] == "audio-omni-s3", f"{name}: {key}"
            assert "value" not in env[key]
    for file_name in ("config.env", "workers.env"):
        leaked = [k for k in env_file(file_name) if "SECRET" in k or "ACCESS_KEY" in k or "PASSWORD" in k]
        assert not leaked, f"{file_name} holds credentials: {leaked}"
    assert not objects("Secret"), "credentials are never committed as a Secret manifest"


def test_redis_statefulset_persists_with_aof_and_never_evicts():
    (container,) = the("StatefulSet", "redis")["spec"]["template"]["spec"]["containers"]
    args = container["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    assert args[args.index("--maxmemory-policy") + 1] == "noeviction"


def test_backlog_autoscaling_reads_the_queues_redis():
    config = env_file("config.env")
    assert settings().backlog_redis_url == config["REDIS_URL"]
    assert settings().backlog_prefix == config["AUDIO_OMNI_REDIS_PREFIX"]


def test_weights_are_mounted_read_only_never_baked_in():
    (container,) = gpu_group()["template"]["spec"]["containers"]
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts["/models"]["readOnly"] is True
    assert settings().weights.startswith("/models/")
    for path in DOCKER_DIR.glob("Dockerfile*"):
        if path.suffix == ".dockerignore":
            continue
        text = path.read_text()
        assert not re.search(r"^(COPY|ADD)\s.*(\.ckpt|\.safetensors|/models)", text, flags=re.M), path.name
        assert re.search(r"^USER 10001", text, flags=re.M), f"{path.name}: not a non-root USER"
        assert "torch==2.13.0" in text, f"{path.name}: torch is not pinned to the project's version"


def test_worker_image_has_torchvision_and_a_cuda_torch():
    text = (DOCKER_DIR / "Dockerfile").read_text()
    assert re.search(r"torchvision==\d+\.\d+\.\d+", text)
    assert "whl/cu" in text
    assert all(ref.startswith("nvidia/cuda:") for ref in dockerfile_bases(DOCKER_DIR / "Dockerfile"))


def test_serve_replicas_log_json_lines():
    """Replica logs are JSON lines like the API's and the engine's (docs/operations.md, "Logs")."""
    for app in serve_config_in_manifest()["applications"]:
        assert app["logging_config"]["encoding"] == "JSON", app["name"]
