"""Tiny, randomly initialised, deterministic checkpoints in the released formats, for tests and demos.

`write_demo_weights(root)` fills a weights root with every file `musicgen.weights` lists, each in the
format of the file it stands in for, so the real loading code runs unchanged on a CPU in seconds:

    musicgen-{melody,large}/state_dict.bin      audiocraft export of the LM: {'best_state': fp16
                                                state dict, 'xp.cfg': YAML string, 'version',
                                                'exported': True}; dim 64, 2 layers, delay pattern
    musicgen-{melody,large}/compression_state_dict.bin
                                                same export format, EnCodec 32 kHz mono, hop 640
                                                (50 Hz), 4 codebooks of 2048, 2 filters
    multiband-diffusion/mbd_musicgen_32khz.th   {'sample_rate', 'n_bands': 4, 0..3: {'model_state',
                                                'processor_state', 'cfg': pickled DictConfig}}
    huggingface/hub/models--t5-base/...         T5 encoder (d_model 768, 1 layer) + tokenizer,
                                                Hugging Face cache layout
    torch/hub/checkpoints/955717e8-8726e21a.th  demucs package {'klass': HTDemucs, 'args', 'kwargs',
                                                'state': fp16, 'training_args'}

Every file is byte-identical from run to run: each model is built under its own fixed seed and no
file carries a timestamp or a random name. The audio the models make is noise.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import typing as tp
from fractions import Fraction
from pathlib import Path

import omegaconf
import torch

# isort: off
from musicgen import offline  # noqa: F401  (configures the caches before the libraries below load)
import audiocraft
import torchaudio
from audiocraft.models import builders
from audiocraft.models.lm import LMModel
from audiocraft.modules.conditioners import BaseConditioner, ConditioningProvider
from audiocraft.utils.utils import dict_from_config
from demucs.htdemucs import HTDemucs
from transformers import T5Config, T5EncoderModel, T5Tokenizer

# isort: on
from musicgen.weights import (
    CODEC_FILE,
    HTDEMUCS_FILE,
    LM_FILE,
    T5_NAME,
    hf_home,
    htdemucs_path,
    mbd_path,
    model_dir,
)

SEED = 20231120
# Commit id the stand-in T5 snapshot is filed under (any fixed 40-hex string; this one is made up).
T5_SNAPSHOT = "6d0c8f1e2b3a4c5d6e7f8091a2b3c4d5e6f70819"

SAMPLE_RATE = 32000  # Hz, EnCodec and LM
CODEC_DIMENSION = 8  # EnCodec latent channels (128 in the released model)
N_Q = 4  # codebooks
CARD = 2048  # codebook size; must stay >= top_k (250), torch.topk needs that many logits
SEGMENT_DURATION = 30  # seconds: the LMs' training segment, hence the default maximum duration
T5_DIM = 768  # audiocraft asserts this width for "t5-base"
N_CHROMA = 12

# ---------------------------------------------------------------------------------------------
# Configurations, written out as the released checkpoints carry them (see audiocraft's config/
# tree: model/encodec/encodec_large_nq4_s640.yaml, model/lm/musicgen_lm.yaml,
# conditioner/{text2music,chroma2music}.yaml), with only the sizes shrunk.

CODEC_CONFIG: dict[str, tp.Any] = {
    "device": "cuda",
    "dtype": "float32",
    "sample_rate": SAMPLE_RATE,
    "channels": 1,
    "compression_model": "encodec",
    "encodec": {
        "autoencoder": "seanet",
        "quantizer": "rvq",
        "sample_rate": SAMPLE_RATE,
        "channels": 1,
        "causal": False,
        "renormalize": False,
    },
    "seanet": {
        "dimension": CODEC_DIMENSION,
        "channels": 1,
        "causal": False,
        "n_filters": 2,
        "n_residual_layers": 1,
        "ratios": [8, 5, 4, 4],  # hop 640 samples: 50 frames per second, as released
        "activation": "ELU",
        "activation_params": {"alpha": 1.0},
        "norm": "weight_norm",
        "norm_params": {},
        "kernel_size": 7,
        "residual_kernel_size": 3,
        "last_kernel_size": 7,
        "dilation_base": 2,
        "pad_mode": "constant",
        "true_skip": True,
        "compress": 2,
        "lstm": 2,
        "disable_norm_outer_blocks": 0,
        "decoder": {"trim_right_ratio": 1.0, "final_activation": None, "final_activation_params": None},
        "encoder": {},
    },
    "rvq": {
        "n_q": N_Q,
        "q_dropout": False,
        "bins": CARD,
        "decay": 0.99,
        "kmeans_init": True,  # as released; the codebooks are filled (and marked inited) below
        "kmeans_iters": 50,
        "threshold_ema_dead_code": 2,
        "orthogonal_reg_weight": 0.0,
        "orthogonal_reg_active_codes_only": False,
    },
    "no_quant": {},
}

TRANSFORMER_LM: dict[str, tp.Any] = {
    "dim": 64,
    "num_heads": 4,
    "num_layers": 2,
    "hidden_scale": 4,
    "n_q": N_Q,
    "card": CARD,
    "dropout": 0.0,
    "emb_lr": None,
    "activation": "gelu",
    "norm_first": True,
    "bias_ff": False,
    "bias_attn": False,
    "bias_proj": False,
    "past_context": None,
    "causal": True,
    "custom": False,
    "memory_efficient": True,
    "attention_as_float32": False,
    "layer_scale": None,
    "positional_embedding": "sin",
    "xpos": False,
    "checkpointing": "none",
    "weight_init": "gaussian",
    "depthwise_init": "current",
    "zero_bias_init": True,
    "norm": "layer_norm",
    "cross_attention": False,
    "qk_layer_norm": False,
    "qk_layer_norm_cross": False,
    "attention_dropout": None,
    "kv_repeat": 1,
    "two_step_cfg": False,
}

T5_CONDITIONER = {
    "model": "t5",
    "t5": {"name": T5_NAME, "finetune": False, "word_dropout": 0.3, "normalize_text": False},
}


def lm_config(version: str) -> dict[str, tp.Any]:
    """The `xp.cfg` of the demo LM for `version` ("melody": text + chroma prefix, "large": text via
    cross attention), as a plain dict."""
    config: dict[str, tp.Any] = {
        "device": "cuda",
        "dtype": "float32",
        "autocast": True,
        "autocast_dtype": "float16",
        "seed": 2036,
        "solver": "musicgen",
        "sample_rate": SAMPLE_RATE,
        "channels": 1,
        "compression_model_checkpoint": "//pretrained/facebook/encodec_32khz",
        "compression_model_n_q": None,
        "tokens": {"padding_with_special_token": False},
        "interleave_stereo_codebooks": {"use": False, "per_timestep": False},
        "dataset": {
            "batch_size": 192,
            "num_workers": 10,
            "segment_duration": SEGMENT_DURATION,
            "min_segment_ratio": 0.8,
            "return_info": True,
            "sample_on_weight": False,
            "sample_on_duration": False,
            "train": {"num_samples": 1000000, "merge_text_p": 0.25, "drop_desc_p": 0.5, "drop_other_p": 0.5},
            "valid": {"num_samples": 10000},
            "generate": {"num_samples": 50},
        },
        "generate": {"lm": {"use_sampling": True, "top_k": 250, "top_p": 0.0}},
        "lm_model": "transformer_lm",
        "codebooks_pattern": {
            "modeling": "delay",
            "delay": {"delays": list(range(N_Q)), "flatten_first": 0, "empty_initial": 0},
            "unroll": {"flattening": list(range(N_Q)), "delays": [0] * N_Q},
            "music_lm": {"group_by": 2},
            "coarse_first": {"delays": [0, 0, 0]},
        },
        "transformer_lm": dict(TRANSFORMER_LM),
    }
    if version == "melody":  # conditioner/chroma2music.yaml
        config["classifier_free_guidance"] = {"training_dropout": 0.2, "inference_coef": 3.0}
        config["attribute_dropout"] = {"args": {"active_on_eval": False}, "text": {}, "wav": {"self_wav": 0.5}}
        config["fuser"] = {
            "cross_attention_pos_emb": False,
            "cross_attention_pos_emb_scale": 1,
            "sum": [],
            "prepend": ["self_wav", "description"],
            "cross": [],
            "input_interpolate": [],
        }
        config["conditioners"] = {
            "self_wav": {
                "model": "chroma_stem",
                "chroma_stem": {
                    "sample_rate": SAMPLE_RATE,
                    "n_chroma": N_CHROMA,
                    "radix2_exp": 14,
                    "argmax": True,
                    "match_len_on_eval": False,
                    "eval_wavs": None,
                    "n_eval_wavs": 100,
                    "cache_path": None,
                },
            },
            "description": {**T5_CONDITIONER, "t5": {**T5_CONDITIONER["t5"], "word_dropout": 0.2}},
        }
    elif version == "large":  # conditioner/text2music.yaml
        config["classifier_free_guidance"] = {"training_dropout": 0.3, "inference_coef": 3.0}
        config["attribute_dropout"] = {}
        config["fuser"] = {
            "cross_attention_pos_emb": False,
            "cross_attention_pos_emb_scale": 1,
            "sum": [],
            "prepend": [],
            "cross": ["description"],
            "input_interpolate": [],
        }
        config["conditioners"] = {"description": T5_CONDITIONER}
    else:
        raise KeyError(f"unknown model version {version!r}")
    return config


# Sizes of the stand-in companions.
T5_VOCAB_SIZE = 64  # embedding rows; the tokenizer uses the first 50
T5_WORDS = ["calm", "piano", "music", "guitar", "drums", "rock", "jazz", "happy", "sad", "beat"]
HTDEMUCS_SOURCES = ["drums", "bass", "other", "vocals"]
HTDEMUCS_KWARGS: dict[str, tp.Any] = {
    "sources": HTDEMUCS_SOURCES,
    "audio_channels": 2,
    "samplerate": 44100,
    "segment": Fraction(39, 5),  # seconds, a Fraction as in the released package
    "channels": 4,
    "depth": 4,
    "dconv_comp": 4,
    "t_layers": 1,
    "t_heads": 1,
    "t_hidden_scale": 1.0,
}
MBD_BANDS = 4  # diffusion models, one per frequency band, as released


def mbd_config(band: int) -> dict[str, tp.Any]:
    """The config of the diffusion model for frequency band `band` (solver/diffusion/default.yaml
    with model/score/basic.yaml, tiny UNet conditioned on the EnCodec latent)."""
    return {
        "device": "cuda",
        "dtype": "float32",
        "seed": 2036,
        "solver": "diffusion",
        "sample_rate": SAMPLE_RATE,
        "channels": 1,
        "compression_model_checkpoint": "//pretrained/facebook/encodec_32khz",
        "n_q": N_Q,
        "dataset": {
            "batch_size": 128,
            "num_workers": 10,
            "segment_duration": 1,
            "generate": {
                "batch_size": 32,
                "num_samples": 50,
                "segment_duration": 10,
                "audio": {"sample_rate": "${sample_rate}"},
            },
        },
        "loss": {"kind": "mse", "norm_power": 0.0},
        "optim": {
            "epochs": 20000,
            "updates_per_epoch": 2000,
            "lr": 2e-4,
            "optimizer": "adam",
            "adam": {"betas": [0.9, 0.999], "weight_decay": 0.0},
            "ema": {"use": True, "updates": 1, "device": "${device}", "decay": 0.99},
        },
        "processor": {
            "name": "multi_band_processor",
            "use": True,
            "n_bands": 8,
            "num_samples": 10000,
            "power_std": 1.0,
        },
        "resampling": {"use": False, "target_sr": 16000},
        "filter": {"use": True, "n_bands": MBD_BANDS, "idx_band": band, "cutoffs": None},
        "schedule": {
            "repartition": "power",
            "variable_step_batch": True,
            "beta_t0": 1.0e-5,
            "beta_t1": 2.9e-2,
            "beta_exp": 7.5,
            "num_steps": 1000,
            "variance": "beta",
            "clip": 5.0,
            "rescale": 1.0,
            "n_bands": None,
            "noise_scale": 1.0,
        },
        "diffusion_unet": {
            "hidden": 4,
            # stride**depth = 512 samples per bottleneck step (62.5 Hz): DiffusionUnet asserts at
            # least half the 50 Hz EnCodec frame rate there.
            "depth": 3,
            "res_blocks": 1,
            "norm_groups": 4,
            "kernel": 8,
            "stride": 8,
            "growth": 2,
            "max_channels": 10000,
            "dropout": 0.0,
            "emb_all_layers": True,
            # Without a bottleneck module the UNet drops the EnCodec condition. audiocraft's
            # transformer there has a hard-coded 6 layers of 2048-wide feed-forward (~0.8 M
            # parameters per band); the BiLSTM has a few thousand.
            "bilstm": True,
            "codec_dim": CODEC_DIMENSION,
            "transformer": False,
            "cross_attention": False,
        },
    }


# ---------------------------------------------------------------------------------------------


def write_demo_weights(root: Path) -> None:
    """Write every demo checkpoint under the weights root `root` (existing files are replaced).

    Leaves the caller's random state untouched. Takes a few seconds on a CPU; about 8.5 MB in all.
    """
    root = Path(root)
    with torch.random.fork_rng(devices=[]):
        _write_t5(root)
        _write_htdemucs(htdemucs_path(root))
        codec = _export_package(_build_codec(), CODEC_CONFIG, half=False)
        for version in ("melody", "large"):
            _save(codec, model_dir(version, root) / CODEC_FILE)
            config = lm_config(version)
            _save(_export_package(_build_lm(config), config, half=True), model_dir(version, root) / LM_FILE)
        _save(_mbd_package(), mbd_path(root))


def _export_package(model: torch.nn.Module, config: dict, half: bool) -> dict:
    """What audiocraft.utils.export writes for a trained model. The released LMs hold float16
    weights, the released EnCodec float32."""
    state = model.state_dict()
    if half:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    return {
        "best_state": state,
        "xp.cfg": omegaconf.OmegaConf.to_yaml(omegaconf.OmegaConf.create(config)),
        "version": audiocraft.__version__,
        "exported": True,
    }


def _save(obj: tp.Any, path: Path) -> None:
    """torch.save `obj` to `path`, through a file of the same name in a scratch folder (torch names
    the archive inside the file after it) renamed into place, so a crash leaves no partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".partial-") as scratch:
        staged = Path(scratch) / path.name
        torch.save(obj, staged)
        os.replace(staged, path)


