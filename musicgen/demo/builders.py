"""Tiny, randomly initialised, deterministic checkpoints in the released formats, for tests and demos.

`write_demo_weights(root)` fills a weights root with every file musicgen.weights.layout lists, each in the
format of the file it stands in for, so the real loading code runs unchanged on a CPU in seconds:

    musicgen-<version>/state_dict.bin           for every model version (versions.VERSIONS): an
                                                audiocraft export of its LM: {'best_state': fp16
                                                state dict, 'xp.cfg': YAML string, 'version',
                                                'exported': True}; dim 64, 2 layers, delay pattern
                                                (stereo: 8 interleaved codebooks, delays
                                                0,0,1,1,2,2,3,3), each with its own seed
    musicgen-<version>/compression_state_dict.bin
                                                where the release ships it: the same export format,
                                                EnCodec 32 kHz mono, hop 640 (50 Hz), 4 codebooks of
                                                2048, 2 filters; elsewhere the release's pointer
                                                {'pretrained': 'facebook/encodec_32khz', ...}
    huggingface/hub/models--facebook--encodec_32khz/...
                                                transformers EncodecModel, same sizes as above
    multiband-diffusion/mbd_musicgen_32khz.th   {'sample_rate', 'n_bands': 4, 0..3: {'model_state',
                                                'processor_state', 'cfg': pickled DictConfig}}
    huggingface/hub/models--t5-base/...         T5 encoder (d_model 768, 1 layer) + tokenizer,
                                                Hugging Face cache layout
    torch/hub/checkpoints/955717e8-8726e21a.th  demucs package {'klass': HTDemucs, 'args', 'kwargs',
                                                'state': fp16, 'training_args'}

Every file is byte-identical from run to run: each model is built under its own fixed seed and no
file carries a timestamp or a random name. The audio the models make is noise.

Importing this module imports audiocraft and transformers, which read the hub settings once: a
process that will also load models calls musicgen.boot.boot() first.
"""

from __future__ import annotations

import shutil
import typing as tp
from pathlib import Path

import audiocraft
import omegaconf
import torch
import torchaudio
from audiocraft.models import builders
from audiocraft.models.lm import LMModel
from audiocraft.modules.conditioners import BaseConditioner, ConditioningProvider
from audiocraft.utils.utils import dict_from_config
from demucs.htdemucs import HTDemucs
from transformers import EncodecConfig, EncodecModel, T5Config, T5EncoderModel, T5Tokenizer

from musicgen import atomic_files
from musicgen.demo.configs import (
    CODEC_CONFIG,
    HF_ENCODEC_CONFIG,
    HF_ENCODEC_SNAPSHOT,
    HTDEMUCS_KWARGS,
    MBD_BANDS,
    SAMPLE_RATE,
    SEED,
    T5_DIM,
    T5_SNAPSHOT,
    T5_VOCAB_SIZE,
    T5_WORDS,
    lm_config,
    lm_seed,
    mbd_config,
)
from musicgen.train.export import export_package, save
from musicgen.versions import GENERATING
from musicgen.weights.layout import (
    CODEC_FILE,
    ENCODEC_HF_NAME,
    HTDEMUCS_FILE,
    LM_FILE,
    T5_NAME,
    hf_home,
    htdemucs_path,
    mbd_path,
    model_dir,
)


def write_demo_weights(root: Path) -> None:
    """Write every demo checkpoint under the weights root `root` (existing files are replaced).

    Leaves the caller's random state untouched. Takes a few seconds on a CPU; about 41 MB in all.
    """
    root = Path(root)
    with torch.random.fork_rng(devices=[]):
        write_t5(root)
        write_htdemucs(htdemucs_path(root))
        write_hf_encodec(root)
        codec = export_package(build_codec().state_dict(), CODEC_CONFIG, half=False)
        pointer = {"pretrained": ENCODEC_HF_NAME, "exported": True, "version": audiocraft.__version__}
        for version in GENERATING:
            # the EnCodec itself, or (as the 3.3 B melody and stereo releases) audiocraft's
            # export_pretrained_compression_model pointer to the Hugging Face EnCodec
            save(codec if GENERATING[version].ships_codec else pointer, model_dir(version, root) / CODEC_FILE)
            config = lm_config(version)
            lm = build_lm(config, seed=lm_seed(version))
            save(export_package(lm.state_dict(), config, half=True), model_dir(version, root) / LM_FILE)
        save(mbd_package(), mbd_path(root))


