"""`audio-omni verify` on a vector set whose sizes the released schema allows but the release does not use.

The config differs from the shared tiny set where our runtime once refused it: an Oobleck encoder
whose width (8) differs from its output width (16 = 2 * latent), and a mel conditioner with its own
rate (16 kHz), hop (160), FFT and mel sizes, and a frame count (101) that only the weights record.
The vectors are written in the shared set's layout (tensor names and `case` metadata) from our
components' outputs on seeded inputs, so the test shows that verify loads such a set and checks
every tensor, and that a wrong tensor fails it.
"""

from __future__ import annotations

import copy
import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from model.build import build_encoder, build_sampler
from model.checkpoint import released_state_dict
from model.config import MEL_ID, OMNI_ID, SPEECH_ID, SYNC_ID, AudioOmniConfig
from model.mllm import select_hidden
from model.sampler import euler_sample, reference_noise
from model.vae import decode, encode_moments, encode_raw
from orchestrator.cli import main

MEL_FRAMES = 101  # 1 s at 16 kHz, hop 160: recorded by the weights only
MEL_SAMPLES = (MEL_FRAMES - 1) * 160
SAMPLE_SIZE = 64  # 8 latent frames at downsampling 8
OMNI_TEXTS = ["Generate the sound of a dog barking.", "Rain on a tin roof"]
SPEECH_TEXTS = ["hello world", None]
THINKER_PREFIX = "conditioner.conditioners.omni_prompt.model.thinker."


def _config_dict(parity_dir: Path) -> dict:
    d = json.loads((parity_dir / "tiny_config.json").read_text())
    vae = d["model"]["pretransform"]["config"]
    vae["encoder"]["config"]["channels"] = 8  # encoder width 8, its output (latent_dim) stays 16
    vae["decoder"]["config"]["channels"] = 12
    d["sample_size"] = SAMPLE_SIZE
    mel = d["model"]["conditioning"]["configs"][3]["config"]
    mel.update(target_sample_rate=16000, hop_length=160, n_fft=512, win_length=400, n_mel_channels=40)
    d["model"]["conditioning"]["configs"][0]["config"]["qwen_omni_model_name"] = str(parity_dir / "tiny_qwen")
    return d


def _randomise(module: torch.nn.Module, seed: int) -> None:
    """Perturb every parameter: the release zero-initialises output layers, which would make vectors trivial."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))


def _ids(texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """UTF-8 bytes right-padded with 0, as the shared set's stub processor made them."""
    rows = [list(t.encode()) for t in texts]
    width = max(map(len, rows))
    ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
    return ids, (ids != 0).long()


