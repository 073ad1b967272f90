"""The training loop, as audiocraft's MusicGen solver runs a step, without its dora/flashy machinery.

Each step: a batch of segments (shuffled by the seed, padded with the LM's special token), their
conditions through the LM's own conditioners (classifier-free-guidance dropout at `cfg_p`, the
checkpoint's attribute dropout; a melody LM's chroma comes from the segment itself, computed once:
_ChromaCache), `LMModel.compute_predictions`, cross-entropy over the valid positions averaged over
the codebooks, AdamW (audiocraft's MusicGen settings) at a learning rate that rises linearly over
`warmup_steps` and then decays to 0 on a cosine, gradients clipped to norm 1, autocast on CUDA.
Only the LM's parameters train: T5 and HT-Demucs are not among them. With lora_rank > 0 only the
low-rank adapters train (musicgen.lora.training), the LM frozen. Activation checkpointing is on
when the memory plan (musicgen.train.memory) needs it.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from audiocraft.modules.conditioners import ConditioningAttributes, WavCondition

from musicgen.errors import TrainingError
from musicgen.lora.training import LowRankUpdate, attach
from musicgen.train.memory import MemoryPlan
from musicgen.train.model import TrainingModel
from musicgen.train.options import TrainRequest
from musicgen.train.segments import Segment

log = logging.getLogger(__name__)

BETAS = (0.9, 0.95)  # audiocraft's MusicGen solver (config/solver/musicgen/default.yaml)
WEIGHT_DECAY = 0.1
EPS = 1e-8
MAX_GRAD_NORM = 1.0
LOG_EVERY = 10  # steps between two progress lines (and the last step)


@dataclass
class TrainLog:
    """What a training did: the loss of every step and each epoch's mean."""

    losses: list[float] = field(default_factory=list)
    epoch_losses: list[float] = field(default_factory=list)
    step_seconds: list[float] = field(default_factory=list)  # wall time of each optimizer step
    seconds: float = 0.0
    checkpointing: bool = False  # activation checkpointing was on (the memory plan needed it)
    adapters: dict[tuple[int, str], LowRankUpdate] = field(default_factory=dict)  # LoRA's, by (layer, target)


def train_lm(
    model: TrainingModel, segments: list[Segment], request: TrainRequest, seed: int, plan: MemoryPlan
) -> TrainLog:
    """Fine-tune `model.lm` in place on `segments` (with lora_rank > 0: adapters put on it, the LM
    frozen); the random state is `seed`'s."""
    lm, device, record = model.lm, model.device, TrainLog()
    steps_per_epoch = math.ceil(len(segments) / request.batch_size)
    total = steps_per_epoch * request.epochs
    lm.cfg_dropout.p = request.cfg_p
    lm.cfg_dropout.rng.manual_seed(seed)
    lm.att_dropout.rng.manual_seed(seed + 1)
    order = torch.Generator().manual_seed(seed + 2)
    if model.chroma_conditioner is not None:
        model.chroma_conditioner.cache = _ChromaCache([segment.chroma for segment in segments])
    record.checkpointing = plan.checkpointing
    if plan.checkpointing:
        lm.transformer.checkpointing = "torch"
    if request.lora:
        record.adapters = attach(lm, request.lora_rank)
        trained = [parameter for update in record.adapters.values() for parameter in update.parameters()]
    else:
        trained = list(lm.parameters())
    optimizer = torch.optim.AdamW(
        trained, lr=request.lr, betas=BETAS, eps=EPS, weight_decay=WEIGHT_DECAY, fused=device.startswith("cuda")
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, request.warmup_steps, total))
    autocast, scaler = _mixed_precision(device)
    trained_what = f"rank-{request.lora_rank} adapters" if request.lora else "every LM weight"
    log.info(
        "training %s on %s: %d segments, %d epochs of %d steps (batch %d), lr %g, warm-up %d, cfg_p %g, seed %d; %s",
        model.version, device, len(segments), request.epochs, steps_per_epoch, request.batch_size, request.lr,
        request.warmup_steps, request.cfg_p, seed,
        f"{trained_what} ({sum(p.numel() for p in trained) / 1e6:.1f} M parameters)",
    )  # fmt: skip
    lm.train()
    start = time.perf_counter()
    try:
        for epoch in range(request.epochs):
            permutation = torch.randperm(len(segments), generator=order).tolist()
            epoch_losses = []
            for first in range(0, len(segments), request.batch_size):
                step_start = time.perf_counter()
                batch = [(index, segments[index]) for index in permutation[first : first + request.batch_size]]
                with autocast:
                    loss = _loss(model, batch)
                if not torch.isfinite(loss):
                    raise TrainingError(
                        f"training diverged at step {len(record.losses) + 1}: the loss is {loss.item()}; "
                        f"lower lr (it was {request.lr:g}) or raise warmup_steps."
                    )
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(trained, MAX_GRAD_NORM)
                scaler.step(optimizer)
                scaler.update()
                schedule.step()
                optimizer.zero_grad(set_to_none=True)
                record.step_seconds.append(time.perf_counter() - step_start)
                record.losses.append(loss.item())
                epoch_losses.append(loss.item())
                _progress(record.losses, epoch, request.epochs, total, optimizer, start)
            record.epoch_losses.append(sum(epoch_losses) / len(epoch_losses))
    finally:
        lm.eval()
        if model.chroma_conditioner is not None:
            model.chroma_conditioner.cache = None
    record.seconds = time.perf_counter() - start
    return record


