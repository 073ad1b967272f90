"""A vectorised IIR core for torchaudio's lfilter where its compiled extension is missing (CPU set-up).

On CPU machines torchaudio's compiled extensions are removed (docs/stack.md, "Why the CPU and GPU pins
differ"), so `torchaudio.functional.filtering` runs the recursive part of every IIR filter in
`_lfilter_core_generic_loop`: one Python iteration per sample, ~1.5 s per second of stereo audio
for the two biquads of BS.1770 loudness (audiocraft's default normalization). `install()` swaps in
`lfilter_core`, the same difference equation evaluated by scipy.signal.lfilter (C), in float64.
Semantics are unchanged: zero initial state, output written into the same padded buffer. And
`_lfilter` itself becomes `lfilter_in_pieces`: the same operations on pieces of the signal, so the
memory of BS.1770 loudness does not grow with the length of a long encode-decode output. Where
the extension is present (the GPU image) nothing is replaced.
"""

from __future__ import annotations

import numpy as np
import scipy.signal
import torch
import torchaudio.functional.filtering as filtering

PIECE = 1 << 20  # samples per scipy call


def lfilter_core(
    input_signal_windows: torch.Tensor, a_coeffs_flipped: torch.Tensor, padded_output: torch.Tensor
) -> None:
    """The contract of torchaudio's `_lfilter_core_loop`, on whole signals (in pieces of PIECE samples).

    input_signal_windows: [B, C, T], the FIR part already applied. a_coeffs_flipped: [C, N], each
    row a normalised denominator reversed (a0 = 1 last). padded_output: [B, C, T + N - 1] zeros;
    y[n] = x[n] - sum_{k=1}^{N-1} a_k y[n-k] is written into its last T samples, per channel.
    Tensors off the CPU go to the original loop.
    """
    if input_signal_windows.device.type != "cpu":
        filtering._lfilter_core_generic_loop(input_signal_windows, a_coeffs_flipped, padded_output)
        return
    order = a_coeffs_flipped.shape[1]
    denominators = a_coeffs_flipped.detach().double().flip(1).numpy()  # [C, N]: a0, a1, ...
    states = np.zeros((*input_signal_windows.shape[:2], order - 1))
    for start in range(0, input_signal_windows.shape[-1], PIECE):
        out = padded_output[..., order - 1 + start : order - 1 + start + PIECE]
        _recursive_part(input_signal_windows[..., start : start + PIECE].detach(), denominators, states, out)


def _recursive_part(signal: torch.Tensor, denominators: np.ndarray, states: np.ndarray, out: torch.Tensor) -> None:
    """y[n] = x[n] - sum_{k>=1} a_k y[n-k] of one piece [B, C, L] into `out`, row by row through
    scipy.signal.lfilter in float64, starting from `states` [B, C, N-1] and leaving them at the
    piece's end: consecutive pieces give what one pass gives."""
    for batch in range(signal.shape[0]):
        for channel, denominator in enumerate(denominators):
            row = signal[batch, channel].double().numpy()
            filtered, states[batch, channel] = scipy.signal.lfilter([1.0], denominator, row, zi=states[batch, channel])
            out[batch, channel] = torch.from_numpy(filtered)


def lfilter_in_pieces(waveform: torch.Tensor, a_coeffs: torch.Tensor, b_coeffs: torch.Tensor) -> torch.Tensor:
    """torchaudio's `_lfilter` ([B, C, T], FIR then IIR, C filters) in pieces of PIECE samples: the
    FIR part given the samples before each piece, the IIR part its state, so every sample goes
    through the same operations as in one pass (tested equal), in memory that does not grow with
    the length (one pass over 17 minutes of stereo took 5 GB: the grouped convolution's buffers)."""
    if waveform.device.type != "cpu" or waveform.requires_grad:
        return _torchaudio_lfilter(waveform, a_coeffs, b_coeffs)
    b_flipped = (b_coeffs / a_coeffs[:, 0:1]).flip(1).contiguous().unsqueeze(1)  # as DifferentiableFIR
    denominators = (a_coeffs / a_coeffs[:, 0:1]).detach().double().numpy()  # a0 = 1, a1, ...
    order, channels, length = b_flipped.shape[-1], waveform.shape[1], waveform.shape[-1]
    out = torch.empty_like(waveform)
    states = np.zeros((waveform.shape[0], channels, order - 1))
    for start in range(0, length, PIECE):
        before = min(start, order - 1)
        piece = waveform[..., start - before : start + PIECE]
        fir = torch.nn.functional.conv1d(
            torch.nn.functional.pad(piece, (order - 1 - before, 0)), b_flipped, groups=channels
        )
        _recursive_part(fir, denominators, states, out[..., start : start + PIECE])
    return out


_torchaudio_lfilter = filtering._lfilter


def install() -> bool:
    """Use `lfilter_core` and `lfilter_in_pieces` when torchaudio has no compiled IIR loop; True
    when they are in use. Idempotent."""
    if filtering._IS_TORCHAUDIO_EXT_AVAILABLE:
        return False
    filtering._lfilter_core_loop = lfilter_core
    filtering._lfilter = lfilter_in_pieces
    return True