@torch.no_grad()
def _write_set(tmp_path: Path, parity_dir: Path) -> tuple[Path, Path, Path]:
    """(config, weights, vectors) of a generated set, in the shared set's layout."""
    cfg_path = tmp_path / "config.json"
    cfg_path.write_text(json.dumps(_config_dict(parity_dir)))
    config = AudioOmniConfig.from_json(cfg_path)
    config = replace(config, mel=replace(config.mel, num_frames=MEL_FRAMES))
    sampler = build_sampler(config, seed=3, for_jobs=False)
    _randomise(sampler, seed=4)
    encoder = build_encoder(config, dtype=torch.float32)
    shared = load_file(parity_dir / "tiny_state_dict.safetensors")
    thinker = {k: v for k, v in shared.items() if k.startswith(THINKER_PREFIX)}
    encoder.load_thinker_state_dict(thinker)
    weights = {**released_state_dict(sampler), **thinker}
    save_file({k: v.contiguous().clone() for k, v in weights.items()}, tmp_path / "weights.safetensors")

    gen = torch.Generator().manual_seed(7)
    v: dict[str, torch.Tensor] = {}
    # (a) DiT
    x, t = torch.randn(2, 8, 12, generator=gen), torch.tensor([0.3, 0.85])
    cross, glob = torch.randn(2, 40, 768, generator=gen), torch.randn(2, 16, 768, generator=gen)
    mask = torch.ones(2, 40, dtype=torch.long)
    mask[1, 5:] = 0
    v.update({"dit.in.x": x, "dit.in.t": t, "dit.in.cross_cond": cross, "dit.in.cross_mask": mask})
    v["dit.in.global_cond"] = glob
    calls = [
        {"name": "dit.out.v", "cfg_scale": 1.0, "scale_phi": 0.0},
        {"name": "dit.out.v_cfg3", "cfg_scale": 3.0, "scale_phi": 0.5},
    ]
    for c in calls:
        v[c["name"]] = sampler.dit.guided_velocity(x, t, cross, mask != 0, glob, c["cfg_scale"], c["scale_phi"])
    v["dit.dbg.timestep_embed"] = sampler.dit.embed_timestep(t)
    v["dit.dbg.cond_embed"] = sampler.dit.embed_cond(cross)
    v["dit.dbg.global_embed"] = sampler.dit.embed_global(glob)
    # (b) VAE: encoder width 8, output width 16
    wav = 0.5 * torch.randn(1, 2, SAMPLE_SIZE, generator=gen)
    raw = encode_raw(sampler.vae, wav)
    mean, std = encode_moments(sampler.vae, wav)
    eps = torch.randn(mean.shape, generator=gen)
    v.update({"vae.in.wav": wav, "vae.enc.pre_bottleneck": raw, "vae.enc.mean": mean, "vae.enc.scale_raw": raw[:, 8:]})
    v.update({"vae.enc.std": std, "vae.enc.eps_seed123": eps, "vae.enc.latent_sampled": mean + std * eps})
    v["vae.dec.from_sampled"] = decode(sampler.vae, mean + std * eps)
    v["vae.dec.from_mean"] = decode(sampler.vae, mean)
    # (c) mel: 16 kHz, hop 160, 101 frames
    pcm = (8000 * torch.sin(torch.arange(MEL_SAMPLES) * 0.07)).round().to(torch.int16)[None]
    mel_wav = torch.stack([pcm[0].float() / 32768, torch.zeros(MEL_SAMPLES)])
    logmel = sampler.mel.log_mel(mel_wav)
    v.update({"mel.in.wav0_pcm16": pcm, "mel.dbg.num_frames": torch.tensor([logmel.shape[-1]])})
    v.update({"mel.dbg.logmel0_head64": logmel[:1, :, :64], "mel.dbg.logmel0_tail64": logmel[:1, :, -64:]})
    v["mel.dbg.logmel1_value"] = logmel[1, 0, :1]
    v["mel.out.tokens"], v["mel.out.mask"] = sampler.mel(mel_wav)
    v["mel.tts.mask_start_len"] = torch.tensor([10, 60])
    v["mel.tts.out.tokens"] = sampler.mel(mel_wav, mask_spans=[(10, 60), None])[0]
    # (d) speech
    sp_ids, is_none = sampler.speech.speech_token_ids(SPEECH_TEXTS, sampler.vocab)
    v["speech.in.token_ids"], v["speech.dbg.text_embed"] = sp_ids, sampler.speech.encode_text(sp_ids)
    v["speech.out.tokens"], v["speech.out.mask"] = sampler.speech(sp_ids, is_none, legacy_mixed_batch_norm=True)
    # (f) omni
    ids, am = _ids(OMNI_TEXTS)
    hidden = encoder.hidden_states(ids, am).float()
    feats = select_hidden(hidden, am, config.mllm.pad_length)
    v.update({"omni.in.input_ids": ids, "omni.in.attention_mask": am, "omni.dbg.hidden_m2": hidden})
    v["omni.dbg.hidden_m2_bf16"] = hidden.bfloat16().float()
    v["omni.dbg.normed_bf16"] = sampler.omni_proj.pad_and_norm(feats)[0]
    v["omni.out.tokens"], v["omni.out.mask"] = sampler.omni_proj(feats)
    # (e) sampling: item 0 has every input, item 1 none
    sync0 = torch.randn(1, 240, 768, generator=gen).half()
    outputs = {
        OMNI_ID: sampler.omni_proj(feats),
        SPEECH_ID: (v["speech.out.tokens"], v["speech.out.mask"]),
        MEL_ID: (v["mel.out.tokens"], v["mel.out.mask"]),
        SYNC_ID: sampler.sync(torch.stack([sync0[0].float(), sampler.sync.null_features(1)[0]])),
    }
    cond = sampler.assemble(outputs)
    noise = reference_noise(42, 2, (8, SAMPLE_SIZE // 8))
    v.update({"samp.in.sync_feature0_f16": sync0, "samp.noise_seed42": noise})
    v.update({"samp.cond.cross_attn_cond": cond.cross, "samp.cond.cross_attn_mask": cond.cross_mask.float()})
    v["samp.cond.global_cond"] = cond.prefix

    def on_step(k: int, t: torch.Tensor, x: torch.Tensor, vel: torch.Tensor) -> None:
        v[f"samp.step{k}.t"], v[f"samp.step{k}.v_cfg"] = t.clone(), vel.clone()
        if k:
            v[f"samp.step{k}.x"] = x.clone()

    def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return sampler.dit.guided_velocity(x, t, cond.cross, cond.cross_mask, cond.prefix, 4.0, 0.0)

    latent = euler_sample(velocity, noise, 3, on_step=on_step)
    v["samp.out.latent"], v["samp.out.audio"] = latent, sampler.decode(latent)

    items = [
        {"omni_text": OMNI_TEXTS[0], "sync_feature": "samp.in.sync_feature0_f16", "speech": SPEECH_TEXTS[0]},
        {"omni_text": OMNI_TEXTS[1], "sync_feature": "zeros(1,240,768)", "speech": SPEECH_TEXTS[1]},
    ]
    for i, it in enumerate(items):
        it.update(audio_input=f"mel item {i}", TASK_TTS=False)
    omni = {"texts": OMNI_TEXTS, "layer_idx": -2}
    omni.update(hidden_name="omni.dbg.hidden_m2", hidden_bf16_name="omni.dbg.hidden_m2_bf16")
    sampling = {"steps": 3, "cfg_scale": 4.0, "scale_phi": 0.0, "seed": 42, "sample_size": SAMPLE_SIZE}
    sampling.update(noise_name="samp.noise_seed42", items=items)
    case = {
        "dit": {"calls": calls},
        "vae": {"eps_name": "vae.enc.eps_seed123"},
        "mel": {"items": ["mel.in.wav0_pcm16 / 32768", f"zeros({MEL_SAMPLES})"], "tts_item": 0},
        "speech": {"texts": SPEECH_TEXTS},
        "omni": omni,
        "sampling": sampling,
    }
    vectors = tmp_path / "vectors.safetensors"
    save_file({k: t.detach().contiguous().clone() for k, t in v.items()}, vectors, metadata={"case": json.dumps(case)})
    return cfg_path, tmp_path / "weights.safetensors", vectors


@pytest.fixture(scope="module")
def generated_set(parity_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    return _write_set(tmp_path_factory.mktemp("other_sizes"), parity_dir)


def _verify(capsys: pytest.CaptureFixture[str], config: Path, weights: Path, vectors: Path) -> tuple[int, list[dict]]:
    rc = main(["verify", "--config", str(config), "--weights", str(weights), "--vectors", str(vectors)])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]
    return rc, lines


def test_the_generated_config_is_one_the_release_never_used(generated_set: tuple[Path, Path, Path]):
    config = AudioOmniConfig.from_json(generated_set[0])
    assert config.vae.encoder_channels != config.vae.encoder_latent_dim
    assert (config.mel.sample_rate, config.mel.hop_length) != (config.sample_rate, 256)
    assert "num_frames" not in json.loads(generated_set[0].read_text())["model"]["conditioning"]["configs"][3]["config"]
    with pytest.raises(ValueError, match="target_sample_rate = 16000 differs from the model's sample_rate = 44100"):
        build_sampler(config)  # jobs would feed the mel conditioner 44.1 kHz audio


def test_verify_loads_and_checks_every_tensor_of_a_set_with_other_sizes(generated_set, capsys):
    rc, lines = _verify(capsys, *generated_set)
    checks = [line for line in lines if "tensor" in line]
    assert rc == 0, [c for c in checks if not c["ok"]]
    run_params = {"mel.tts.mask_start_len", "vae.enc.eps_seed123"}
    outputs = {n for n in load_file(generated_set[2]) if ".in." not in n} - run_params
    assert outputs <= {c["tensor"] for c in checks}, sorted(outputs - {c["tensor"] for c in checks})
    assert lines[-1] == {"checked": len(checks), "failed": 0}


@pytest.mark.parametrize("name", ["vae.enc.pre_bottleneck", "mel.out.tokens", "samp.out.latent"])
def test_verify_fails_on_a_corrupted_vector(generated_set, capsys, tmp_path, name):
    config, weights, vectors = generated_set
    tensors = load_file(vectors)
    tensors[name] = tensors[name] + 0.01
    from safetensors import safe_open

    with safe_open(str(vectors), framework="pt") as fh:
        meta = fh.metadata()
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, bad, metadata=copy.deepcopy(meta))
    rc, lines = _verify(capsys, config, weights, bad)
    assert rc == 1
    failed = {line["tensor"] for line in lines if "tensor" in line and not line["ok"]}
    assert failed == {name}
