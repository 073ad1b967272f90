"""The bench's child processes: building a size's checkpoints, and one measured run of either side.

    python -m tooling.bench.child build SIZE ROOT SDIST   write SIZE's checkpoints under ROOT
    python -m tooling.bench.child measure SPEC.json       one run; its figures go to spec["result"]

The parent (tooling.bench.report) sets the environment: the caches at the size's weights
root, the hub offline, the thread count. Both sides record the same probes (Probe, on the loaded
MusicGen), so they are timed by the same code.

This module's top level imports only the standard library and light modules of ours: what each
side imports is part of what it measures (import_s), so those imports run inside measure_stock()
and measure_ours(), after the clock has started; and the demo builders (torch, audiocraft,
transformers) are imported by build() alone.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
import typing as tp
from pathlib import Path

from musicgen import atomic_files
from musicgen.weights.layout import CODEC_FILE, LM_FILE, htdemucs_path, model_dir
from tooling.bench.checkpoints import DEMO_SOURCE, MARKER_FILE, SIZES, T5_BASE, released_configs
from tooling.bench.processes import CHILD_MODULE


def build(size: str, root: Path, sdist: str) -> None:
    """Write `size`'s checkpoints under `root`, the marker file last (it marks the build complete)."""
    import torch

    from musicgen.demo import builders
    from musicgen.train import export

    root.mkdir(parents=True, exist_ok=True)
    if size == "tiny":
        builders.write_demo_weights(root)
        summary: dict[str, tp.Any] = {"size": size, "source": DEMO_SOURCE}
    else:
        lm_cfg, codec_cfg = released_configs(size, Path(sdist))
        version = SIZES[size].version
        builders.write_t5(root, T5_BASE)
        if version == "melody":
            builders.write_htdemucs(htdemucs_path(root))  # the demo's: only loaded for text-only generation
        folder = model_dir(version, root)
        codec = builders.build_codec(codec_cfg)
        export.save(export.export_package(codec.state_dict(), codec_cfg, half=False), folder / CODEC_FILE)
        device = "cuda" if torch.cuda.is_available() else "cpu"  # random weights drawn on the GPU where there is one
        lm = builders.build_lm(lm_cfg, device=device)
        params = sum(p.numel() for p in lm.parameters())
        state = {name: tensor.cpu() for name, tensor in lm.state_dict().items()}
        export.save(export.export_package(state, lm_cfg, half=True), folder / LM_FILE)
        del state
        del lm
        summary = {
            "size": size,
            "source": Path(sdist).name,
            "model_version": version,
            "lm_params": params,
            "transformer_lm": {k: lm_cfg["transformer_lm"][k] for k in ("dim", "num_heads", "num_layers")},
            "t5": T5_BASE,
        }
    atomic_files.write_text(root / MARKER_FILE, json.dumps(summary, indent=2) + "\n")


class Probe:
    """Hooks recording what generate() does; the same on every side.

    Instance attributes shadow the token generator (stock: the model's `_generate_tokens`; ours:
    its token loop's `tokens`) and `generate_audio` (called through self by every generate_* method
    and by our modes). LM steps: audiocraft's loop calls the LM's `_sample_next_token` once per
    step; our loop counts its own steps (FastLoop.steps).
    """

    def __init__(self, model, clock: tp.Callable[[], float], loop=None):
        self.tokens = None  # [B, K, T] int64, the last generation's
        self.audio = None  # [B, C, T] float, the last EnCodec decode
        self.tokens_s = 0.0
        self.decode_s = 0.0
        self.sampled = 0
        owner = loop if loop is not None else model
        name = "tokens" if loop is not None else "_generate_tokens"
        self.counter = loop if hasattr(loop, "steps") else None
        self.first_count = self.counter.steps if self.counter is not None else 0
        generate_tokens, generate_audio, sample = (
            getattr(owner, name),
            model.generate_audio,
            model.lm._sample_next_token,
        )

        def timed_tokens(*args, **kwargs):
            start = clock()
            self.tokens = generate_tokens(*args, **kwargs)
            self.tokens_s += clock() - start
            return self.tokens

        def timed_decode(tokens):
            start = clock()
            self.audio = generate_audio(tokens)
            self.decode_s += clock() - start
            return self.audio

        def counted(*args, **kwargs):
            self.sampled += 1
            return sample(*args, **kwargs)

        setattr(owner, name, timed_tokens)
        model.generate_audio, model.lm._sample_next_token = timed_decode, counted

    @property
    def steps(self) -> int:
        return self.sampled + (self.counter.steps - self.first_count if self.counter is not None else 0)


