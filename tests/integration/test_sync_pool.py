"""The encoder pool's `sync_features` inside a real `serve.run` (tiny preset, local Ray): concurrent
callers' clips share extractor batches, each caller gets its own clip's features, a refused clip
fails only its caller; InProcessPools offers the same call."""

from __future__ import annotations

import threading

import pytest
import torch

from model.sync import SYNC_SIZE, sync_token_count

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CALLERS = 4


def _frames(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, SYNC_SIZE, SYNC_SIZE), dtype=torch.uint8, generator=g)


@pytest.fixture(scope="module")
def settings():
    from workers.settings import PoolSettings, WorkerSettings

    return WorkerSettings(
        preset="tiny",
        app_name="test-sync-pool",
        # A long batch wait: the concurrent callers below land in one batch whatever the machine's load.
        encoder=PoolSettings(num_cpus=0.5, max_batch_size=CALLERS, batch_wait_timeout_s=2.0),
        sampler=PoolSettings(num_cpus=0.5, max_batch_size=2, batch_wait_timeout_s=0.05),
    )


@pytest.fixture(scope="module")
def pools(ray_cluster, settings):
    from workers.app import deploy, shutdown

    handle = deploy(settings)
    yield handle
    shutdown(settings)


@pytest.fixture(scope="module")
def reference(settings):
    """The extractor the pool builds (same preset, same seed), in this process."""
    from model.build import build_sync_extractor

    extractor = build_sync_extractor(settings.load_config(), weights=settings.resolved_sync_weights)
    assert extractor is not None
    return extractor


def _call_concurrently(fn, clips: list[torch.Tensor]) -> list[torch.Tensor | Exception]:
    results: list[torch.Tensor | Exception | None] = [None] * len(clips)
    start = threading.Barrier(len(clips))

    def worker(i: int) -> None:
        start.wait()
        try:
            results[i] = fn(clips[i])
        except Exception as exc:  # recorded for the assertions
            results[i] = exc

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(clips))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert all(r is not None for r in results), "a caller did not return"
    return results  # type: ignore[return-value]


def test_concurrent_callers_share_batches_and_get_their_own_features(pools, settings, reference):
    config = settings.load_config()
    before = pools.sync_stats()
    clips = [_frames(n, seed) for seed, n in enumerate((16, 40, 24, 32))]  # 1, 4, 2 and 3 segments
    results = _call_concurrently(pools.sync_features, clips)
    for clip, features in zip(clips, results, strict=True):
        assert isinstance(features, torch.Tensor), features
        assert features.shape == (sync_token_count(clip.shape[0], config), config.cond_dim)
        assert features.dtype == torch.float32 and features.device.type == "cpu"
        # Batched with other jobs' clips, equal to the clip alone up to float rounding.
        torch.testing.assert_close(features, reference.clip_features([clip])[0], atol=1e-5, rtol=1e-5)
    after = pools.sync_stats()
    new = {size: after.get(size, 0) - before.get(size, 0) for size in after}
    assert sum(size * n for size, n in new.items()) == CALLERS  # every clip went through a batch once
    assert any(size > 1 and n > 0 for size, n in new.items()), f"no batch held two callers' clips: {new}"


def test_a_refused_clip_fails_only_its_caller(pools):
    clips = [_frames(16, 7), _frames(8, 8), torch.zeros(16, 3, 64, 64, dtype=torch.uint8), _frames(24, 9)]
    results = _call_concurrently(pools.sync_features, clips)
    assert isinstance(results[0], torch.Tensor) and results[0].shape == (8, 768)
    assert isinstance(results[3], torch.Tensor) and results[3].shape == (16, 768)
    assert isinstance(results[1], ValueError) and "at least 16 frames" in str(results[1])
    assert isinstance(results[2], ValueError) and "(T, 3, 224, 224)" in str(results[2])


def test_a_ten_second_window_is_the_sync_conditioners_input(pools, settings, reference):
    from workers.app import InProcessPools

    config = settings.load_config()
    window = _frames(250, 11)  # 10 s at 25 fps
    served = pools.sync_features(window)
    assert served.shape == (config.sync.seq_in, config.cond_dim)
    in_process = InProcessPools.build(settings)
    local = in_process.sync_features(window)
    assert in_process.calls["sync_features"] == 1
    torch.testing.assert_close(served, local, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="at least 16 frames"):
        in_process.sync_features(_frames(15, 0))
    without = InProcessPools(in_process.encoder, in_process.sampler)  # e.g. released layout, no weights
    with pytest.raises(ValueError, match=r"no Synchformer weights.*--synchformer"):
        without.sync_features(window)
