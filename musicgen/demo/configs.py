"""The demo checkpoints' configurations and sizes: the released files' configs, shrunk.

Plain data (no torch, audiocraft or transformers at import), so the bench parent reads it cheaply.
"""

from __future__ import annotations

import typing as tp
from fractions import Fraction

from musicgen.versions import GENERATING
from musicgen.weights.layout import T5_NAME

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


# The Hugging Face EnCodec (transformers' EncodecConfig) the 3.3 B melody and stereo checkpoints
# point to, shrunk: 32 kHz mono, hop 640 (50 Hz), 4 codebooks of 2048 (2.2 kbps).
HF_ENCODEC_CONFIG: dict[str, tp.Any] = {
    "sampling_rate": SAMPLE_RATE,
    "audio_channels": 1,
    "num_filters": 2,
    "hidden_size": CODEC_DIMENSION,
    "codebook_dim": CODEC_DIMENSION,
    "upsampling_ratios": [8, 5, 4, 4],
    "codebook_size": CARD,
    "target_bandwidths": [2.2],
    "num_lstm_layers": 2,
    "num_residual_layers": 1,
    "normalize": False,
    "chunk_length_s": None,
    "overlap": None,
    "use_causal_conv": False,
    "use_conv_shortcut": False,
    "norm_type": "weight_norm",
    "pad_mode": "reflect",
}
# Commit id the stand-in encodec_32khz snapshot is filed under (any fixed 40-hex string; made up).
HF_ENCODEC_SNAPSHOT = "0e1d2c3b4a5968778695a4b3c2d1e0f1a2b3c4d5"
FIRST_SEEDS = {"melody": SEED + 2, "large": SEED + 2}  # the seeds the first two demo LMs always had


def lm_seed(version: str) -> int:
    """The seed of `version`'s demo LM: melody's and large's own, else one per place in the table."""
    return FIRST_SEEDS.get(version, SEED + 4 + list(GENERATING).index(version))


STEREO_DELAYS = [0, 0, 1, 1, 2, 2, 3, 3]  # left and right codebooks of each level share a delay


def lm_config(version: str) -> dict[str, tp.Any]:
    """The `xp.cfg` of the demo LM for `version` as a plain dict, as its table entry
    (musicgen.versions) says: melody-conditioned (text + chroma prefix, as musicgen-melody) or
    text-only (text via cross attention, as musicgen-large); a stereo one over 8 interleaved codebooks."""
    config = _mono_lm_config("melody" if GENERATING[version].melody else "large")
    if GENERATING[version].stereo:  # audiocraft's grids/musicgen/musicgen_stereo_finetune_32khz.py
        config["channels"] = 2
        config["interleave_stereo_codebooks"] = {"use": True, "per_timestep": False}
        config["transformer_lm"]["n_q"] = 2 * N_Q
        config["codebooks_pattern"]["delay"]["delays"] = list(STEREO_DELAYS)
        config["codebooks_pattern"]["unroll"] = {"flattening": list(range(2 * N_Q)), "delays": [0] * 2 * N_Q}
    return config


def _mono_lm_config(version: str) -> dict[str, tp.Any]:
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