def _cpu(config: dict) -> omegaconf.DictConfig:
    cfg = omegaconf.OmegaConf.create(config)
    cfg.device = "cpu"
    return cfg


def _build_codec(config: dict = CODEC_CONFIG) -> torch.nn.Module:
    """EnCodec from `config` (default CODEC_CONFIG), with random codebooks (kmeans_init would leave
    them at zero until it sees training data) marked as initialised, and no DC offset in its output."""
    torch.manual_seed(SEED + 1)
    model = builders.get_compression_model(_cpu(config))
    with torch.no_grad():
        for layer in model.quantizer.vq.layers:
            codebook = layer._codebook
            codebook.embed.copy_(torch.randn_like(codebook.embed))
            codebook.embed_avg.copy_(codebook.embed)
            codebook.cluster_size.fill_(1.0)
            codebook.inited.fill_(1.0)
        # A random decoder puts most of its output in a constant offset (its ELUs are mostly
        # positive). Give the last convolution (weight-normed: weight_v) zero response at 0 Hz so
        # the demo audio is zero-mean noise, as real audio is.
        last = model.decoder.model[-1].conv.conv
        last.weight_v.sub_(last.weight_v.mean(dim=-1, keepdim=True))
        last.bias.zero_()
    return model.eval()


class _ChromaStandIn(torch.nn.Module):
    """The state-holding part of audiocraft's ChromaExtractor: its spectrogram window buffer."""

    def __init__(self, radix2_exp: int):
        super().__init__()
        size = 2**radix2_exp
        self.spec = torchaudio.transforms.Spectrogram(
            n_fft=size, win_length=size, hop_length=size // 4, power=2, center=True, pad=0, normalized=True
        )


