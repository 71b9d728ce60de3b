"""LocalStorage (embedded mode) and the input policy, on a real temporary folder."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from orchestrator.storage import (
    ChecksumMismatch,
    InputNotAllowed,
    InputNotFound,
    InputPolicy,
    InputResolver,
    InputTooLarge,
    LocalStorage,
    ObjectNotFound,
    PermanentError,
    S3Location,
    input_resolver_from_settings,
    metadata_key,
    result_key,
    storage_from_settings,
    validate_id,
)

WAV = b"RIFF" + bytes(range(256)) * 40


@pytest.fixture()
def store(tmp_path: Path) -> LocalStorage:
    return LocalStorage(tmp_path / "out", prefix="runs/")


@pytest.fixture()
def embedded(tmp_path: Path) -> tuple[InputResolver, Path]:
    """Embedded storage whose inputs must lie under tmp_path/inputs."""
    root = tmp_path / "inputs"
    (root / "clips").mkdir(parents=True)
    (root / "clips" / "a.wav").write_bytes(WAV)
    policy = InputPolicy(input_root=root, embedded=True)
    return InputResolver(LocalStorage(tmp_path / "out"), policy), root


# --------------------------------------------------------------------------- keys


def test_keys_are_deterministic_and_grouped_by_batch_or_job():
    assert result_key("acme", "job-1", "wav") == "acme/job-1/job-1.wav"
    assert result_key("acme", "job-1", "flac", batch_id="b7", prefix="/out/") == "out/acme/b7/job-1.flac"
    assert metadata_key("acme", "job-1", batch_id="b7") == "acme/b7/job-1.json"


@pytest.mark.parametrize("bad", ["", "a/b", "..", "a..b", ".hidden", "x" * 65, "sp ace", "t\x00", 7])
def test_bad_ids_are_refused(bad):
    with pytest.raises(ValueError, match="invalid"):
        validate_id(bad, "tenant")
    with pytest.raises(ValueError, match="invalid"):
        result_key("acme", bad, "wav") if isinstance(bad, str) else result_key(bad, "j", "wav")


def test_bad_ext_is_refused():
    with pytest.raises(ValueError, match=r"extension 'mp3' is invalid.*flac"):
        result_key("acme", "j1", "mp3")


# --------------------------------------------------------------------------- round trips


def test_put_get_exists_head_url_delete(store: LocalStorage):
    key = store.result_key("acme", "j1", "wav")
    assert not store.exists(key)
    assert store.head(key) is None
    info = store.put(key, WAV)
    assert info.sha256 == hashlib.sha256(WAV).hexdigest()
    assert info.size_bytes == len(WAV)
    assert store.exists(key)
    assert store.get(key) == WAV
    head = store.head(key)
    assert head is not None
    assert (head.size_bytes, head.content_type, head.sha256) == (len(WAV), "audio/wav", info.sha256)
    url = store.url(key)
    assert url.startswith("file://")
    assert url == store.path(key).as_uri()
    assert store.path(key) == store.root / "runs" / "acme" / "j1" / "j1.wav"
    store.delete(key)
    assert not store.exists(key)
    store.delete(key)  # absent: no error
    with pytest.raises(ObjectNotFound, match=r"j1\.wav"):
        store.get(key)


def test_file_objects_are_accepted(store: LocalStorage, tmp_path: Path):
    source = tmp_path / "src.flac"
    source.write_bytes(WAV * 3)
    with source.open("rb") as handle:
        info = store.put("acme/j2/j2.flac", handle)
    assert info.sha256 == hashlib.sha256(WAV * 3).hexdigest()
    assert store.get("acme/j2/j2.flac") == WAV * 3
    assert store.head("acme/j2/j2.flac").content_type == "audio/flac"


def test_write_is_atomic_and_leaves_no_temp_files(store: LocalStorage):
    key = "acme/j1/j1.wav"
    store.put(key, b"old bytes")
    before = store.path(key).stat().st_ino
    store.put(key, WAV)
    # A rename replaces the inode; an in-place rewrite would keep it.
    assert store.path(key).stat().st_ino != before
    assert store.get(key) == WAV
    names = sorted(p.name for p in store.path(key).parent.iterdir())
    assert names == [".j1.wav.sha256", "j1.wav"]


def test_tampered_file_is_detected(store: LocalStorage):
    key = "acme/j1/j1.wav"
    store.put(key, WAV)
    store.path(key).write_bytes(WAV[:-1] + b"\x00")
    with pytest.raises(ChecksumMismatch, match="checksum mismatch") as caught:
        store.get(key)
    assert caught.value.expected == hashlib.sha256(WAV).hexdigest()
    assert isinstance(caught.value, PermanentError)
    assert store.get(key, verify=False) == WAV[:-1] + b"\x00"


@pytest.mark.parametrize("bad", ["/abs/x.wav", "a/../b.wav", "a//b.wav", "a/.x.wav.sha256", "a/./b", ""])
def test_bad_keys_are_refused(store: LocalStorage, bad):
    with pytest.raises(ValueError, match="invalid"):
        store.put(bad, b"x")


def test_put_result_writes_result_then_metadata_beside_it(store: LocalStorage):
    loc = store.put_result(
        tenant="acme", job_id="j9", batch_id="b1", data=WAV, ext="wav", metadata={"seed": 7, "task": "tts"}
    )
    assert loc.result_key == "runs/acme/b1/j9.wav"
    assert loc.metadata_key == "runs/acme/b1/j9.json"
    assert store.get(loc.result_key) == WAV
    document = json.loads(store.get(loc.metadata_key))
    assert document["seed"] == 7
    assert document["result_object"] == {
        "key": "runs/acme/b1/j9.wav",
        "sha256": hashlib.sha256(WAV).hexdigest(),
        "size_bytes": len(WAV),
        "content_type": "audio/wav",
    }
    assert store.head(loc.metadata_key).content_type == "application/json"
    # A replay rewrites the same keys with the same bytes: still exactly one result.
    again = store.put_result(
        tenant="acme", job_id="j9", batch_id="b1", data=WAV, ext="wav", metadata={"seed": 7, "task": "tts"}
    )
    assert again == loc
    files = sorted(p.name for p in (store.root / "runs" / "acme" / "b1").iterdir() if not p.name.startswith("."))
    assert files == ["j9.json", "j9.wav"]


def test_put_result_metadata_only_and_validation(store: LocalStorage):
    loc = store.put_result(tenant="acme", job_id="u1", metadata={"answer": "a dog barks"})
    assert loc.result_key is None
    assert json.loads(store.get(loc.metadata_key)) == {"answer": "a dog barks", "result_object": None}
    with pytest.raises(ValueError, match="extension 'json'"):
        store.put_result(tenant="acme", job_id="u2", data=WAV, ext="json", metadata={})
    with pytest.raises(ValueError, match="not JSON-serializable"):
        store.put_result(tenant="acme", job_id="u3", data=WAV, metadata={"x": object()})
    with pytest.raises(ValueError, match="reserved"):
        store.put_result(tenant="acme", job_id="u4", data=WAV, metadata={"result_object": 1})
    # A refused metadata document means nothing was written.
    assert not store.exists(store.result_key("acme", "u3", "wav"))


# --------------------------------------------------------------------------- local inputs


def test_local_input_under_root_is_read(embedded):
    store, root = embedded
    assert store.read("clips/a.wav", tenant="acme", max_bytes=1 << 20) == WAV
    assert store.read(str(root / "clips" / "a.wav"), tenant="acme", max_bytes=1 << 20) == WAV
    assert store.read((root / "clips" / "a.wav").as_uri(), tenant="acme", max_bytes=1 << 20) == WAV


def test_local_input_size_limit_and_missing(embedded):
    store, _ = embedded
    with pytest.raises(InputTooLarge, match=rf"{len(WAV)} bytes, over the limit of 100 bytes"):
        store.read("clips/a.wav", tenant="acme", max_bytes=100)
    with pytest.raises(InputNotFound, match=r"clips/nope\.wav"):
        store.read("clips/nope.wav", tenant="acme", max_bytes=100)
    with pytest.raises(ValueError, match="max_bytes 0 is invalid"):
        store.read("clips/a.wav", tenant="acme", max_bytes=0)


def test_local_escapes_are_refused(embedded, tmp_path: Path):
    store, root = embedded
    secret = tmp_path / "secret.wav"
    secret.write_bytes(b"secret")
    os.symlink(secret, root / "clips" / "link.wav")
    os.symlink(tmp_path, root / "up")
    cases = {
        "../secret.wav": "'..' path segments",
        "clips/../../secret.wav": "'..' path segments",
        str(secret): "outside the input root",
        "clips/link.wav": "outside the input root",
        "up/secret.wav": "outside the input root",
        secret.as_uri(): "outside the input root",
        "file://otherhost/etc/passwd": "may not name a host",
    }
    for uri, rule in cases.items():
        with pytest.raises(InputNotAllowed, match=rule) as caught:
            store.read(uri, tenant="acme", max_bytes=1 << 20)
        assert caught.value.uri == uri


def test_symlink_inside_root_is_allowed(embedded):
    store, root = embedded
    os.symlink(root / "clips" / "a.wav", root / "alias.wav")
    assert store.read("alias.wav", tenant="acme", max_bytes=1 << 20) == WAV


REFUSED_EVERYWHERE = {
    "http://example.com/a.wav": "http:// inputs are not fetched",
    "https://example.com/a.wav": "https:// inputs are not fetched",
    "http://169.254.169.254/latest/meta-data/": "metadata-service host '169.254.169.254'",
    "http://[fd00:ec2::254]/latest/": "metadata-service host",
    "https://metadata.google.internal/computeMetadata/v1/": "metadata-service host",
    "s3://169.254.169.254/latest/meta-data": "metadata-service host",
    "ftp://example.com/a.wav": "unknown scheme 'ftp'",
    "gopher://x/": "unknown scheme 'gopher'",
    "data:audio/wav;base64,AAAA": "unknown scheme 'data'",
    "s3:/bucket/key": "s3://bucket/key",
    "clips/a\nb.wav": "control characters",
}


@pytest.mark.parametrize("embedded_mode", [True, False])
@pytest.mark.parametrize("uri", sorted(REFUSED_EVERYWHERE))
def test_refused_uris(tmp_path: Path, uri, embedded_mode):
    root = tmp_path if embedded_mode else None
    policy = InputPolicy(["s3://uploads/{tenant}/"], input_root=root, embedded=embedded_mode)
    with pytest.raises(InputNotAllowed, match=REFUSED_EVERYWHERE[uri]) as caught:
        policy.check(uri, tenant="acme")
    assert caught.value.uri == uri
    assert repr(uri) in str(caught.value)


def test_service_mode_refuses_local_paths_and_file_uris(tmp_path: Path):
    policy = InputPolicy(["s3://uploads/{tenant}/"])
    for uri in ("clips/a.wav", "/etc/passwd", (tmp_path / "a.wav").as_uri()):
        with pytest.raises(InputNotAllowed, match="only in embedded mode"):
            policy.check(uri, tenant="acme")
    with pytest.raises(ValueError, match="only in embedded mode"):
        InputPolicy(input_root=tmp_path)


def test_s3_rules_scope_tenants_and_buckets():
    policy = InputPolicy(["s3://uploads/{tenant}/", "shared-samples", "s3://team/audio"])
    assert policy.check("s3://uploads/acme/a.wav", tenant="acme") == S3Location("uploads", "acme/a.wav")
    assert policy.check("s3://shared-samples/x/y.flac", tenant="acme").key == "x/y.flac"
    assert policy.check("s3://team/audio/z.wav", tenant="acme").bucket == "team"
    refused = {
        "s3://uploads/globex/a.wav": "tenant 'acme' may read",
        "s3://uploads/acme-evil/a.wav": "tenant 'acme' may read",  # segment boundary, not string prefix
        "s3://team/audiophile/z.wav": "tenant 'acme' may read",
        "s3://other-bucket/acme/a.wav": "tenant 'acme' may read",
        "s3://uploads/acme/../globex/a.wav": "'..' path segments",
        "s3://uploads/acme/": "must name an object",
        "s3://Bad_Bucket/acme/a.wav": "not a valid S3 bucket name",
    }
    for uri, rule in refused.items():
        with pytest.raises(InputNotAllowed, match=rule):
            policy.check(uri, tenant="acme")


def test_bad_policy_rules_are_refused():
    for rule in ("", "s3://Bad_Bucket/", "s3://b/{user}/", "s3://10.0.0.1/x", "s3://bkt/a/../b"):
        with pytest.raises(ValueError, match="invalid"):
            InputPolicy([rule])
    with pytest.raises(ValueError, match="sequence of rules"):
        InputPolicy("s3://uploads/")


def test_embedded_s3_input_without_client_is_refused(tmp_path: Path):
    inputs = InputResolver(LocalStorage(tmp_path), InputPolicy(["uploads"], embedded=True))
    inputs.check("s3://uploads/acme/a.wav", tenant="acme")  # allowed by the rules ...
    with pytest.raises(InputNotAllowed, match="no S3 client"):  # ... but there is nothing to read it with
        inputs.read("s3://uploads/acme/a.wav", tenant="acme", max_bytes=10)


def test_factory_builds_embedded_storage_and_checks_arguments(tmp_path: Path):
    store = storage_from_settings(local_root=tmp_path / "out", input_root=tmp_path, prefix="p")
    assert isinstance(store, LocalStorage)
    assert store.prefix == "p/"
    inputs = input_resolver_from_settings(store, local_root=tmp_path / "out", input_root=tmp_path, prefix="p")
    assert inputs.policy.embedded and inputs.policy.input_root == tmp_path.resolve()
    assert inputs.s3_client is None  # no S3 input rules: no client
    with pytest.raises(ValueError, match="exactly one of bucket"):
        storage_from_settings(bucket="b-1", local_root=tmp_path)
    with pytest.raises(ValueError, match="exactly one of bucket"):
        storage_from_settings()
    with pytest.raises(ValueError, match="local inputs need local_root"):
        storage_from_settings(bucket="bucket-1", input_root=tmp_path)


def test_errors_survive_pickling():
    """Outcomes may cross process boundaries (Ray); each must rebuild with its fields."""
    import pickle

    errors = [
        InputNotAllowed("http://x/a.wav", "http:// inputs are not fetched"),
        InputNotFound("s3://b-1/acme/a.wav"),
        InputTooLarge("s3://b-1/acme/a.wav", 10, 5),
        ChecksumMismatch("s3://b-1/k", "ab", "cd"),
        ObjectNotFound("s3://b-1/k"),
    ]
    for error in errors:
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error)
        assert str(copy) == str(error)
        assert vars(copy) == vars(error)


# --------------------------------------------------------------------------- own objects (key_of)


def test_key_of_inverts_uri_and_rejects_anything_else(store: LocalStorage, tmp_path: Path):
    key = store.result_key("acme", "job-1", "wav")
    assert store.key_of(store.uri(key)) == key
    assert store.key_of(store.uri("runs/acme/uploads/u1.wav")) == "runs/acme/uploads/u1.wav"
    outside = (tmp_path / "elsewhere" / "a.wav").as_uri()
    for uri in (
        outside,
        "s3://bucket/runs/acme/a.wav",
        "runs/acme/a.wav",  # a key, not a URI
        store.uri(key).replace("file://", "file://otherhost"),
        store.uri(key) + "?x=1",
        store.uri(key).replace("/acme/", "/acme/../globex/"),
        store.uri(key).replace("/acme/", "/.hidden/"),
        "",
    ):
        assert store.key_of(uri) is None, uri


def test_a_tenant_reads_its_own_results_and_no_one_elses(tmp_path: Path):
    """The embedded-mode rule the API and the engine share: file:// under the tenant's own prefix."""
    store = LocalStorage(tmp_path / "out", prefix="runs/")
    inputs = InputResolver(store, InputPolicy(embedded=True))  # no input root: only own objects
    mine = store.put_result(tenant="acme", job_id="j1", metadata={}, data=WAV).result_uri
    theirs = store.put_result(tenant="globex", job_id="j2", metadata={}, data=WAV).result_uri
    assert mine is not None and theirs is not None
    inputs.check(mine, tenant="acme")
    assert inputs.read(mine, tenant="acme", max_bytes=1 << 20) == WAV
    with pytest.raises(InputNotAllowed, match="local inputs need an input root") as caught:
        inputs.check(theirs, tenant="acme")
    assert caught.value.uri == theirs
    with pytest.raises(InputNotFound, match="j3"):
        inputs.read(store.uri(store.result_key("acme", "j3", "wav")), tenant="acme", max_bytes=100)
    with pytest.raises(InputTooLarge, match="over the limit of 10 bytes"):
        inputs.read(mine, tenant="acme", max_bytes=10)
    # A damaged object is caught by its recorded checksum.
    store.path(store.result_key("acme", "j1", "wav")).write_bytes(b"RIFF" + bytes(4))
    with pytest.raises(ChecksumMismatch):
        inputs.read(mine, tenant="acme", max_bytes=1 << 20)


def test_tenant_rules_are_asked_only_for_s3_uris_the_deployment_refuses(tmp_path: Path):
    asked: list[str] = []

    def rules(tenant: str) -> InputPolicy | None:
        asked.append(tenant)
        return InputPolicy(["s3://team-audio/"]) if tenant == "acme" else None

    inputs = InputResolver(LocalStorage(tmp_path), InputPolicy(["shared"], embedded=True), tenant_rules=rules)
    inputs.check("s3://shared/a.wav", tenant="acme")
    assert asked == []  # allowed by the deployment: no lookup
    inputs.check("s3://team-audio/a.wav", tenant="acme")
    assert asked == ["acme"]
    with pytest.raises(InputNotAllowed, match="tenant 'globex' may read"):
        inputs.check("s3://team-audio/a.wav", tenant="globex")
    with pytest.raises(InputNotAllowed, match="unknown scheme"):
        inputs.check("ftp://team-audio/a.wav", tenant="acme")
    assert asked == ["acme", "globex"]