def measure_stock(spec: dict, clock_start: float) -> dict:
    """What a user of audiocraft writes: get_pretrained, set_generation_params, seed, generate, audio_write."""
    import torch  # the measured imports: import_s
    from audiocraft.data.audio import audio_write
    from audiocraft.models import MusicGen

    record: dict[str, tp.Any] = {"import_s": time.perf_counter() - clock_start}
    torch.set_num_threads(spec["threads"])
    clock = _clock(spec["device"])
    start = clock()
    model = MusicGen.get_pretrained(spec["model_dir"], device=spec["device"])
    record["setup_s"] = clock() - start
    record["setup_peak_rss_mb"], record["setup_rss_mb"] = _peak_rss_mb(), _rss_mb()
    probe = Probe(model, clock)

    start = clock()
    model.set_generation_params(duration=spec["duration"])
    torch.manual_seed(spec["seed"])
    generate_start = clock()
    wav = model.generate([spec["prompt"]])
    record["generate_s"] = clock() - generate_start
    audio_write(
        Path(spec["out_dir"]) / "stock", wav[0].cpu(), model.sample_rate, strategy="loudness", loudness_compressor=True
    )
    record["predict_s"] = clock() - start

    def again() -> float:
        torch.manual_seed(spec["seed"])
        start = clock()
        model.generate([spec["prompt"]])
        return clock() - start

    return _finish(record, spec, model, probe, again)


def measure_ours(spec: dict, clock_start: float) -> dict:
    """predict.py's Predictor: setup(), then one prediction through its service with predict()'s
    defaults; spec["loop"] is the MUSICGEN_TOKEN_LOOP it serves with (our loop or audiocraft's)."""
    import torch  # the measured imports: import_s (setup() imports musicgen.serving.service; it is counted here)

    import musicgen.serving.service  # noqa: F401
    from musicgen.request import Request
    from musicgen.serving.entry_points import input_fields, load_predictor_class

    predictor_class = load_predictor_class()
    record: dict[str, tp.Any] = {"import_s": time.perf_counter() - clock_start}
    torch.set_num_threads(spec["threads"])
    clock = _clock(spec["device"])
    # setup() loads melody and large; the operator's switches make it load only the version under
    # test, on the device asked (stock loads one model too).
    os.environ["MUSICGEN_MODEL_VERSIONS"] = spec["version"]
    os.environ["MUSICGEN_DEVICE"] = spec["device"]
    os.environ["MUSICGEN_TOKEN_LOOP"] = spec["loop"]
    predictor = predictor_class()
    start = clock()
    predictor.setup()
    record["setup_s"] = clock() - start
    record["setup_peak_rss_mb"], record["setup_rss_mb"] = _peak_rss_mb(), _rss_mb()
    model = predictor.runner.service.models.get(spec["version"]).model
    loop = predictor.runner.service.models.get(spec["version"]).loop
    record["loop"] = f"{loop.name} ({loop.form})" if hasattr(loop, "form") else loop.name
    record["loop_why"] = getattr(loop, "why", None)  # setup()'s reason, and its checks' figures
    record["loop_checks"] = getattr(loop, "checks", {})
    probe = Probe(model, clock, loop)

    inputs = {name: default for name, (_, default) in input_fields(predictor_class).items()}
    inputs.update(
        model_version=spec["version"],
        prompt=spec["prompt"],
        duration=spec["duration"],
        seed=spec["seed"],
        output_format="wav",
    )
    start = clock()
    prediction = predictor.runner.service.predict(Request(**inputs))
    predict_s = clock() - start
    record["generate_s"] = prediction.generate_seconds  # the service's own timing of musicgen.generate.generate
    record["predict_s"] = predict_s
    return _finish(
        record, spec, model, probe, lambda: predictor.runner.service.predict(Request(**inputs)).generate_seconds
    )


