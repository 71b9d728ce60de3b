"""Memory model of one sampler replica: weights at a precision plus DiT activations at a batch size.

Used to choose the sampler batch size and how many replicas share a GPU. Parameters are counted by
building the sampler part on the ``meta`` device (no memory, no weights). Activations are an
analytic upper estimate of the live tensors at the peak of one guided (2B-row) DiT forward; the
estimate is checked against a measured peak (CUDA allocator on a GPU; a live-tensor tracker on
CPU) in the tests and in ``bench/gpu_check.py``.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from model.config import AudioOmniConfig
from model.dit import FF_MULT
from model.precision import POLICIES, Precision

GIB = 1024**3
# Allocator fragmentation, CUDA context and library workspaces: the estimate is multiplied by this.
DEFAULT_HEADROOM = 1.2
# Bytes the CUDA context, cuBLAS/cuDNN workspaces take outside PyTorch's allocator.
CUDA_CONTEXT_BYTES = 1 * GIB


@dataclass(frozen=True)
class ParameterCounts:
    """Parameter (and buffer) element counts of the sampler part's children."""

    dit: int
    vae: int
    conditioners: int

    @property
    def total(self) -> int:
        return self.dit + self.vae + self.conditioners


def count_parameters(config: AudioOmniConfig) -> ParameterCounts:
    """Count the sampler part's parameters and buffers for ``config`` on the meta device."""
    from model.parts import SamplerPart  # local: building the part pulls in diffusers

    with torch.device("meta"):
        part = SamplerPart(config)

    def numel(module: torch.nn.Module) -> int:
        return sum(t.numel() for t in (*module.parameters(), *module.buffers()))

    dit, vae = numel(part.dit), numel(part.vae)
    return ParameterCounts(dit=dit, vae=vae, conditioners=numel(part) - dit - vae)


def weight_bytes(counts: ParameterCounts, precision: str | Precision) -> int:
    """Bytes of resident weights: the DiT in its parameter dtype, everything else in float32.

    Under fp16 autocast the float32 weights are cast on every forward; with frozen weights those
    copies are transient per op, so no extra resident term is added.
    """
    pol = POLICIES[Precision.parse(precision)]
    dit_bytes = counts.dit * torch.empty((), dtype=pol.dit_param_dtype).element_size()
    return dit_bytes + 4 * (counts.vae + counts.conditioners)


def sequence_lengths(config: AudioOmniConfig) -> tuple[int, int, int]:
    """(latent T, prefix G, context S) token counts of one DiT forward for ``config``."""
    lengths = {
        "omni_prompt": config.mllm.pad_length,
        "speech_prompt": config.speech.proj_seq_len,
        "sync_feature": config.sync.seq_out,
        "audio_input_prompt": config.mel.seq_len,
    }
    context = sum(lengths[c] for c in config.high_level_cond_ids)
    prefix = sum(lengths[c] for c in config.low_level_cond_ids)
    return config.latent_length, prefix, context


def activation_bytes(config: AudioOmniConfig, batch: int, precision: str | Precision, *, guided: bool = True) -> int:
    """Upper estimate of the DiT's peak activation bytes for one sampling step of ``batch`` items.

    Rows are ``2 * batch`` when ``guided`` (conditional and unconditional in one forward). At the
    peak the block input ``h``, its residual copy and the projected context (S, E) are live, plus
    the largest transient of a block: the SwiGLU (norm output E, projection 2*4E, SiLU(gate) 4E,
    product 4E per token), the self-attention (qkv 3E, float32 rotary copies, scores if the
    kernel materialises them: N*N per head) or the cross-attention (k/v of S tokens 2E, q and
    output, N*S scores). The Euler state and velocity are float32 (B, C, T).
    """
    if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
        raise ValueError(f"batch must be an int >= 1, got {batch!r}")
    pol = POLICIES[Precision.parse(precision)]
    elem = torch.empty((), dtype=pol.compute_dtype).element_size()
    rows = 2 * batch if guided else batch
    d = config.dit
    e, heads = d.embed_dim, d.num_heads
    latent, prefix, context = sequence_lengths(config)
    n = latent + prefix
    hidden = FF_MULT * e
    resident = 2 * n * e + context * e  # h, its residual, the projected context
    feed_forward = n * (e + 2 * hidden + 2 * hidden)
    rotary = 4 * n * heads * 32 * 4 // elem  # float32 q/k rotation temporaries, in element units
    self_attn = n * (3 * e + 2 * e) + rotary + heads * n * n
    cross_attn = context * 2 * e + n * 2 * e + heads * n * context
    per_row = (resident + max(feed_forward, self_attn, cross_attn)) * elem
    # The guided inputs (x, context, prefix concatenated to 2B rows, float32) and their cast copies.
    raw_inputs = context * d.cond_token_dim + prefix * d.global_cond_dim + d.io_channels * latent
    per_row += raw_inputs * (4 + (elem if elem != 4 else 0))
    state = 4 * batch * d.io_channels * latent * 4  # x, v, noise, result in float32
    return rows * per_row + state


