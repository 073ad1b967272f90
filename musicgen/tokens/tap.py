"""The piece's tokens as the token loop makes them: the frames whose every codebook is sampled.

The loop (loops.FastLoop) tells the tap when a window starts (its WindowState and
where it sits in the piece) and after every step; the chunk writer (musicgen.streaming.chunks)
reads the frames that are complete, in its own thread. A step costs the loop one put on a C queue,
so the tap never slows it (nor can a cancel landing there leave a lock taken). Frames never
change once complete: a window past 30 s re-reads the last 12 s of the one before as its prompt,
the same tokens.

Coordinates: piece frame p is the p-th token frame of the output (a continuation's prompt window,
and its head when the window filled the context, come first); a window's frame f is piece frame
offset + f.
"""

from __future__ import annotations

import queue
import threading

import torch

from musicgen.tokens.loop import UNKNOWN_TOKEN, WindowState


class _Window:
    """A started window: its state, where it sits in the piece, and how many of its frames are done."""

    def __init__(self, state: WindowState, offset: int):
        self.state, self.offset = state, offset
        # complete_after[t]: the last pattern step that writes a code of frame t (a frame is complete
        # once the loop's next step is past it); kept non-decreasing, so done() is a search
        last = [0] * state.max_gen_len
        for step, coordinates in enumerate(state.pattern.layout):
            for coordinate in coordinates:
                if coordinate.t < state.max_gen_len:
                    last[coordinate.t] = max(last[coordinate.t], step)
        self.complete_after = torch.tensor(last).cummax(dim=0).values

    def done(self) -> int:
        """Frames of this window complete so far (the loop's next step is state.offset)."""
        return int(torch.searchsorted(self.complete_after, self.state.offset, right=False))

    def frames(self, start: int, end: int) -> torch.Tensor:
        """This window's frames start..end-1 (complete ones only): [B, K, end - start]."""
        codes, _, _ = self.state.pattern.revert_pattern_sequence(self.state.sequence, special_token=UNKNOWN_TOKEN)
        frames = codes[..., start:end]
        assert not (frames == UNKNOWN_TOKEN).any(), "asked for frames not yet complete"
        return frames


class PieceTap:
    """Fed by the token loop (window(), step(), finish()); read by one consumer thread (ready(), frames())."""

    def __init__(self, head: torch.Tensor | None = None, prompt: torch.Tensor | None = None):
        """head: [1, K, h] frames the piece starts with that the LM no longer sees (a continuation of
        a whole 30 s window); prompt: [1, K, p] the LM's prompt, its windows' frames 0..p-1. Both are
        complete from the start; the LM's frame f is piece frame h + f."""
        parts = [part for part in (head, prompt) if part is not None and part.shape[-1]]
        self._known = torch.cat(parts, dim=-1) if parts else None
        self._head = 0 if head is None else head.shape[-1]
        self.changed: queue.SimpleQueue = queue.SimpleQueue()  # one None per change: the consumer waits on it
        self._windows: list[_Window] = []
        self._whole: torch.Tensor | None = None  # the whole piece's tokens, once the loop is done
        self._lock = threading.Lock()  # guards _windows between the loop's thread and the consumer's

    # ------------------------------------------------------------------ the loop's side

    def window(self, state: WindowState, offset: int) -> None:
        """A window's prefill is done: its frame f is the LM's frame offset + f."""
        window = _Window(state, self._head + offset)
        with self._lock:
            self._windows.append(window)
        self.changed.put(None)

    def step(self) -> None:
        self.changed.put(None)

    def finish(self, tokens: torch.Tensor) -> None:
        """The whole piece's tokens [1, K, T] (every frame, whatever loop made them)."""
        self._whole = tokens
        self.changed.put(None)

    # ------------------------------------------------------------------ the consumer's side

    @property
    def finished(self) -> bool:
        return self._whole is not None

    def ready(self) -> int:
        """Piece frames complete so far (all of them once the loop is done)."""
        if self._whole is not None:
            return self._whole.shape[-1]
        with self._lock:
            windows = list(self._windows)
        return max([self._known_frames] + [window.offset + window.done() for window in windows])

    def frames(self, start: int, end: int) -> torch.Tensor:
        """Piece frames start..end-1 (all complete): [1, K, end - start]."""
        if self._whole is not None:
            return self._whole[..., start:end]
        with self._lock:
            windows = list(self._windows)
        pieces, at = [], start
        while at < end:
            if at < self._known_frames:
                stop = min(end, self._known_frames)
                pieces.append(self._known[..., at:stop])
            else:  # the latest window holding the frame (an earlier one that holds it agrees)
                window = next((w for w in reversed(windows) if w.offset <= at < w.offset + w.state.max_gen_len), None)
                if window is None:
                    raise ValueError(f"piece frame {at} is in no window yet")
                stop = min(end, window.offset + window.state.max_gen_len)
                pieces.append(window.frames(at - window.offset, stop - window.offset))
            at = stop
        return torch.cat(pieces, dim=-1)

    @property
    def _known_frames(self) -> int:
        return 0 if self._known is None else self._known.shape[-1]
