"""Our generation loop (musicgen.tokens) against audiocraft's own, on the demo weights, on the CPU.

Token-exact in every mode: each case seeds as the service does, asks audiocraft's own generate*
for its tokens, then our loop for the same conditions, and compares the token tensors. Then the
static step (what the CUDA graph replays), the checks and their fallbacks, the decoder switch,
and the progress reports.
"""

from __future__ import annotations

import copy
import fcntl
import logging
import os
import pty
import re
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest
import soundfile
import torch
from audiocraft.utils.autocast import TorchAutocast
from helpers import predict_with_defaults, write_scale

from musicgen.generate import seed_everything
from musicgen.models.load import Served
from musicgen.tokens.choose import Tolerance, choose_loop
from musicgen.tokens.graphs import GraphedStep, static_cache_bytes
from musicgen.tokens.loop import steps_in_window
from musicgen.tokens.loops import AudiocraftLoop, FastLoop, plan_windows
from musicgen.tokens.progress import Progress

REPOSITORY = Path(__file__).resolve().parent.parent
RATE = 32000
PROMPT = "calm piano"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def audio_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("decode-inputs")


def stock_tokens(model, kind: str, seed: int, audio: torch.Tensor | None = None) -> torch.Tensor:
    """audiocraft's own generate* for its tokens (the generation parameters already set)."""
    seed_everything(seed)
    with torch.inference_mode():
        if kind == "text":
            return model.generate([PROMPT], return_tokens=True)[1]
        if kind == "melody":
            return model.generate_with_chroma([PROMPT], audio[None], RATE, return_tokens=True)[1]
        return model.generate_continuation(audio[None], RATE, [PROMPT], return_tokens=True)[1]


def our_tokens(model, decoder, kind: str, seed: int, audio: torch.Tensor | None = None) -> torch.Tensor:
    """The same conditions and prompt (audiocraft's _prepare_tokens_and_attributes), our loop."""
    seed_everything(seed)
    with torch.inference_mode():
        if kind == "text":
            attributes, prompt = model._prepare_tokens_and_attributes([PROMPT], None)
        elif kind == "melody":
            attributes, prompt = model._prepare_tokens_and_attributes([PROMPT], None, melody_wavs=[audio])
        else:
            attributes, prompt = model._prepare_tokens_and_attributes([PROMPT], audio[None])
        return decoder.tokens(attributes, prompt)  # a continuation's include its prompt's, as audiocraft's do


def tone(audio_dir, seconds: float, channels: int = 1):
    path = write_scale(audio_dir / f"tone-{seconds}-{channels}.wav", seconds, rate=RATE, channels=channels)
    wav, _ = soundfile.read(str(path), always_2d=True, dtype="float32")
    return torch.from_numpy(wav.T)


CASES = {
    # name: (model_version, kind, generation params, seconds of input audio)
    "text-large": ("large", "text", {"duration": 3}, None),
    "text-melody": ("melody", "text", {"duration": 3}, None),
    "melody": ("melody", "melody", {"duration": 3}, 4.0),
    "continuation": ("large", "continuation", {"duration": 3}, 1.3),
    "continuation-30s-window": ("melody", "continuation", {"duration": 30}, 29.5),
    "text-60s": ("large", "text", {"duration": 60}, None),
    "top-p": ("large", "text", {"duration": 3, "top_p": 0.9}, None),
    "temperature": ("melody", "text", {"duration": 3, "temperature": 0.6, "top_k": 40}, None),
    "greedy": ("large", "text", {"duration": 3, "use_sampling": False}, None),
    "cfg-0": ("large", "text", {"duration": 3, "cfg_coef": 0.0}, None),
    "cfg-1": ("melody", "text", {"duration": 3, "cfg_coef": 1.0}, None),
    "cfg-3": ("large", "text", {"duration": 3, "cfg_coef": 3.0}, None),
    "two-step-cfg": ("large", "text", {"duration": 2, "two_step_cfg": True}, None),  # handed to audiocraft's loop
    # The 3.3 B melody model and the stereo ones (8 interleaved codebooks, delays 0,0,1,1,2,2,3,3)
    "text-melody-large": ("melody-large", "text", {"duration": 3}, None),
    "melody-melody-large": ("melody-large", "melody", {"duration": 3}, 4.0),
    "text-stereo-large": ("stereo-large", "text", {"duration": 3}, None),
    "continuation-stereo-large": ("stereo-large", "continuation", {"duration": 3}, 1.3),
    "text-40s-stereo-large": ("stereo-large", "text", {"duration": 40}, None),
    "melody-stereo-melody-large": ("stereo-melody-large", "melody", {"duration": 3}, 4.0),
    "continuation-stereo-melody-large": ("stereo-melody-large", "continuation", {"duration": 2}, 1.3),
}


