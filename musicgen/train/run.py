"""One fine-tune end to end: validate, plan its memory, seed, load the base model, read the dataset
into segments, train, export (the whole LM, or with lora_rank > 0 the adapters alone)."""

from __future__ import annotations

import hashlib
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import audiocraft

from musicgen.audio.fetch import FetchLimits
from musicgen.errors import InputError
from musicgen.generate import draw_seed, seed_everything
from musicgen.lora.adapter import Geometry, write_adapter
from musicgen.lora.training import ALPHA_PER_RANK, trained_pairs
from musicgen.settings import Settings, best_device
from musicgen.train.dataset import Dataset, Skipped
from musicgen.train.export import write_fine_tuned
from musicgen.train.loop import train_lm
from musicgen.train.memory import plan_memory
from musicgen.train.model import base_checkpoint, load_for_training
from musicgen.train.options import TrainRequest, validate
from musicgen.train.segments import MIN_SEGMENT_SECONDS, make_segments
from musicgen.train.source import local_dataset, recorded_name
from musicgen.weights.layout import ADAPTER_FILE, LM_FILE

log = logging.getLogger(__name__)

MAX_RECORDED_SKIPS = 100  # file names of skipped files kept in the checkpoint's record
# Checkpoints handed to Cog (no output_dir): it reads the file after train() returns, so each
# folder stays until the next fine-tune in this process starts.
_handed_over: list[Path] = []


@dataclass(frozen=True)
class TrainResult:
    """A finished fine-tune: the checkpoint and how training went."""

    checkpoint: Path  # audiocraft's LM export format, or a LoRA adapter file: setup(weights=...) serves it
    seed: int
    losses: tuple[float, ...]  # every step's
    epoch_losses: tuple[float, ...]  # each epoch's mean
    step_seconds: tuple[float, ...]  # each optimizer step's wall time
    seconds: float  # loading, data preparation and training
    record: dict  # what the checkpoint's config records under `fine_tune`


def fine_tune(request: TrainRequest, settings: Settings, output_dir: Path | None = None) -> TrainResult:
    """Fine-tune `request.model_version`'s LM (under the settings' weights root, on their device)
    on the dataset and write `<output_dir>/state_dict.bin`, or with lora_rank > 0
    `<output_dir>/adapter.safetensors` (a fresh temporary folder when None). Caller mistakes, a
    dataset with no usable audio included, and a training that cannot fit the device's memory are
    InputErrors raised before any training (and, but for the dataset's, before the model loads)."""
    start = time.perf_counter()
    validate(request)
    device = best_device(settings.device)
    base = base_checkpoint(request.model_version, settings.weights_root)
    plan = plan_memory(base, request, device, settings.train_memory_gb)  # refused here, before anything loads
    while _handed_over:
        shutil.rmtree(_handed_over.pop(), ignore_errors=True)
    skipped = Skipped()
    scratch = Path(tempfile.mkdtemp(prefix="musicgen-dataset-"))
    try:
        # a URL first (before the model loads: a failed download costs no loading)
        (scratch / "download").mkdir()
        dataset = local_dataset(request.dataset_path, scratch / "download", FetchLimits.for_datasets(settings))
        with open(dataset, "rb") as whole:
            dataset_sha256 = hashlib.file_digest(whole, "sha256").hexdigest()
        # listed once, its bounds checked: an archive bomb is refused before anything is extracted
        # and before the model loads; a single file is named as the record names it
        with Dataset(dataset, recorded_name(request.dataset_path)) as source:
            seed = draw_seed() if request.wants_random_seed else request.seed
            log.info("fine-tuning %s with seed %d", request.model_version, seed)
            seed_everything(seed)  # HT-Demucs' random shifts and T5's word dropout draw from these too
            model = load_for_training(request.model_version, device, settings.weights_root, base, frozen=request.lora)
            files = source.files(scratch, request.one_same_description, skipped)
            segments, stats = make_segments(files, model, request.drop_vocals, skipped)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if not segments:
        found = "; ".join(f"{name}: {reason}" for name, reason in skipped[:5]) or "it holds no files"
        raise InputError(
            f"dataset_path holds no usable audio (an audio file of at least {MIN_SEGMENT_SECONDS} s in a format "
            f"predict accepts): {found}{' ...' if len(skipped) > 5 else ''}."
        )
    log.info(
        "dataset: %d file(s), %d segment(s), %.1f s; %d skipped",
        stats.files,
        stats.segments,
        stats.seconds,
        len(skipped),
    )
    trained = train_lm(model, segments, request, seed, plan)
    record = {
        "base": {"model_version": request.model_version, "checkpoint": model.base.name},
        "dataset": {
            "file": recorded_name(request.dataset_path),
            "sha256": dataset_sha256,
            "files": stats.files,
            "segments": stats.segments,
            "seconds": round(stats.seconds, 3),
            "skipped": [name for name, _ in skipped[:MAX_RECORDED_SKIPS]],
        },
        "inputs": {
            "one_same_description": request.one_same_description,
            "epochs": request.epochs,
            "batch_size": request.batch_size,
            "lr": request.lr,
            "warmup_steps": request.warmup_steps,
            "cfg_p": request.cfg_p,
            "drop_vocals": request.drop_vocals,
            "seed": seed,
            "lora_rank": request.lora_rank,
        },
        "steps": len(trained.losses),
        "loss_first_epoch": trained.epoch_losses[0],
        "loss_last_epoch": trained.epoch_losses[-1],
        "activation_checkpointing": trained.checkpointing,
        "audiocraft": audiocraft.__version__,
    }
    if output_dir is None:
        output_dir = Path(tempfile.mkdtemp(prefix="musicgen-trained-"))
        _handed_over.append(output_dir)
    if request.lora:
        geometry = Geometry.of_config(model.config)
        pairs, alpha = trained_pairs(trained.adapters), ALPHA_PER_RANK * request.lora_rank
        version, rank = request.model_version, request.lora_rank
        checkpoint = write_adapter(pairs, version, rank, alpha, geometry, record, Path(output_dir) / ADAPTER_FILE)
    else:
        checkpoint = write_fine_tuned(model.lm, model.config, request.cfg_p, record, Path(output_dir) / LM_FILE)
    seconds = time.perf_counter() - start
    log.info(
        "fine-tuned %s in %.1f s (training %.1f s): %d steps, loss %.4f -> %.4f (first -> last epoch mean)",
        request.model_version, seconds, trained.seconds, len(trained.losses), trained.epoch_losses[0],
        trained.epoch_losses[-1],
    )  # fmt: skip
    losses, epochs, steps = tuple(trained.losses), tuple(trained.epoch_losses), tuple(trained.step_seconds)
    return TrainResult(checkpoint, seed, losses, epochs, steps, seconds, record)