def replica_bytes(
    config: AudioOmniConfig,
    batch: int,
    precision: str | Precision,
    *,
    counts: ParameterCounts | None = None,
    headroom: float = DEFAULT_HEADROOM,
) -> int:
    """Bytes one sampler replica needs at ``batch``: (weights + activations) * headroom."""
    if headroom < 1.0:
        raise ValueError(f"headroom must be >= 1.0, got {headroom!r}")
    counts = counts or count_parameters(config)
    total = weight_bytes(counts, precision) + activation_bytes(config, batch, precision)
    return int(total * headroom)


@dataclass(frozen=True)
class ReplicaPlan:
    batch: int
    replicas: int
    bytes_per_replica: int


def plan_replicas(
    config: AudioOmniConfig,
    precision: str | Precision,
    gpu_bytes: int,
    *,
    max_batch: int = 16,
    counts: ParameterCounts | None = None,
    headroom: float = DEFAULT_HEADROOM,
) -> ReplicaPlan:
    """The largest batch (<= ``max_batch``) one replica can run in ``gpu_bytes``, and how many such
    replicas fit on the GPU. Batching comes first: it raises throughput, a second replica only
    overlaps host work. Raises ``ValueError`` when not even batch 1 fits.
    """
    if gpu_bytes <= CUDA_CONTEXT_BYTES:
        raise ValueError(f"gpu_bytes must exceed the {CUDA_CONTEXT_BYTES} B CUDA context, got {gpu_bytes}")
    counts = counts or count_parameters(config)
    usable = gpu_bytes - CUDA_CONTEXT_BYTES
    best = None
    for batch in range(1, max_batch + 1):
        need = replica_bytes(config, batch, precision, counts=counts, headroom=headroom)
        if need <= usable:
            best = (batch, need)
    if best is None:
        need = replica_bytes(config, 1, precision, counts=counts, headroom=headroom)
        raise ValueError(f"one replica needs {need} B at batch 1 but only {usable} B are usable")
    batch, need = best
    return ReplicaPlan(batch=batch, replicas=usable // need, bytes_per_replica=need)


class LiveTensorTracker(TorchDispatchMode):
    """Peak bytes of tensor storages created inside the mode (any device, CPU included).

    Every op output's storage is counted once while any tensor object on it is alive. Storages
    created before the mode (weights, inputs) are not counted, so ``peak_bytes`` is the peak of
    activations alone. Approximate where a kernel keeps a storage alive only from C++.
    """

    def __init__(self) -> None:
        super().__init__()
        self.live_bytes = 0
        self.peak_bytes = 0
        self._refs: dict[int, int] = {}
        self._sizes: dict[int, int] = {}
        self._known_before: set[int] = set()

    def _release(self, key: int) -> None:
        self._refs[key] -= 1
        if self._refs[key] == 0:
            del self._refs[key]
            self.live_bytes -= self._sizes.pop(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        inputs = [a for a in (*args, *(kwargs or {}).values()) if isinstance(a, torch.Tensor)]
        for tensor in inputs:
            key = tensor.untyped_storage().data_ptr()
            if key not in self._refs:
                self._known_before.add(key)  # an input from outside the mode: not an activation
        out = func(*args, **(kwargs or {}))
        outputs = out if isinstance(out, tuple | list) else (out,)
        for tensor in outputs:
            if not isinstance(tensor, torch.Tensor):
                continue
            storage = tensor.untyped_storage()
            key = storage.data_ptr()
            if key in self._known_before or key == 0:
                continue
            if key not in self._refs:
                self._refs[key] = 0
                self._sizes[key] = storage.nbytes()
                self.live_bytes += storage.nbytes()
                self.peak_bytes = max(self.peak_bytes, self.live_bytes)
            self._refs[key] += 1
            weakref.finalize(tensor, self._release, key)
        return out
