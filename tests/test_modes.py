"""Every mode through predict.py's Predictor on the demo weights, asserting on the audio it writes.

Melody (audiocraft's chroma path), continuation (exact lengths, the 30 s edge), encode-decode
(channels, chunks), long pieces, MultiBand Diffusion, seeds, normalization levels and mp3.
Text-to-music basics (format, seed replay, fresh folders) are in test_predict.py.
"""

from __future__ import annotations

import gc
import math
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile
import torch
import torchaudio
from helpers import predict_with_defaults, write_scale

from musicgen import generate
from musicgen.audio.encode import read_metadata
from musicgen.audio.levels import convert, normalize
from musicgen.audio.read import load_audio
from musicgen.errors import InputError
from musicgen.models.load import LoadedModels
from musicgen.request import Request
from musicgen.serving.service import MusicGenService

RATE = 32000  # Hz, every output
FRAME = 640  # samples per EnCodec frame (50 Hz)
PEAK = 10 ** (-1 / 20)  # -1 dBFS, audiocraft's peak/clip headroom
LSB = 2**-15  # one 16-bit step


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@dataclass
class Output:
    """One prediction's file, read at once (the next prediction clears its folder)."""

    path: Path
    data: bytes
    samples: np.ndarray  # [T, C] float64
    rate: int
    metadata: dict[str, str]
    format: tuple[str, str, int, int]  # container, sample encoding, sample rate, channels

    @property
    def frames(self) -> int:
        return self.samples.shape[0]


def predict(predictor, **inputs) -> Output:
    path = predict_with_defaults(predictor, **inputs)
    if path.suffix == ".wav":
        samples, rate = soundfile.read(str(path), always_2d=True)
        info = soundfile.info(str(path))
        fmt = (info.format, info.subtype, info.samplerate, info.channels)
    else:
        samples, rate, fmt = None, None, None
    return Output(path, path.read_bytes(), samples, rate, read_metadata(path), fmt)


@pytest.fixture(scope="module")
def audio_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("inputs")


@pytest.fixture(scope="module")
def melody(audio_dir) -> Path:
    return write_scale(audio_dir / "melody.wav", 4.0)


@pytest.fixture(scope="module")
def other_melody(audio_dir) -> Path:
    return write_scale(audio_dir / "other.wav", 4.0, rising=False)


