"""Channel positions by ffmpeg's channel names: ITU-R BS.1770-4 loudness weights and ffmpeg's default layouts."""

from __future__ import annotations

from collections.abc import Sequence

# Names are ffmpeg's (av_channel_name), as PyAV reports them: [ch.name for ch in frame.layout.channels].
# 5.1 is FL FR FC LFE BL BR, 5.1(side) FL FR FC LFE SL SR, 7.1 FL FR FC LFE BL BR SL SR.
UNNAMED = "NONE"  # every channel of a layout that names no positions ("6 channels": a plain multichannel WAV)

# ffmpeg's av_channel_layout_default: the layout it assumes for N channels whose positions are not
# named (checked against PyAV's av.AudioLayout(f"{N}c") in tests/test_audio.py).
DEFAULT_LAYOUTS = {
    1: ("FC",),  # mono
    2: ("FL", "FR"),  # stereo
    3: ("FL", "FR", "LFE"),  # 2.1
    4: ("FL", "FR", "FC", "BC"),  # 4.0
    5: ("FL", "FR", "FC", "BL", "BR"),  # 5.0
    6: ("FL", "FR", "FC", "LFE", "BL", "BR"),  # 5.1
    7: ("FL", "FR", "FC", "LFE", "BC", "SL", "SR"),  # 6.1
    8: ("FL", "FR", "FC", "LFE", "BL", "BR", "SL", "SR"),  # 7.1
}

# BS.1770-4, Table 4: weight 1.41 (+1.5 dB) for a loudspeaker at elevation < 30 degrees and
# 60 <= |azimuth| <= 120 degrees, 1.0 for every other position; LFE channels are not measured.
SURROUND_WEIGHT = 1.41
OTHER_WEIGHT = 1.0
LFE_WEIGHT = 0.0  # excluded from the measurement
# Channels whose position, hence weight, does not depend on the rest of the layout. Azimuths are
# BS.2051's / the usual ones for ffmpeg's names; elevation 0 unless stated.
FIXED_WEIGHTS = {
    "FL": OTHER_WEIGHT, "FR": OTHER_WEIGHT,  # front left/right, +-30
    "FC": OTHER_WEIGHT,  # front centre, 0
    "FLC": OTHER_WEIGHT, "FRC": OTHER_WEIGHT,  # left/right of centre, +-15 to +-22.5
    "BC": OTHER_WEIGHT,  # back centre, 180
    "SL": SURROUND_WEIGHT, "SR": SURROUND_WEIGHT,  # side left/right, +-90 (the surrounds of 5.1(side), 7.1)
    "SSL": SURROUND_WEIGHT, "SSR": SURROUND_WEIGHT,  # side surround left/right, +-90
    # Surround direct left/right (DTS-HD Lsd/Rsd): direct speakers at the listener's sides, +-90.
    "SDL": SURROUND_WEIGHT, "SDR": SURROUND_WEIGHT,
    # Wide left/right (Dolby Atmos Lw/Rw): +-60, the edge of the 60-120 band, which includes it.
    "WL": SURROUND_WEIGHT, "WR": SURROUND_WEIGHT,
    # Height channels: elevation 30 to 90 (BS.2051's upper layer and the top), never under 30.
    "TFL": OTHER_WEIGHT, "TFC": OTHER_WEIGHT, "TFR": OTHER_WEIGHT,
    "TSL": OTHER_WEIGHT, "TSR": OTHER_WEIGHT, "TTL": OTHER_WEIGHT, "TTR": OTHER_WEIGHT,
    "TBL": OTHER_WEIGHT, "TBC": OTHER_WEIGHT, "TBR": OTHER_WEIGHT, "TC": OTHER_WEIGHT,
    "BFL": OTHER_WEIGHT, "BFC": OTHER_WEIGHT, "BFR": OTHER_WEIGHT,  # bottom front: 0 and +-45, below ear level
    "LFE": LFE_WEIGHT, "LFE2": LFE_WEIGHT,
}  # fmt: skip
# Back left/right: the ITU 5.1 surrounds at +-110 (1.41) when nothing else is at the sides, as in
# 5.1 and quad; the rear pair at +-135 to +-150 (1.0) beside side channels, as in 7.1.
BACK_CHANNELS = ("BL", "BR")
SIDE_CHANNELS = frozenset({"SL", "SR", "SSL", "SSR", "SDL", "SDR"})
# Everything else has no loudspeaker position BS.1770 could weigh: NONE (unnamed), UNK, UNSD,
# USR<n> (user-defined), AMBI<n> (ambisonic components), DL/DR (a stereo downmix), BIL/BIR (binaural).


def default_layout(channel_count: int) -> tuple[str, ...]:
    """The channel names ffmpeg assumes for `channel_count` channels whose positions are not named
    (1: mono FC, 2: stereo, 6: 5.1 FL FR FC LFE BL BR, ...); UNNAMED for each channel of a count
    without a standard layout (9, 11, ...), as ffmpeg leaves those."""
    return DEFAULT_LAYOUTS.get(channel_count, (UNNAMED,) * channel_count)


def with_default_positions(names: Sequence[str]) -> tuple[str, ...]:
    """`names`, or default_layout(len(names)) when the layout names no position at all."""
    names = tuple(names)
    return default_layout(len(names)) if all(name == UNNAMED for name in names) else names


def undefined_for_loudness(names: Sequence[str]) -> list[str]:
    """The channels of `names` (in order, each once) that BS.1770 gives no weight: no position."""
    return list(dict.fromkeys(name for name in names if name not in FIXED_WEIGHTS and name not in BACK_CHANNELS))


def bs1770_weights(names: Sequence[str]) -> tuple[float, ...]:
    """The BS.1770-4 weight of each channel of a layout, by ffmpeg name: 1.41 for surrounds,
    1.0 for others, 0.0 for LFE (not measured). Raises ValueError naming the undefined channels."""
    undefined = undefined_for_loudness(names)
    if undefined:
        raise ValueError(
            f"ITU-R BS.1770 loudness is not defined for channel(s) {' '.join(undefined)} "
            f"(layout {' '.join(names)}): they have no loudspeaker position"
        )
    back = OTHER_WEIGHT if SIDE_CHANNELS.intersection(names) else SURROUND_WEIGHT
    return tuple(back if name in BACK_CHANNELS else FIXED_WEIGHTS[name] for name in names)