def _clock(device: str) -> tp.Callable[[], float]:
    """perf_counter, after waiting for the GPU's queued work on CUDA."""
    import torch  # already imported by the side being measured

    if device == "cuda":
        return lambda: (torch.cuda.synchronize(), time.perf_counter())[1]
    return time.perf_counter


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _rss_mb() -> float | None:
    """The resident set now (Linux), file-backed pages such as memory-mapped checkpoints included."""
    from musicgen.models.memory import process_rss  # imports torch: after the side's measured imports

    return process_rss() / 2**20 or None


def _finish(record: dict, spec: dict, model, probe: Probe, again: tp.Callable[[], float]) -> dict:
    """Add the probes' figures to `record`; write the tokens and the decoded audio for the parent.

    Then the same generation once more in the same process (`again`, same seed): a server's
    second and later requests, past the one-time costs of a first (lazy library initialisation,
    oneDNN building its convolutions for a new length): generate_warm_s, warm_step_ms.
    """
    import numpy as np  # already imported by the side being measured (torch imports it)
    import torch

    first_tokens, tokens_s, decode_s, steps = probe.tokens, probe.tokens_s, probe.decode_s, probe.steps
    if spec.get("warm", True):
        probe.tokens_s = 0.0
        record["generate_warm_s"] = again()
        record["warm_step_ms"] = 1000 * probe.tokens_s / (probe.steps - steps)
        record["warm_tokens_identical"] = bool(torch.equal(probe.tokens, first_tokens))
        probe.tokens_s, probe.decode_s, probe.tokens = tokens_s, decode_s, first_tokens

    out = Path(spec["out_dir"])
    np.save(out / "tokens.npy", probe.tokens.cpu().numpy())
    np.save(out / "audio.npy", probe.audio.float().cpu().numpy())
    lm_bytes = sum(p.numel() * p.element_size() for p in model.lm.parameters())
    record.update(
        tokens_s=probe.tokens_s,
        decode_s=probe.decode_s,
        steps=steps,
        frames=int(probe.tokens.shape[-1]),
        audio_s=probe.audio.shape[-1] / model.sample_rate,
        lm_params=sum(p.numel() for p in model.lm.parameters()),
        lm_dtype=str(next(model.lm.parameters()).dtype).replace("torch.", ""),
        lm_weight_bytes=lm_bytes,
        peak_rss_mb=_peak_rss_mb(),
        torch_threads=torch.get_num_threads(),
    )
    if spec["device"] == "cuda":
        record["gpu"] = torch.cuda.get_device_name()
        record["gpu_peak_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
        record["gpu_peak_reserved_mb"] = torch.cuda.max_memory_reserved() / 2**20
    return record


MEASURES = {"audiocraft": measure_stock, "musicgen": measure_ours, "musicgen-stock-loop": measure_ours}


def main(argv: list[str]) -> int:
    clock_start = time.perf_counter()  # import_s counts from here
    parser = argparse.ArgumentParser(prog=f"python -m {CHILD_MODULE}", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    build_command = commands.add_parser("build", help="write a size's checkpoints under a weights root")
    build_command.add_argument("size", choices=list(SIZES))
    build_command.add_argument("root", type=Path)
    build_command.add_argument("sdist", help="audiocraft's source archive ('' for tiny)")
    measure_command = commands.add_parser("measure", help="one measured run, as a spec file describes it")
    measure_command.add_argument("spec", type=Path)
    args = parser.parse_args(argv)
    if args.command == "build":
        build(args.size, args.root, args.sdist)
        return 0
    spec = json.loads(args.spec.read_text())
    record = MEASURES[spec["impl"]](spec, clock_start)
    atomic_files.write_text(Path(spec["result"]), json.dumps(record))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