@pytest.mark.parametrize("case", list(CASES))
def test_tokens_are_audiocrafts(predictor, audio_dir, case):
    version, kind, params, seconds = CASES[case]
    model = predictor.runner.service.models.get(version).model
    model.set_generation_params(extend_stride=18, **params)
    audio = tone(audio_dir, seconds, model.audio_channels) if seconds else None
    reference = stock_tokens(model, kind, seed=17, audio=audio)
    ours = our_tokens(model, FastLoop(model), kind, seed=17, audio=audio)
    frames = int(params["duration"] * 50)
    assert reference.shape == (1, 8 if version.startswith("stereo") else 4, frames)
    assert ours.shape == reference.shape
    assert torch.equal(ours, reference)


def test_the_service_serves_our_loop_and_both_loops_write_the_same_bytes(predictor):
    """The default token loop is ours; MUSICGEN_TOKEN_LOOP=audiocraft serves audiocraft's loop, same file."""
    models = predictor.runner.service.models
    assert {"melody", "large"} <= set(models.resident)  # and any version a test loaded since
    assert {type(served.loop) for served in models.resident.values()} == {FastLoop}
    ours = predict_with_defaults(predictor, model_version="large", prompt="jazz", duration=2, seed=9).read_bytes()
    saved = dict(models.resident)
    try:
        model = models.get("large").model
        models.resident["large"] = Served(model, choose_loop(model, "large", "audiocraft"))
        assert isinstance(models.get("large").loop, AudiocraftLoop)
        stock = predict_with_defaults(predictor, model_version="large", prompt="jazz", duration=2, seed=9)
        assert stock.read_bytes() == ours
    finally:
        models.resident.update(saved)


# ---------------------------------------------------------------------------------------------
# The static step (what a CUDA graph replays), its checks and the fallbacks


def test_the_checked_static_step_gives_audiocrafts_tokens_on_the_cpu(predictor, caplog):
    """Attention over the whole window's cache with a mask, padded cross-attention, positions as a
    tensor: on the CPU in float32 the same tokens as audiocraft's loop, greedy and sampled."""
    for version in ("large", "melody"):
        model = predictor.runner.service.models.get(version).model
        with caplog.at_level(logging.INFO, logger="musicgen.tokens.choose"):
            decoder = choose_loop(model, version, check=True)
        assert isinstance(decoder, FastLoop) and decoder.graph is not None
        assert decoder.form == "static steps (no graph)"
        assert f"{version}: decoding with our loop, static steps (no graph)" in caplog.text
        assert decoder.why == "both checks passed"  # what the GPU check reports of setup()
        assert list(decoder.checks) == ["our eager step vs the LM's forward pass", "the static step vs the eager step"]
        assert all(re.fullmatch(r"max \|difference\| \S+ \(allowed \S+\)", text) for text in decoder.checks.values())
        for params in ({"duration": 8, "use_sampling": False}, {"duration": 3}):
            model.set_generation_params(extend_stride=18, **params)
            assert torch.equal(our_tokens(model, decoder, "text", 5), stock_tokens(model, "text", 5))