def _build_lm(config: dict) -> LMModel:
    """The LM audiocraft's builders.get_lm_model makes from `config`, with stand-ins for the
    conditioners: the real ones load T5 and demucs, but their weights are not part of the LM state,
    which holds only each conditioner's output projection (and the chroma window)."""
    torch.manual_seed(SEED + 2)
    cfg = _cpu(config)
    kwargs = dict_from_config(cfg.transformer_lm)
    dim = kwargs["dim"]
    conditioners: dict[str, BaseConditioner] = {}
    for name, cond in cfg.conditioners.items():
        if cond.model == "t5":
            conditioners[name] = BaseConditioner(T5_DIM, dim)
        elif cond.model == "chroma_stem":
            conditioners[name] = BaseConditioner(cond.chroma_stem.n_chroma, dim)
            conditioners[name].chroma = _ChromaStandIn(cond.chroma_stem.radix2_exp)
        else:
            raise KeyError(f"no stand-in for conditioner model {cond.model!r}")
    fuser = builders.get_condition_fuser(cfg)
    if fuser.fuse2cond["cross"]:
        kwargs["cross_attention"] = True
    guidance = dict_from_config(cfg.classifier_free_guidance)
    lm = LMModel(
        pattern_provider=builders.get_codebooks_pattern_provider(kwargs["n_q"], cfg.codebooks_pattern),
        condition_provider=ConditioningProvider(conditioners, device="cpu"),
        fuser=fuser,
        cfg_dropout=guidance["training_dropout"],
        cfg_coef=guidance["inference_coef"],
        attribute_dropout=dict_from_config(cfg.attribute_dropout),
        dtype=torch.float32,
        device="cpu",
        **kwargs,
    )
    return lm.eval()


