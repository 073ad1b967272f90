"""Cog training entry (`cog train`, POST /trainings): fine-tune a served MusicGen LM on your own audio.

Cog builds the training schema by statically parsing this file, so every Input(...) stays literal.
The result is a checkpoint in audiocraft's LM export format (lora_rank 0), or a LoRA adapter file
(lora_rank > 0, musicgen.lora), that predict.py serves as its `weights` (COG_WEIGHTS,
`python -m musicgen predict --weights`); an adapter also serves per request (lora_weights). The
pipeline is musicgen/train/.
"""

import time
from typing import Optional

from cog import BaseModel, Input, Path

from musicgen.serving import runtime_patches

# Cog's training server resolves file inputs before train() runs, and a training has no setup():
# here, when its worker imports this file, dataset_path is made to arrive as the caller's text.
runtime_patches.for_trainings()


class TrainingOutput(BaseModel):
    weights: Path


def train(
    dataset_path: Path = Input(
        description="A zip, tar or tar.gz archive of audio files (any format predict accepts), each with an optional caption in a .txt file of the same name beside it (song.mp3 and song.txt), or one audio file. Files are cut into 30 s segments; a shorter end of at least 1 s is kept.",
    ),
    one_same_description: Optional[str] = Input(
        description="The caption of every audio file that has no .txt of its own (and of a single audio file). Left out: those files are trained without a caption.",
        default=None,
    ),
    model_version: str = Input(
        description="The served model to fine-tune: its LM is trained, its EnCodec, T5 and (melody models) chroma conditioner stay. 'encode-decode' is not a model and cannot be fine-tuned.",
        default="melody",
        choices=[
            "melody",
            "large",
            "encode-decode",
            "melody-large",
            "stereo-large",
            "stereo-melody-large",
            "small",
            "medium",
            "stereo-small",
            "stereo-medium",
            "stereo-melody",
        ],
    ),
    epochs: int = Input(
        description="Passes over the dataset.",
        default=3,
        ge=1,
        le=100,
    ),
    batch_size: int = Input(
        description="Segments per optimizer step.",
        default=4,
        ge=1,
        le=64,
    ),
    lr: float = Input(
        description="Peak learning rate of AdamW, reached after the warm-up and then decayed to 0 on a cosine.",
        default=0.00001,
        ge=0.0000001,
        le=0.01,
    ),
    warmup_steps: int = Input(
        description="Optimizer steps over which the learning rate rises linearly from 0 to `lr`.",
        default=10,
        ge=0,
        le=10000,
    ),
    cfg_p: float = Input(
        description="Probability of dropping the conditions (caption and melody) of a batch, so the model keeps working with classifier-free guidance.",
        default=0.3,
        ge=0.0,
        le=1.0,
    ),
    drop_vocals: bool = Input(
        description="Remove the vocals of every file with HT-Demucs before training (MusicGen was trained on music without vocals).",
        default=True,
    ),
    seed: Optional[int] = Input(
        description="Seed of the shuffling and the dropouts: the same dataset, inputs and seed give the same checkpoint on the same CPU machine (a GPU's kernels may round differently). If None or -1, a random seed is used (and recorded in the checkpoint).",
        default=None,
    ),
    lora_rank: int = Input(
        description="0: fine-tune every weight of the LM (the output is a whole LM checkpoint). 1 to 128: train low-rank adapters (LoRA) of that rank on the transformer's attention and feed-forward projections, the LM frozen: far less memory, and the output is a small adapter file that predict serves as its weights or per request (lora_weights). 8 to 32 suit most styles.",
        default=0,
        ge=0,
        le=128,
    ),
) -> TrainingOutput:
    from musicgen.boot import boot

    settings = boot()  # first: a bad setting stops here, naming it; then musicgen.train imports audiocraft

    from musicgen.train.options import TrainRequest
    from musicgen.train.run import fine_tune

    request = TrainRequest(
        dataset_path=dataset_path,
        one_same_description=one_same_description,
        model_version=model_version,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        warmup_steps=warmup_steps,
        cfg_p=cfg_p,
        drop_vocals=drop_vocals,
        seed=seed,
        lora_rank=lora_rank,
    )
    started = time.time()
    try:
        return TrainingOutput(weights=Path(fine_tune(request, settings).checkpoint))
    finally:
        runtime_patches.after_training(started)  # the runtime's folders of trainings now over