def test_mixed_precision_as_on_a_gpu_passes_the_checks(predictor, caplog):
    """A GPU serves the transformer in float16 under autocast while the embeddings and output heads
    stay float32; the keys and values are float16. The same layout in bfloat16 on the CPU (norms in
    float32, as a GPU's autocast computes them): both checks pass and both loops generate."""
    model = copy.copy(predictor.runner.service.models.get("melody").model)
    model.lm = copy.deepcopy(model.lm)
    model.lm.transformer.to(torch.bfloat16)
    for module in model.lm.transformer.modules():
        if isinstance(module, torch.nn.LayerNorm):
            module.float()
    model.autocast = TorchAutocast(enabled=True, device_type="cpu", dtype=torch.bfloat16)
    with caplog.at_level(logging.INFO, logger="musicgen.tokens.choose"):
        decoder = choose_loop(model, "melody-bf16", check=True)
    assert "melody-bf16: decoding with our loop, static steps (no graph)" in caplog.text
    assert decoder.transformer.kv_dtype(model.autocast) == torch.bfloat16
    assert model.lm.emb[0].weight.dtype == torch.float32
    model.set_generation_params(duration=1, extend_stride=18)
    ours, reference = our_tokens(model, decoder, "text", 2), stock_tokens(model, "text", 2)
    assert ours.shape == reference.shape == (1, 4, 50)
    assert 0 <= ours.min() and ours.max() < model.lm.card  # (rounding differs: not compared token for token)


@pytest.mark.parametrize("version", ["melody", "large", "stereo-large", "stereo-melody-large"])
def test_the_static_buffers_are_known_before_the_lm_loads(predictor, version):
    """The memory budget's estimate of a CUDA graph's buffers, from the LM's config alone, is what
    a GraphedStep allocates (here in float32, as on the CPU)."""
    model = predictor.runner.service.models.get(version).model
    graph = GraphedStep(FastLoop(model).transformer, model, capture=False)
    assert static_cache_bytes(model.lm.cfg, element_bytes=4) == graph.nbytes


def test_a_failed_graph_check_serves_the_eager_loop(predictor, caplog):
    model = predictor.runner.service.models.get("large").model
    with caplog.at_level(logging.WARNING, logger="musicgen.tokens.choose"):
        decoder = choose_loop(model, "large", check=True, graph_tolerance=Tolerance(-1.0, 0.0))
    assert isinstance(decoder, FastLoop) and decoder.graph is None and decoder.form == "eager"
    assert "large: decoding with our eager loop; the CUDA-graph step failed its check: the static step " in caplog.text
    assert "differs from the eager step by" in caplog.text and "(allowed -1)" in caplog.text
    assert decoder.why.startswith("the CUDA-graph step failed its check: the static step differs from the eager step")
    assert list(decoder.checks) == ["our eager step vs the LM's forward pass"]  # the one that passed
    model.set_generation_params(duration=2, extend_stride=18)
    assert torch.equal(our_tokens(model, decoder, "text", 8), stock_tokens(model, "text", 8))


def test_a_failed_eager_check_serves_audiocrafts_loop(predictor, caplog):
    model = predictor.runner.service.models.get("melody").model
    with caplog.at_level(logging.WARNING, logger="musicgen.tokens.choose"):
        decoder = choose_loop(model, "melody", check=True, tolerance=Tolerance(-1.0, 0.0))
    assert isinstance(decoder, AudiocraftLoop)
    assert "melody: decoding with audiocraft's loop; our loop failed its check: our eager step differs from " in (
        caplog.text
    )
    model.set_generation_params(duration=1, extend_stride=18)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="musicgen.tokens.progress"):
        assert torch.equal(our_tokens(model, decoder, "text", 8), stock_tokens(model, "text", 8))
    lines = [record.getMessage() for record in caplog.records if record.name == "musicgen.tokens.progress"]
    assert re.fullmatch(r"generating: 53/53 steps in [0-9.]+ s \([0-9.]+ steps/s\)", lines[-1])  # audiocraft's loop too