def _write_t5(root: Path, dims: dict[str, int] | None = None) -> None:
    """A T5 encoder and tokenizer filed as `t5-base` in the Hugging Face cache under root.

    `dims` overrides the T5Config sizes (d_kv, d_ff, num_layers, num_heads, vocab_size); d_model
    stays T5_DIM. The tokenizer is the same small vocabulary whatever the sizes."""
    torch.manual_seed(SEED + 3)
    # Unigram vocabulary: T5's special ids first (<pad>=0, </s>=1, <unk>=2), then whole words and
    # single characters so any lowercase prompt tokenizes.
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    vocab += [("\u2581" + word, -5.0) for word in T5_WORDS]
    vocab += [(char, -8.0) for char in "abcdefghijklmnopqrstuvwxyz0123456789"]
    assert len(vocab) <= T5_VOCAB_SIZE
    tokenizer = T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=512)
    sizes = {"vocab_size": T5_VOCAB_SIZE, "d_kv": 8, "d_ff": 32, "num_layers": 1, "num_heads": 2, **(dims or {})}
    config = T5Config(d_model=T5_DIM, num_decoder_layers=sizes["num_layers"], **sizes)
    model = T5EncoderModel(config).eval()

    repo = hf_home(root) / "hub" / f"models--{T5_NAME}"
    snapshot = repo / "snapshots" / T5_SNAPSHOT
    if snapshot.exists():
        shutil.rmtree(snapshot)
    snapshot.mkdir(parents=True)
    model.save_pretrained(snapshot)
    tokenizer.save_pretrained(snapshot)
    # refs/main last: until it exists the snapshot is not found, so a crash leaves nothing half-made.
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(T5_SNAPSHOT)