def block_rms(samples: np.ndarray, block: int = FRAME) -> np.ndarray:
    mono = samples.mean(axis=1)
    return np.sqrt((mono[: len(mono) // block * block].reshape(-1, block) ** 2).mean(axis=1))


def assert_continuous(samples: np.ndarray) -> None:
    """No silent gap anywhere (the demo models make steady noise): every 20 ms block is audible."""
    rms = block_rms(samples)
    assert rms.min() > 0.3 * np.median(rms), f"quiet block at {rms.argmin() * FRAME / RATE:.2f} s"


# ---------------------------------------------------------------------------------------------
# 1. Melody


def test_melody_model_has_get_pretrained_settings_and_drops_drums_and_bass(predictor):
    conditioner = predictor.runner.service.models.get("melody").model.lm.condition_provider.conditioners["self_wav"]
    assert type(conditioner).__name__ == "ChromaStemConditioner"
    assert conditioner.match_len_on_eval is True
    assert conditioner._use_masking is False
    sources = conditioner.demucs.sources
    assert sorted(sources[i] for i in conditioner.stem_indices.tolist()) == ["other", "vocals"]


def test_melody_is_audiocrafts_generate_with_chroma(predictor, melody):
    """Bit for bit what a user of audiocraft gets from the same file, prompt and seed."""
    models = predictor.runner.service.models
    request = Request(prompt="jazz", input_audio=melody, duration=2, top_k=50)
    ours, rate = generate.generate(request, models, seed=11, input_audio=load_audio(melody))
    model = models.get("melody").model
    wav, sample_rate = soundfile.read(str(melody), always_2d=True, dtype="float32")
    generate.seed_everything(11)
    model.set_generation_params(duration=2, top_k=50, cfg_coef=3, extend_stride=18)
    with torch.inference_mode():
        reference = model.generate_with_chroma(["jazz"], torch.from_numpy(wav.T)[None], sample_rate)
    assert rate == RATE and ours.shape == (1, 2 * RATE)
    assert torch.equal(ours, reference[0])


def test_melody_output_follows_the_melody(predictor, melody, other_melody):
    first = predict(predictor, prompt="jazz", input_audio=melody, duration=2, seed=5, normalization_strategy="peak")
    other = predict(
        predictor, prompt="jazz", input_audio=other_melody, duration=2, seed=5, normalization_strategy="peak"
    )
    assert first.rate == RATE and first.frames == 2 * RATE  # output length = duration
    # only the chroma differs (same seed, same file: test_same_inputs_and_seed_give_the_same_file_...[melody])
    assert not np.array_equal(first.samples, other.samples)
    assert first.metadata == {"model_version": "melody", "seed": "5"}


# ---------------------------------------------------------------------------------------------
# 2. Continuation


@pytest.mark.parametrize("model_version", ["melody", "large"])
def test_continuation_is_the_whole_frame_window_then_duration_new_seconds(predictor, audio_dir, model_version):
    song = write_scale(audio_dir / "song.wav", 4.317)  # 44.1 kHz: the window is no whole number of frames
    out = predict(
        predictor, model_version=model_version, prompt="go on", input_audio=song, continuation=True,
        continuation_start=1, duration=2, seed=1,
    )  # fmt: skip
    window = (4.317 - 1) * RATE  # 106144 samples at 32 kHz: 165 whole frames
    assert out.rate == RATE
    assert out.frames == math.floor(window / FRAME) * FRAME + 2 * RATE
    assert out.metadata == {"model_version": model_version, "seed": "1"}


def test_continuation_is_audiocrafts_generate_continuation(predictor, audio_dir):
    song = write_scale(audio_dir / "song-3s.wav", 3.0, rate=32000, channels=1)
    models = predictor.runner.service.models
    request = Request(prompt="go on", input_audio=song, continuation=True, continuation_end=2, duration=1)
    ours, _ = generate.generate(request, models, seed=4, input_audio=load_audio(song))
    model = models.get("melody").model
    wav, _ = soundfile.read(str(song), always_2d=True, dtype="float32")
    generate.seed_everything(4)
    model.set_generation_params(duration=3, extend_stride=18)
    with torch.inference_mode():
        reference = model.generate_continuation(torch.from_numpy(wav.T[:, : 2 * RATE])[None], RATE, ["go on"])
    assert ours.shape == (1, 3 * RATE)
    assert torch.equal(ours, reference[0])


def test_a_window_of_exactly_the_context_is_continued_past_it(predictor, audio_dir, monkeypatch):
    """30 s of prompt leave audiocraft's first window no room (lm.generate asserts): the extend loop takes over."""
    song = write_scale(audio_dir / "song-31s.wav", 31.0, rate=16000, channels=1)
    out = predict(
        predictor, prompt="go on", input_audio=song, continuation=True, continuation_start=1,
        continuation_end=31, duration=2, seed=2, normalization_strategy="peak",
    )  # fmt: skip
    assert out.frames == 30 * RATE + 2 * RATE
    assert_continuous(out.samples)

    # The same as audiocraft's extend loop if its first lm.generate returned the prompt unchanged.
    request = Request(prompt="go on", input_audio=song, continuation=True, continuation_start=1, duration=2)
    ours, _ = generate.generate(request, predictor.runner.service.models, seed=2, input_audio=load_audio(song))
    model = predictor.runner.service.models.get("melody").model
    lm_generate = model.lm.generate

    def generate_nothing_when_full(prompt, conditions, max_gen_len, **kwargs):
        if prompt is not None and prompt.shape[-1] == max_gen_len:
            return prompt
        return lm_generate(prompt, conditions, max_gen_len=max_gen_len, **kwargs)

    monkeypatch.setattr(model.lm, "generate", generate_nothing_when_full)
    wav, _ = load_audio(song)
    window = convert(wav[:, 16000:], 16000, RATE, 1)
    generate.seed_everything(2)
    model.set_generation_params(duration=32, extend_stride=18)
    with torch.inference_mode():
        reference = model.generate_continuation(window[None], RATE, ["go on"])
    assert torch.equal(ours, reference[0])

    with pytest.raises(InputError) as error:  # one second more is refused
        predict(predictor, prompt="go on", input_audio=song, continuation=True, continuation_end=-1, duration=2)
    assert str(error.value) == (
        "the continuation window continuation_start=0 to continuation_end=end of file is 31.00 s long; "
        "it may be at most 30 s (the model's context)."
    )


# ---------------------------------------------------------------------------------------------
# 3. encode-decode


@pytest.mark.parametrize(("channels", "rate"), [(1, 48000), (2, 44100), (6, 22050)])
def test_encode_decode_keeps_channels_and_length(predictor, audio_dir, channels, rate):
    source = write_scale(audio_dir / f"ed-{channels}.wav", 1.5, rate=rate, channels=channels)
    out = predict(
        predictor, model_version="encode-decode", input_audio=source, seed=0, normalization_strategy="peak"
    )  # loudness of 6 channels (5.1, by BS.1770's weights): test_errors.py
    assert out.rate == RATE
    assert out.samples.shape == (round(1.5 * RATE), channels)
    assert out.metadata == {"model_version": "encode-decode", "seed": "0"}
    rms = np.sqrt((out.samples**2).mean(axis=0))
    assert (rms > 1e-3).all()
    if channels > 1:  # each channel went through the codec on its own: they are not copies
        assert not np.array_equal(out.samples[:, 0], out.samples[:, 1])


def test_long_files_go_through_the_codec_in_bounded_chunks(predictor, audio_dir, monkeypatch):
    source = write_scale(audio_dir / "ed-long.wav", 5.3, rate=RATE, channels=2)
    whole = predict(predictor, model_version="encode-decode", input_audio=source, normalization_strategy="clip")
    lengths = []
    process = generate.process_in_chunks

    def recording(signal, step, chunk, overlap):
        return process(signal, lambda piece: lengths.append(piece.shape[-1]) or step(piece), chunk, overlap)

    monkeypatch.setattr(generate, "CODEC_CHUNK", 3)  # seconds (10 in service), overlapping by 1 s
    monkeypatch.setattr(generate, "process_in_chunks", recording)
    chunked = predict(predictor, model_version="encode-decode", input_audio=source, normalization_strategy="clip")
    assert lengths == [3 * RATE, 3 * RATE, round(5.3 * RATE) - 4 * RATE] * 2  # at 0, 2 and 4 s; each channel
    assert chunked.samples.shape == whole.samples.shape == (round(5.3 * RATE), 2)
    assert_continuous(chunked.samples)
    start = slice(0, int(1.5 * RATE))  # before the first seam the chunk and the whole file agree
    assert np.abs(chunked.samples[start] - whole.samples[start]).max() < 0.01


def test_process_in_chunks_cross_fades_to_the_same_signal():
    signal = torch.randn(3, 1, 10_000)
    out = generate.process_in_chunks(signal, lambda piece: piece * 2, chunk=3000, overlap=500)
    assert torch.allclose(out, signal * 2, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# 4. Long pieces: windows of 30 s, 18 s apart


def test_long_text_is_windowed_to_the_exact_length(predictor):
    out = predict(
        predictor, model_version="large", prompt="ambient", duration=31, seed=3, normalization_strategy="peak"
    )
    assert out.frames == 31 * RATE
    assert_continuous(out.samples)


@pytest.mark.slow
def test_long_melody_tiles_the_melody_over_the_windows(predictor, melody, monkeypatch):
    lengths = []
    conditioner = predictor.runner.service.models.get("melody").model.lm.condition_provider.conditioners["self_wav"]
    compute = conditioner._compute_wav_embedding
    monkeypatch.setattr(
        conditioner, "_compute_wav_embedding", lambda wav, rate: lengths.append(wav.shape[-1]) or compute(wav, rate)
    )
    out = predict(predictor, prompt="jazz", input_audio=melody, duration=31, seed=3, normalization_strategy="peak")
    assert out.frames == 31 * RATE
    assert lengths == [30 * RATE, 30 * RATE]  # the 4 s melody repeated over each 30 s window
    assert_continuous(out.samples)


def test_long_continuation(predictor, audio_dir):
    song = write_scale(audio_dir / "song-5s.wav", 5.0)
    out = predict(
        predictor, prompt="go on", input_audio=song, continuation=True, continuation_start=2, duration=28, seed=3,
        normalization_strategy="peak",
    )  # fmt: skip
    assert out.frames == 3 * RATE + 28 * RATE  # 31 s in all: past one window
    assert_continuous(out.samples)


# ---------------------------------------------------------------------------------------------
# 5. MultiBand Diffusion


def test_mbd_is_loaded_on_first_use_then_kept(predictor):
    service = MusicGenService(
        LoadedModels(
            device="cpu",
            root=predictor.runner.service.models.root,
            resident=predictor.runner.service.models.resident,
        )
    )
    service.predict(Request(prompt="calm", duration=1, seed=1))
    assert service.models._mbd is None
    first = service.predict(Request(prompt="calm", duration=1, seed=1, multi_band_diffusion=True)).path.read_bytes()
    mbd = service.models._mbd
    assert mbd is not None
    second = service.predict(Request(prompt="calm", duration=1, seed=1, multi_band_diffusion=True)).path.read_bytes()
    assert service.models._mbd is mbd
    assert first == second  # loading it did not shift the random numbers of the first prediction
    folder = service.predict(Request(prompt="calm", duration=1, seed=2)).path.parent
    del service
    gc.collect()
    assert not folder.exists()  # the last output is removed with its service


def test_mbd_decodes_the_same_tokens_differently(predictor):
    encodec = predict(predictor, prompt="calm", duration=1, seed=7, normalization_strategy="peak")
    mbd = predict(
        predictor, prompt="calm", duration=1, seed=7, normalization_strategy="peak", multi_band_diffusion=True
    )
    assert mbd.samples.shape == encodec.samples.shape == (RATE, 1)
    assert not np.allclose(mbd.samples, encodec.samples, atol=0.01)
    assert mbd.metadata == encodec.metadata == {"model_version": "melody", "seed": "7"}


def test_mbd_continuation_decodes_the_prompt_too(predictor, audio_dir):
    song = write_scale(audio_dir / "song-2s.wav", 2.0, rate=RATE)
    kwargs = dict(
        prompt="go on", input_audio=song, continuation=True, duration=1, seed=2, normalization_strategy="peak"
    )
    encodec = predict(predictor, **kwargs)
    mbd = predict(predictor, multi_band_diffusion=True, **kwargs)
    assert mbd.frames == encodec.frames == 3 * RATE
    assert not np.allclose(mbd.samples[: 2 * RATE], encodec.samples[: 2 * RATE], atol=0.01)


def test_mbd_encode_decode_keeps_channels_and_length(predictor, audio_dir):
    source = write_scale(audio_dir / "ed-mbd.wav", 1.0, rate=44100, channels=2)
    kwargs = dict(model_version="encode-decode", input_audio=source, seed=3, normalization_strategy="peak")
    encodec = predict(predictor, **kwargs)
    mbd = predict(predictor, multi_band_diffusion=True, **kwargs)
    assert mbd.samples.shape == encodec.samples.shape == (RATE, 2)
    assert not np.allclose(mbd.samples, encodec.samples, atol=0.01)
    assert predict(predictor, multi_band_diffusion=True, **kwargs).data == mbd.data


# ---------------------------------------------------------------------------------------------
# 6. Normalization levels, 7. mp3


def test_each_normalization_strategy_sets_its_level(predictor):
    out = {
        strategy: predict(predictor, prompt="calm", duration=2, seed=9, normalization_strategy=strategy)
        for strategy in ("peak", "clip", "rms", "loudness")
    }
    for result in out.values():
        assert result.format == ("WAV", "PCM_16", RATE, 1)
    assert np.abs(out["peak"].samples).max() == pytest.approx(PEAK, abs=LSB)
    clip = out["clip"].samples
    assert np.abs(clip).max() <= PEAK + LSB
    # clip applies no gain: below the limit it is the peak-normalized audio scaled back
    gain = np.abs(out["peak"].samples).max() / np.abs(clip).max()
    assert np.abs(clip * gain - out["peak"].samples).max() < 3 * LSB * gain
    rms = out["rms"].samples
    assert np.sqrt((rms.mean(axis=1) ** 2).mean()) == pytest.approx(10 ** (-18 / 20), rel=1e-3)
    assert np.abs(rms).max() < 1  # no clipping was needed
    loudness = torchaudio.functional.loudness(torch.from_numpy(out["loudness"].samples.T), RATE).item()
    assert loudness == pytest.approx(-14, abs=0.05)
    assert np.abs(out["loudness"].samples).max() < 1


def test_loudness_of_audio_bs1770_gates_out_entirely_is_left_as_is():
    """A 2 Hz rumble: RMS above audiocraft's floor, yet no block above -70 LUFS (audiocraft asserts)."""
    t = torch.arange(10 * RATE) / RATE
    rumble = 0.01 * torch.sin(2 * math.pi * 2 * t)[None]
    assert math.isnan(torchaudio.functional.loudness(rumble, RATE).item())
    assert torch.equal(normalize(rumble, RATE, "loudness"), rumble)


def test_mp3_output_is_320_kbps_with_the_metadata(predictor):
    """Through the Predictor; the writer's own checks are in test_audio.py, and an mp3 replayed from
    its seed is byte-identical in test_same_inputs_and_seed_give_the_same_file_which_names_its_seed."""
    out = predict(predictor, prompt="calm", duration=2, seed=4, output_format="mp3")
    assert out.path.suffix == ".mp3" and out.data[:3] == b"ID3"
    with av.open(str(out.path)) as container:
        stream = container.streams.audio[0]
        assert (container.format.name, stream.codec_context.name) == ("mp3", "mp3float")
        assert (stream.bit_rate, stream.sample_rate, stream.channels) == (320000, RATE, 1)
        frames = sum(frame.samples for frame in container.decode(stream))
    assert frames == 2 * RATE  # LAME's gapless header trims priming and padding
    assert out.metadata == {"model_version": "melody", "seed": "4"}


# ---------------------------------------------------------------------------------------------
# 8. Seeds


@pytest.mark.parametrize(
    "inputs",
    [
        {"prompt": "jazz", "input_audio": "melody", "top_p": 0.9},
        {"model_version": "large", "prompt": "go on", "input_audio": "melody", "continuation": True},
        {"model_version": "encode-decode", "input_audio": "melody", "output_format": "mp3"},
    ],
    ids=["melody", "continuation", "encode-decode"],
)
def test_same_inputs_and_seed_give_the_same_file_which_names_its_seed(predictor, melody, inputs):
    inputs = {**inputs, "input_audio": melody, "duration": 1}
    first = predict(predictor, seed=123456789, **inputs)
    assert first.metadata == {"model_version": inputs.get("model_version", "melody"), "seed": "123456789"}
    replay = predict(predictor, seed=int(first.metadata["seed"]), model_version=first.metadata["model_version"],
                     **{k: v for k, v in inputs.items() if k != "model_version"})  # fmt: skip
    assert replay.data == first.data


def test_temperature_zero_is_greedy(predictor):
    greedy = [predict(predictor, prompt="calm", duration=1, seed=s, temperature=0).samples for s in (1, 2)]
    sampled = [predict(predictor, prompt="calm", duration=1, seed=s).samples for s in (1, 2)]
    assert np.array_equal(greedy[0], greedy[1])
    assert not np.array_equal(sampled[0], sampled[1])
