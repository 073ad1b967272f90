"""Fine-tuned LM checkpoints: which served model one replaces, or why it cannot replace any."""

from __future__ import annotations

import pickle
from collections.abc import Callable, Sequence
from pathlib import Path

import omegaconf
import torch

from musicgen.errors import WeightsError
from musicgen.models.checkpoints import read_lm_checkpoint
from musicgen.versions import GENERATING
from musicgen.weights.layout import T5_NAME

LM_KEYS = ("xp.cfg", "best_state")


def check_fine_tuned(
    path: Path, preloaded: Sequence[str], servable: Sequence[str], codec_of: Callable[[str], torch.nn.Module]
) -> str:
    """The served version the fine-tuned LM checkpoint at `path` replaces.

    Raises WeightsError unless it is an audiocraft LM export (`xp.cfg` + `best_state`; or the
    community fine-tuner's trained_model.tar, musicgen.models.checkpoints) of a
    MusicGen transformer LM whose conditioners are a served version's (chroma + T5 text, or T5
    text only) and whose channels are (mono, or stereo with interleaved codebooks), with the T5 we
    hold, over that version's codec (codebooks, codebook size, sample rate), and whose weights
    have the dimensions its config states. Of the versions that fit, the one its training record
    names as its base (our `python -m musicgen train` / `cog train` output) is replaced, else the
    first one setup() loads, else the first whose weights are present (`servable`);
    `codec_of(version)` is the mono EnCodec under that version's folder.
    """
    try:
        package = read_lm_checkpoint(path)  # an export, or the community fine-tuner's trained_model.tar
    except pickle.UnpicklingError as refused:
        raise WeightsError(str(refused)) from None
    except Exception as error:  # not a torch.save archive at all
        raise WeightsError(f"{path} is not a torch checkpoint ({type(error).__name__}: {error})") from None
    if not isinstance(package, dict) or any(key not in package for key in LM_KEYS):
        keys = sorted(map(str, package)) if isinstance(package, dict) else type(package).__name__
        raise WeightsError(
            f"{path} is not an audiocraft LM checkpoint: it needs the keys 'xp.cfg' and 'best_state', it has {keys}"
        )
    state = package["best_state"]
    if not isinstance(state, dict):
        raise WeightsError(f"{path}: its 'best_state' is a {type(state).__name__}, not a state dict")
    if "model" in state and isinstance(state["model"], dict):
        raise WeightsError(f"{path} is a training checkpoint; export it with audiocraft.utils.export.export_lm")
    try:
        cfg = omegaconf.OmegaConf.create(package["xp.cfg"])
        return _fine_tuned_version(cfg, state, preloaded, servable, codec_of)
    except (omegaconf.errors.OmegaConfBaseException, AttributeError, KeyError, TypeError) as error:
        raise WeightsError(f"{path}: its 'xp.cfg' is not a MusicGen LM config ({error})") from None
    except _Unfit as error:
        raise WeightsError(f"{path} cannot replace a served model: {error}") from None


class _Unfit(Exception):
    """Why a fine-tuned checkpoint does not fit, in words."""


def _fine_tuned_version(
    cfg: omegaconf.DictConfig,
    state: dict,
    preloaded: Sequence[str],
    servable: Sequence[str],
    codec_of: Callable[[str], torch.nn.Module],
) -> str:
    if cfg.get("lm_model") != "transformer_lm":
        raise _Unfit(f"lm_model is {cfg.get('lm_model')!r}; only MusicGen's 'transformer_lm' is served")
    kinds = {str(name): str(cond.model) for name, cond in (cfg.get("conditioners") or {}).items() if name != "args"}
    if kinds == {"self_wav": "chroma_stem", "description": "t5"}:
        melody = True
    elif kinds == {"description": "t5"}:
        melody = False
    else:
        raise _Unfit(
            f"its conditioners are {kinds}; the melody models have {{'self_wav': 'chroma_stem', 'description': 't5'}}, "
            f"the text-only ones {{'description': 't5'}}"
        )
    t5 = cfg.conditioners.description.t5
    if t5.name != T5_NAME:
        raise _Unfit(f"its text encoder is {t5.name!r}; the weights root holds {T5_NAME!r}")
    if t5.get("finetune", False):
        raise _Unfit("its T5 was fine-tuned with it (finetune: true); only LMs over the shared, frozen T5 are served")
    stereo = bool(cfg.get("interleave_stereo_codebooks", {}).get("use", False))
    fitting = [name for name, version in GENERATING.items() if (version.melody, version.stereo) == (melody, stereo)]
    kind = f"a {'stereo' if stereo else 'mono'} {'melody' if melody else 'text-only'} model"
    # our training records its base (musicgen.train.export): a fine-tune of small serves as small
    base = omegaconf.OmegaConf.select(cfg, "fine_tune.base.model_version", default=None)
    recorded = [base] if base in fitting and (base in preloaded or base in servable) else []
    chosen = recorded or [name for name in fitting if name in preloaded] or [n for n in fitting if n in servable]
    if not chosen:
        raise _Unfit(f"it is {kind}, which only {', '.join(fitting)} serve; none of them has its weights in place")
    version = chosen[0]
    codec = codec_of(version)
    lm = cfg.transformer_lm
    codebooks = codec.num_codebooks * (2 if stereo else 1)  # stereo: left and right interleaved
    expected = {
        "transformer_lm.n_q (codebooks)": (lm.n_q, codebooks),
        "transformer_lm.card (codebook size)": (lm.card, codec.cardinality),
        "sample_rate": (cfg.sample_rate, codec.sample_rate),
        "channels": (cfg.channels, 2 if stereo else codec.channels),
    }
    if cfg.get("compression_model_n_q") is not None:
        expected["compression_model_n_q"] = (cfg.compression_model_n_q, codec.num_codebooks)
    for what, (value, served) in expected.items():
        if value != served:
            raise _Unfit(f"{what} is {value}; {version} over its EnCodec has {served}")
    shapes = {"emb.0.weight": (lm.card + 1, lm.dim), "linears.0.weight": (lm.card, lm.dim)}
    shapes |= {f"linears.{q}.weight": (lm.card, lm.dim) for q in range(lm.n_q)}
    for key, shape in shapes.items():
        tensor = state.get(key)
        if tensor is None or tuple(tensor.shape) != shape:
            found = "missing" if tensor is None else tuple(tensor.shape)
            raise _Unfit(f"its weight {key} is {found}, its config (dim {lm.dim}, card {lm.card}) says {shape}")
    layers = {key.split(".")[2] for key in state if key.startswith("transformer.layers.")}
    if len(layers) != lm.num_layers:
        raise _Unfit(f"it has {len(layers)} transformer layers, its config says {lm.num_layers}")
    return version