def _write_htdemucs(path: Path) -> None:
    """A tiny HTDemucs in the package format demucs.states.serialize_model writes (float16 state),
    the format of the released `955717e8-8726e21a.th`."""
    assert path.name == HTDEMUCS_FILE
    torch.manual_seed(SEED + 4)
    model = HTDemucs(**HTDEMUCS_KWARGS)
    args, kwargs = model._init_args_kwargs
    package = {
        "klass": HTDemucs,
        "args": args,
        "kwargs": kwargs,
        "state": {k: v.half() for k, v in model.state_dict().items()},
        "training_args": {"model": "htdemucs", "htdemucs": dict(kwargs)},
    }
    _save(package, path)


def _mbd_package() -> dict:
    """The MultiBand Diffusion file: one UNet and one sample processor per band, each with its
    config as a pickled OmegaConf DictConfig (what the released file holds, not a YAML string)."""
    torch.manual_seed(SEED + 5)
    package: dict[tp.Any, tp.Any] = {"sample_rate": SAMPLE_RATE, "n_bands": MBD_BANDS}
    for band in range(MBD_BANDS):
        cfg = omegaconf.OmegaConf.create(mbd_config(band))
        model = builders.get_diffusion_model(cfg)
        processor = builders.get_processor(cfg.processor, sample_rate=SAMPLE_RATE)
        # Statistics as if fitted on num_samples examples: zero mean, a per-band spread.
        n_bands = cfg.processor.n_bands
        counts = float(cfg.processor.num_samples)
        with torch.no_grad():
            processor.counts.fill_(counts)
            processor.sum_x.zero_()
            processor.sum_x2.copy_(counts * (0.05 + 0.05 * torch.rand(n_bands)) ** 2)
            processor.sum_target_x2.fill_(counts / n_bands)
        package[band] = {
            "model_state": model.state_dict(),
            "processor_state": processor.state_dict(),
            "cfg": cfg,
        }
    return package
