"""A vectorised IIR core for torchaudio's lfilter where its compiled extension is missing (CPU set-up).

On CPU machines torchaudio's compiled extensions are removed (docs/stack.md, "Why the CPU and GPU pins
differ"), so `torchaudio.functional.filtering` runs the recursive part of every IIR filter in
`_lfilter_core_generic_loop`: one Python iteration per sample, ~1.5 s per second of stereo audio
for the two biquads of BS.1770 loudness (audiocraft's default normalization). `install()` swaps in
`lfilter_core`, the same difference equation evaluated by scipy.signal.lfilter (C), in float64.
Semantics are unchanged: zero initial state, output written into the same padded buffer. Where the
extension is present (the GPU image) nothing is replaced.
"""

from __future__ import annotations

import numpy as np
import scipy.signal
import torch
import torchaudio.functional.filtering as filtering


def lfilter_core(
    input_signal_windows: torch.Tensor, a_coeffs_flipped: torch.Tensor, padded_output: torch.Tensor
) -> None:
    """The contract of torchaudio's `_lfilter_core_loop`, on whole signals at once.

    input_signal_windows: [B, C, T], the FIR part already applied. a_coeffs_flipped: [C, N], each
    row a normalised denominator reversed (a0 = 1 last). padded_output: [B, C, T + N - 1] zeros;
    y[n] = x[n] - sum_{k=1}^{N-1} a_k y[n-k] is written into its last T samples, per channel.
    Tensors off the CPU go to the original loop.
    """
    if input_signal_windows.device.type != "cpu":
        filtering._lfilter_core_generic_loop(input_signal_windows, a_coeffs_flipped, padded_output)
        return
    order = a_coeffs_flipped.shape[1]
    signal = input_signal_windows.detach().double().numpy()
    denominators = a_coeffs_flipped.detach().double().flip(1).numpy()  # [C, N]: a0, a1, ...
    filtered = np.empty_like(signal)
    for channel, denominator in enumerate(denominators):
        filtered[:, channel] = scipy.signal.lfilter([1.0], denominator, signal[:, channel], axis=-1)
    padded_output[:, :, order - 1 :] = torch.from_numpy(filtered).to(padded_output.dtype)


def install() -> bool:
    """Use `lfilter_core` when torchaudio has no compiled IIR loop; True when it is in use. Idempotent."""
    if filtering._IS_TORCHAUDIO_EXT_AVAILABLE:
        return False
    filtering._lfilter_core_loop = lfilter_core
    return True
