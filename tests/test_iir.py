"""musicgen.audio.iir: the vectorised IIR core gives torchaudio's results, and loudness gets fast on CPU."""

import time

import numpy as np
import pytest
import scipy.signal
import torch
import torchaudio
import torchaudio.functional.filtering as filtering

from musicgen.audio import iir, levels

pytestmark = pytest.mark.skipif(
    filtering._IS_TORCHAUDIO_EXT_AVAILABLE, reason="torchaudio's compiled IIR loop is present: nothing is replaced"
)


def run_core(core, signal: torch.Tensor, a_coeffs: torch.Tensor) -> torch.Tensor:
    """Call an `_lfilter_core_loop` implementation as torchaudio's DifferentiableIIR does."""
    order = a_coeffs.shape[1]
    padded = torch.zeros(*signal.shape[:2], signal.shape[2] + order - 1, dtype=signal.dtype)
    core(signal.clone(), (a_coeffs / a_coeffs[:, :1]).flip(1).contiguous(), padded)
    return padded[..., order - 1 :]


def stable_denominators(channels: int, sections: int, generator: torch.Generator) -> torch.Tensor:
    """[channels, 2 * sections + 1] denominators: products of biquads with poles at radius 0.5 to 0.999."""
    rows = []
    for _ in range(channels):
        row = torch.ones(1, dtype=torch.float64)
        for _ in range(sections):
            radius = 0.5 + 0.499 * torch.rand(1, generator=generator, dtype=torch.float64)
            angle = torch.pi * torch.rand(1, generator=generator, dtype=torch.float64)
            biquad = torch.tensor([1.0, -2 * radius * torch.cos(angle), radius**2], dtype=torch.float64)
            row = torch.from_numpy(np.convolve(row.numpy(), biquad.numpy()))
        rows.append(row * (0.5 + torch.rand(1, generator=generator, dtype=torch.float64)))  # a0 != 1
    return torch.stack(rows)


@pytest.mark.parametrize("sections", [1, 2])
def test_lfilter_core_matches_torchaudios_generic_loop(sections):
    generator = torch.Generator().manual_seed(sections)
    a_coeffs = stable_denominators(3, sections, generator)
    signal = torch.randn(2, 3, 4000, generator=generator, dtype=torch.float64)
    expected = run_core(filtering._lfilter_core_generic_loop, signal, a_coeffs)
    assert torch.allclose(run_core(iir.lfilter_core, signal, a_coeffs), expected, rtol=1e-9, atol=1e-12)
    # float32, as audio arrives: ours sums in float64, so it differs from the float32 loop by rounding only
    expected32 = run_core(filtering._lfilter_core_generic_loop, signal.float(), a_coeffs.float())
    actual32 = run_core(iir.lfilter_core, signal.float(), a_coeffs.float())
    assert actual32.dtype == torch.float32
    assert torch.allclose(actual32, expected32, rtol=1e-4, atol=1e-5)
    exact = run_core(filtering._lfilter_core_generic_loop, signal.float().double(), a_coeffs.float().double())
    assert (actual32.double() - exact).abs().max() <= (expected32.double() - exact).abs().max()  # no less exact


def test_lfilter_core_in_pieces_is_one_scipy_pass_bit_for_bit():
    """Past PIECE samples the recursion runs piece by piece with its state carried over: the same
    float64 numbers as one scipy.signal.lfilter pass over the whole signal."""
    generator = torch.Generator().manual_seed(7)
    a_coeffs = stable_denominators(2, 2, generator)
    signal = torch.randn(1, 2, 2 * iir.PIECE + 3, generator=generator, dtype=torch.float64)
    whole = np.stack(
        [scipy.signal.lfilter([1.0], (a / a[0]).numpy(), signal[0, c].numpy()) for c, a in enumerate(a_coeffs)]
    )
    assert torch.equal(run_core(iir.lfilter_core, signal, a_coeffs)[0], torch.from_numpy(whole))


def test_lfilter_core_leaves_its_input_alone():
    signal = torch.randn(1, 1, 100)
    before = signal.clone()
    run_core(iir.lfilter_core, signal, torch.tensor([[1.0, -0.5, 0.1]]))
    assert torch.equal(signal, before)


def test_loudness_numbers_are_unchanged(monkeypatch):
    generator = torch.Generator().manual_seed(0)
    wav = torch.randn(2, 32000, generator=generator) * torch.linspace(0.01, 0.3, 32000)
    monkeypatch.setattr(filtering, "_lfilter_core_loop", filtering._lfilter_core_generic_loop)
    reference = torchaudio.functional.loudness(wav, 32000).item()
    reference_normalized = levels.normalize_audio(wav.clone(), strategy="loudness", sample_rate=32000)
    assert iir.install()
    assert filtering._lfilter_core_loop is iir.lfilter_core
    assert torchaudio.functional.loudness(wav, 32000).item() == pytest.approx(reference, abs=1e-4)
    assert torch.allclose(levels.normalize(wav, 32000, "loudness"), reference_normalized, atol=1e-6)


def test_normalize_installs_it_and_thirty_seconds_of_stereo_take_well_under_a_second_per_second():
    """Measured on the 2-core CPU machine: 41.5 s before (torchaudio's Python loop), 0.7 s after."""
    wav = torch.randn(2, 30 * 32000, generator=torch.Generator().manual_seed(0)) * 0.1
    start = time.perf_counter()
    out = levels.normalize(wav, 32000, "loudness")
    elapsed = time.perf_counter() - start
    assert filtering._lfilter_core_loop is iir.lfilter_core
    assert torchaudio.functional.loudness(out, 32000).item() == pytest.approx(-14, abs=0.05)
    assert elapsed < 15, f"loudness normalization of 30 s took {elapsed:.1f} s"


@pytest.mark.parametrize("length", [5, iir.PIECE - 1, 2 * iir.PIECE + 3])
def test_lfilter_in_pieces_gives_torchaudios_one_pass_bit_for_bit(length):
    """The BS.1770 biquads over pieces (the FIR part with the samples before each, the IIR part with
    its state) equal torchaudio's one pass exactly, whatever the length against the piece size."""
    generator = torch.Generator().manual_seed(length)
    signal = torch.rand(2, 3, length, generator=generator) - 0.5
    a_coeffs = torch.tensor([[1.0, -1.6, 0.7], [1.0, -1.9, 0.91], [2.0, -0.5, 0.1]])
    b_coeffs = torch.tensor([[0.2, 0.3, 0.1], [1.0, -2.0, 1.0], [0.5, 0.25, -0.1]])
    whole = iir._torchaudio_lfilter(signal, a_coeffs, b_coeffs)
    assert torch.equal(iir.lfilter_in_pieces(signal, a_coeffs, b_coeffs), whole)