def _cpu(config: dict) -> omegaconf.DictConfig:
    cfg = omegaconf.OmegaConf.create(config)
    cfg.device = "cpu"
    return cfg


def build_codec(config: dict = CODEC_CONFIG) -> torch.nn.Module:
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


def build_lm(config: dict, seed: int = SEED + 2, device: str = "cpu") -> LMModel:
    """The LM audiocraft's builders.get_lm_model makes from `config`, with stand-ins for the
    conditioners: the real ones load T5 and demucs, but their weights are not part of the LM state,
    which holds only each conditioner's output projection (and the chroma window). `device`: where
    its random weights are drawn (the bench's GPU check draws the 3.3 B large on the GPU: seconds,
    not minutes); the same seed gives other values on another device."""
    torch.manual_seed(seed)
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
        condition_provider=ConditioningProvider(conditioners, device=device),
        fuser=fuser,
        cfg_dropout=guidance["training_dropout"],
        cfg_coef=guidance["inference_coef"],
        attribute_dropout=dict_from_config(cfg.attribute_dropout),
        dtype=torch.float32,
        device=device,
        **kwargs,
    )
    return lm.eval()


def write_t5(root: Path, dims: dict[str, int] | None = None) -> None:
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

    write_hub_snapshot(root, T5_NAME, T5_SNAPSHOT, model, tokenizer)


def write_hub_snapshot(root: Path, name: str, commit: str, *parts) -> None:
    """`parts` (save_pretrained-able) filed as the hub repository `name` at `commit` in the
    Hugging Face cache under root, and `refs/main` pointed at it."""
    repo = hf_home(root) / "hub" / f"models--{name.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    if snapshot.exists():
        shutil.rmtree(snapshot)
    snapshot.mkdir(parents=True)
    for part in parts:
        part.save_pretrained(snapshot)
    # refs/main last: until it exists the snapshot is not found, so a crash leaves nothing half-made.
    atomic_files.write_text(repo / "refs" / "main", commit)


def write_hf_encodec(root: Path) -> None:
    """A transformers EncodecModel filed as facebook/encodec_32khz in the Hugging Face cache under
    root: what the 3.3 B melody and stereo checkpoints' pointer makes audiocraft load."""
    torch.manual_seed(SEED + 9)
    model = EncodecModel(EncodecConfig(**HF_ENCODEC_CONFIG)).eval()
    with torch.no_grad():  # as build_codec: random codebooks, marked initialised; no DC offset
        for layer in model.quantizer.layers:
            codebook = layer.codebook
            codebook.embed.copy_(torch.randn_like(codebook.embed))
            codebook.embed_avg.copy_(codebook.embed)
            codebook.cluster_size.fill_(1.0)
            codebook.inited.fill_(True)
        last = model.decoder.layers[-1].conv
        direction = last.parametrizations.weight.original1  # weight_norm's direction (v)
        direction.sub_(direction.mean(dim=-1, keepdim=True))
        last.bias.zero_()
    write_hub_snapshot(root, ENCODEC_HF_NAME, HF_ENCODEC_SNAPSHOT, model)


def write_htdemucs(path: Path) -> None:
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
    save(package, path)


def mbd_package() -> dict:
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


def write_community_checkpoint(lm_file: Path, dest: Path) -> Path:
    """The LM of the export `lm_file` in the community fine-tuner's format (sakemin's
    trained_model.tar): torch.save({'xp.cfg': <a pickled OmegaConf DictConfig, as a dora/hydra run
    holds it: struct mode, its resolver cache filled>, 'model': <the state dict in float32>}).
    Same weights as `lm_file`, so it must serve the same audio."""
    package = torch.load(lm_file, map_location="cpu", weights_only=True)
    cfg = omegaconf.OmegaConf.create(package["xp.cfg"])
    cfg.device, cfg.dtype = "cuda", "float32"  # what a training run records
    omegaconf.OmegaConf.set_struct(cfg, True)
    # hydra's `now` resolver fills the root's cache when the run's config is composed
    cfg._metadata.resolver_cache["now"][("%Y-%m-%d",)] = "2024-01-31"
    state = {name: tensor.float() for name, tensor in package["best_state"].items()}
    save({"xp.cfg": cfg, "model": state}, dest)
    return dest