def lr_factor(step: int, warmup: int, total: int) -> float:
    """The learning rate of update `step` (0-based) as a fraction of the peak: linear warm-up over
    `warmup` steps, then a cosine from 1 down to 0 at `total`."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def masked_cross_entropy(logits: torch.Tensor, codes: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """audiocraft's loss: for each codebook the mean cross-entropy over its valid positions, then the
    mean over codebooks. logits [B, K, T, card] (NaN where invalid), codes [B, K, T], mask [B, K, T]."""
    per_codebook = [
        F.cross_entropy(logits[:, k][mask[:, k]].float(), codes[:, k][mask[:, k]]) for k in range(codes.shape[1])
    ]
    return torch.stack(per_codebook).mean()


def _loss(model: TrainingModel, batch: list[tuple[int, Segment]]) -> torch.Tensor:
    lm = model.lm
    frames = max(segment.codes.shape[-1] for _, segment in batch)
    codes = torch.full((len(batch), lm.num_codebooks, frames), lm.special_token_id, dtype=torch.long)
    valid = torch.zeros(codes.shape, dtype=torch.bool)
    for row, (_, segment) in enumerate(batch):
        codes[row, :, : segment.codes.shape[-1]] = segment.codes
        valid[row, :, : segment.codes.shape[-1]] = True
    attributes = lm.att_dropout(lm.cfg_dropout(_attributes(model, batch)))
    conditions = lm.condition_provider(lm.condition_provider.tokenize(attributes))
    codes, valid = codes.to(model.device), valid.to(model.device)
    output = lm.compute_predictions(codes, [], conditions)
    return masked_cross_entropy(output.logits, codes, output.mask & valid)


def _attributes(model: TrainingModel, batch: list[tuple[int, Segment]]) -> list[ConditioningAttributes]:
    """Each segment's conditions: its caption; for a melody LM its audio condition, whose chroma the
    cache supplies (the waveform is a zero placeholder of the segment's length, never read)."""
    attributes = []
    for index, segment in batch:
        item = ConditioningAttributes(text={"description": segment.caption})
        if model.chroma_conditioner is not None:
            placeholder = torch.zeros(1, 1, 1).expand(1, 1, segment.samples)
            length = torch.tensor([segment.samples])
            item.wav["self_wav"] = WavCondition(placeholder, length, [model.sample_rate], [str(index)], [0.0])
        attributes.append(item)
    return attributes


class _ChromaCache:
    """The chroma conditioner's embedding-cache hook (audiocraft calls it for batches whose audio
    condition was not dropped), serving each segment's chroma by its number: computed once instead
    of running HT-Demucs on every step."""

    def __init__(self, chromas: list[torch.Tensor]):
        self.chromas = chromas

    def populate_embed_cache(self, paths, x) -> None:
        pass  # filled beforehand

    def get_embed_from_cache(self, paths, x) -> torch.Tensor:
        items = [self.chromas[int(path.name)] for path in paths]
        frames = max(item.shape[0] for item in items)
        padded = [F.pad(item, (0, 0, 0, frames - item.shape[0])) for item in items]  # masked by the lengths
        return torch.stack(padded).to(x.wav.device)


def _mixed_precision(device: str) -> tuple[contextlib.AbstractContextManager, torch.amp.GradScaler]:
    """Autocast and its gradient scaler: bfloat16 on GPUs that have it (no scaling needed), else
    float16 with dynamic loss scaling; float32 (nothing) on a CPU."""
    if not device.startswith("cuda"):
        return contextlib.nullcontext(), torch.amp.GradScaler("cpu", enabled=False)
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    autocast = torch.autocast(device_type="cuda", dtype=dtype)
    return autocast, torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)


def _progress(losses: list[float], epoch: int, epochs: int, total: int, optimizer, start: float) -> None:
    step = len(losses)
    if step % LOG_EVERY and step != total:
        return
    elapsed = time.perf_counter() - start
    rate = step / elapsed if elapsed > 0 else float("inf")
    recent = losses[-LOG_EVERY:]
    log.info(
        "step %d/%d (epoch %d/%d): loss %.4f, lr %.2e, %.2f steps/s, about %.0f s left",
        step, total, epoch + 1, epochs, sum(recent) / len(recent), optimizer.param_groups[0]["lr"], rate,
        (total - step) / rate if rate > 0 else 0.0,
    )  # fmt: skip