def test_an_lm_our_loop_does_not_handle_is_served_by_audiocrafts(predictor, caplog):
    model = copy.copy(predictor.runner.service.models.get("large").model)
    model.lm = copy.deepcopy(model.lm)
    model.lm.two_step_cfg = True
    with caplog.at_level(logging.WARNING, logger="musicgen.tokens.choose"):
        decoder = choose_loop(model, "large")
    assert isinstance(decoder, AudiocraftLoop)
    assert "large: decoding with audiocraft's loop; ours does not handle this LM: two_step_cfg" in caplog.text


# ---------------------------------------------------------------------------------------------
# Windows and progress


def test_windows_past_30_s_are_audiocrafts(predictor):
    model = predictor.runner.service.models.get("large").model
    model.set_generation_params(duration=60, extend_stride=18)
    windows = plan_windows(model, 0)
    assert [(w.time_offset, w.max_gen_len, w.prompt_len) for w in windows] == [
        (0.0, 1500, 0), (18.0, 1500, 600), (36.0, 1200, 600),
    ]  # fmt: skip
    # the delay pattern: one step per frame plus 3, less the steps the prompt already fills
    assert [steps_in_window(model.lm, w.max_gen_len, w.prompt_len) for w in windows] == [1503, 903, 603]


def test_a_short_prediction_logs_one_closing_line(predictor, caplog):
    with caplog.at_level(logging.INFO, logger="musicgen.tokens.progress"):
        predict_with_defaults(predictor, model_version="large", prompt="jazz", duration=2, seed=1)
    lines = [record.getMessage() for record in caplog.records if record.name == "musicgen.tokens.progress"]
    assert len(lines) == 1, lines  # the demo model generates 2 s in well under QUIET_SECONDS
    assert re.fullmatch(r"generating: 103/103 steps in [0-9.]+ s \([0-9.]+ steps/s\)", lines[0])


def test_a_long_generation_logs_progress_every_10_percent_or_5_s(caplog):
    """1,000 steps of 1/128 s each (a clock advanced by the steps themselves, exact in binary):
    nothing in the first 5 s (640 steps), then a line at 5 s and one per 10 % of the steps after
    it, then the closing line."""
    now = [0.0]
    progress = Progress(1000, bar=False, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="musicgen.tokens.progress"):
        for _ in range(1000):
            now[0] += 1 / 128
            progress.advance()
        progress.close()
    assert [record.getMessage() for record in caplog.records] == [
        "generating: 640/1000 steps (64%), 5.0 s elapsed, about 2.8 s left",
        "generating: 740/1000 steps (74%), 5.8 s elapsed, about 2.0 s left",
        "generating: 840/1000 steps (84%), 6.6 s elapsed, about 1.2 s left",
        "generating: 940/1000 steps (94%), 7.3 s elapsed, about 0.5 s left",
        "generating: 1000/1000 steps in 7.8 s (128.0 steps/s)",
    ]


def test_on_a_terminal_progress_is_a_bar():
    program = (
        "from musicgen.tokens.progress import Progress\np = Progress(40)\nfor _ in range(40): p.advance()\np.close()"
    )
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))  # a terminal 80 wide
    process = subprocess.Popen(
        [sys.executable, "-c", program], stderr=follower, stdout=subprocess.DEVNULL, cwd=REPOSITORY
    )
    os.close(follower)
    output = b""
    while chunk := _read(leader):
        output += chunk
    os.close(leader)
    assert process.wait(timeout=120) == 0
    assert b"generating:" in output and b"/40 [" in output  # tqdm's bar...
    assert b"steps (" not in output  # ...not the periodic log lines


def _read(fd: int) -> bytes:
    try:
        return os.read(fd, 4096)
    except OSError:  # EIO: the child closed its end
        return b""
