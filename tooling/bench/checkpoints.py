"""The bench's random checkpoints: the sizes, their configs from audiocraft's sources, where they are cached.

    tiny    the demo weights (musicgen.demo); served as model_version "large" (text, cross attention)
    small   facebook/musicgen-small's architecture (model_scale small, text2music) as "large"
    melody  facebook/musicgen-melody's (model_scale medium, chroma2music) as "melody": GPU only
    large   facebook/musicgen-large's (model_scale large, text2music) as "large": GPU only

The dimensions come from audiocraft's own config/ tree, read from its PyPI source archive (pip
download, cached under <weights root>/bench/sdist/); T5 is T5-base-sized. Each size is built once,
in a child process (tooling.bench.child), into <weights root>/bench/<size>/, a weights root of
its own. This module is light to import (no torch, no audiocraft): the CLI imports it at every start.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from importlib.metadata import version as package_version
from pathlib import Path

from musicgen.demo.configs import CODEC_CONFIG, lm_config
from musicgen.settings import read_settings
from tooling.bench.processes import child_command, child_environment, run_child

BUILD_TIMEOUT = 3 * 3600  # s; building the random large checkpoints on a CPU
MARKER_FILE = "bench.json"  # written last into a size's root: what it was built from
DEMO_SOURCE = "musicgen.demo"  # the marker's source for the tiny size


@dataclass(frozen=True)
class Size:
    version: str  # the model_version our Predictor serves it as (its conditioning: text or text + chroma)
    solver: str | None  # config/solver/musicgen/<solver>.yaml of the released model
    scale: str | None  # config/model/lm/model_scale/<scale>.yaml (audiocraft/grids/musicgen/*.py bind it)


SIZES = {
    "tiny": Size("large", None, None),  # musicgen.demo's weights
    "small": Size("large", "musicgen_base_32khz", "small"),  # musicgen_lm.yaml's default scale
    "melody": Size("melody", "musicgen_melody_32khz", "medium"),  # 1.5 B
    "large": Size("large", "musicgen_base_32khz", "large"),  # 3.3 B
}
# The released models' EnCodec: "EnCodec large ... stride of 640 ... rvq.n_q=4, rvq.bins=2048", as
# the solver configs describe compression_model_checkpoint //pretrained/facebook/encodec_32khz.
ENCODEC_CONFIG = "model/encodec/encodec_large_nq4_s640.yaml"
# google-t5/t5-base's config.json (not in audiocraft's sdist): the sizes every released LM conditions on.
T5_BASE = {"vocab_size": 32128, "d_kv": 64, "d_ff": 3072, "num_layers": 12, "num_heads": 12}


def bench_root(size: str) -> Path:
    """The weights root holding `size`'s checkpoints (under the configured weights root)."""
    return read_settings().weights_root / "bench" / size


def sdist_cache() -> Path:
    """Where audiocraft's downloaded source archive is kept (under the configured weights root)."""
    return read_settings().weights_root / "bench" / "sdist"


def audiocraft_sdist(cache: Path) -> Path:
    """audiocraft's PyPI source archive for the installed version (it alone ships config/)."""
    release = package_version("audiocraft")
    path = cache / f"audiocraft-{release}.tar.gz"
    if not path.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
        command += ["--no-build-isolation", f"audiocraft=={release}", "-d", str(cache)]
        result = subprocess.run(command, capture_output=True, text=True, timeout=600)
        if result.returncode != 0 or not path.is_file():
            raise RuntimeError(f"could not download audiocraft {release}'s source archive:\n{result.stderr[-3000:]}")
    return path


def released_configs(size: str, sdist: Path) -> tuple[dict, dict]:
    """(LM xp.cfg, EnCodec xp.cfg) of `size`, composed from the sdist's config/ tree in Hydra's
    order (solver defaults, model/lm/default, musicgen_lm, the conditioner, the scale, the solver)
    over the demo's config of the same conditioning, interpolations resolved."""
    # omegaconf (~0.2 s) only when composing: importing this module stays cheap for the CLI, and a
    # measured child does not start with what audiocraft would import already loaded.
    from omegaconf import OmegaConf

    spec = SIZES[size]
    with tarfile.open(sdist) as tar:
        top = tar.getnames()[0].split("/")[0]

        def load(relative: str):
            member = tar.extractfile(f"{top}/config/{relative}")
            if member is None:
                raise FileNotFoundError(f"{sdist.name} has no config/{relative}")
            return OmegaConf.create(member.read().decode())

        solver = load(f"solver/musicgen/{spec.solver}.yaml")
        musicgen_lm = load("model/lm/musicgen_lm.yaml")
        conditioner = _override(solver, "/conditioner") or _override(musicgen_lm, "/conditioner")
        layers = [
            load("solver/musicgen/default.yaml"),
            load("model/lm/default.yaml"),
            musicgen_lm,
            load(f"conditioner/{conditioner}.yaml"),
            load(f"model/lm/model_scale/{spec.scale}.yaml"),
            solver,
        ]
        codec_layers = [load("model/encodec/default.yaml"), load(ENCODEC_CONFIG)]
    expected = "chroma2music" if spec.version == "melody" else "text2music"
    if conditioner != expected:
        raise ValueError(f"{spec.solver} conditions with {conditioner}, expected {expected} for {size}")
    for layer in layers + codec_layers:
        layer.pop("defaults", None)
    lm = OmegaConf.merge(OmegaConf.create(lm_config(spec.version)), *layers)
    top_level = {"sample_rate": lm.sample_rate, "channels": lm.channels}
    codec = OmegaConf.merge(OmegaConf.create(CODEC_CONFIG), *codec_layers, top_level)
    lm_dict = OmegaConf.to_container(lm, resolve=True)
    codec_dict = OmegaConf.to_container(codec, resolve=True)
    transformer = lm_dict["transformer_lm"]
    if (transformer["n_q"], transformer["card"]) != (codec_dict["rvq"]["n_q"], codec_dict["rvq"]["bins"]):
        raise ValueError(f"{size}: the LM's n_q/card do not match EnCodec's n_q/bins")
    return lm_dict, codec_dict


def _override(config, group: str) -> str | None:
    """The option a config's `defaults` list picks for `group` (`override /group: option`)."""
    for item in config.get("defaults", []):
        if isinstance(item, str):
            continue
        for key, value in item.items():
            if key.replace("override ", "").strip() == group:
                return value
    return None


def checkpoint_source(size: str) -> str:
    """What `size`'s checkpoints are built from, as its marker file records it."""
    return DEMO_SOURCE if size == "tiny" else f"audiocraft-{package_version('audiocraft')}.tar.gz"


def ensure_checkpoints(size: str) -> Path:
    """The weights root of `size`, built once (in a child process) and then reused."""
    root = bench_root(size)
    marker = root / MARKER_FILE
    if marker.is_file() and json.loads(marker.read_text()).get("source") == checkpoint_source(size):
        return root
    sdist = "" if size == "tiny" else str(audiocraft_sdist(sdist_cache()))
    print(f"building {size} checkpoints under {root} (once) ...", flush=True)
    env = child_environment(root, threads=os.cpu_count() or 1)
    run_child(child_command("build", size, str(root), sdist), env, BUILD_TIMEOUT, "building checkpoints")
    return root
