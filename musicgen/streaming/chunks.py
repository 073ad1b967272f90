"""Audio as its tokens arrive: a thread that decodes each new span of the piece and writes it as a file.

The token loop hands its tokens out as they are made (musicgen.streaming.tap); this thread wakes
on each step, and once a chunk's frames (and a little after them) are complete it decodes them
with the model's EnCodec, with context on both sides so that the chunk is the same span of the
whole decode (the decoder's LSTM needs the frames before, its convolutions a few after), writes
it as a complete file in the requested format holding only audio not sent before, and hands the
file on. The chunks follow CHUNK_FRAMES: the first early, the later ones longer.

Each chunk is the decoder's own output, clamped as normalization_strategy=clip does (no gain):
the requested normalization needs the whole piece, so it applies to the final file only.
Concatenating the chunks gives the whole decode, up to that one gain (and the decode's own
rounding across a chunk's context: docs/streaming.md has the figures).
"""

from __future__ import annotations

import contextvars
import logging
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch

from musicgen.audio import levels
from musicgen.tokens.tap import PieceTap

log = logging.getLogger(__name__)

CHUNK_FRAMES = (75, 150, 150, 250)  # 1.5 s first (it comes early), 3 s twice, then 5 s chunks
LEFT_CONTEXT = 50  # frames decoded before a chunk (1 s): the decoder's LSTM state settles
RIGHT_CONTEXT = 5  # frames decoded after it (0.1 s): the decoder's convolutions look that far ahead
POLL_SECONDS = 0.05  # the thread checks its stop flag this often


def chunk_frames(index: int) -> int:
    """Frames of chunk `index` (0-based)."""
    return CHUNK_FRAMES[min(index, len(CHUNK_FRAMES) - 1)]


def decode_span(model, tap: PieceTap, start: int, end: int, available: int) -> torch.Tensor:
    """Piece frames start..end-1 as audio [C, (end - start) * hop], decoded with up to
    LEFT_CONTEXT frames before and RIGHT_CONTEXT after (of the `available` complete frames)."""
    first, last = max(0, start - LEFT_CONTEXT), min(available, end + RIGHT_CONTEXT)
    hop = round(model.sample_rate / model.frame_rate)  # samples per token frame (640 at 32 kHz)
    wav = model.generate_audio(tap.frames(first, last))[0]
    return wav[..., (start - first) * hop : (end - first) * hop]


class ChunkWriter:
    """Decodes and writes the piece's chunks in a thread of its own while the loop runs.

    write(wav [C, T], sample_rate, index) -> the chunk's file; deliver(path) hands it on. start() once the model is known, finish(tokens) when the loop is done (the rest is
    written, the thread ends; its error, if any, is raised), close() in every case (stops it)."""

    def __init__(self, model, tap: PieceTap, write: Callable[[torch.Tensor, int, int], Path], deliver):
        self.model, self.tap, self._write, self._deliver = model, tap, write, deliver
        self.written = 0  # piece frames already sent
        self.chunks = 0
        self._stop = False
        self._error: BaseException | None = None
        context = contextvars.copy_context()  # the prediction's: Cog routes its log lines by it
        self._thread = threading.Thread(target=context.run, args=(self._run,), name="musicgen-stream", daemon=True)

    def start(self) -> ChunkWriter:
        self._thread.start()
        return self

    def finish(self, tokens: torch.Tensor) -> None:
        """The whole piece's tokens: write what is left, wait for the thread, raise its error."""
        self.tap.finish(tokens)
        while self._thread.is_alive():
            self._thread.join(POLL_SECONDS)  # returns to Python: a cancel of this prediction lands here
        if self._error is not None:
            raise self._error

    def close(self) -> None:
        """Stop the thread (after the chunk it is writing) and wait for it: nothing is written after."""
        self._stop = True
        self.tap.changed.put(None)
        while self._thread.is_alive():
            self._thread.join(POLL_SECONDS)

    def _run(self) -> None:
        try:
            with torch.inference_mode():
                while not self._stop:
                    try:
                        self.tap.changed.get(timeout=POLL_SECONDS)
                    except queue.Empty:
                        continue
                    finished = self.tap.finished  # read before ready(): no frame comes after it
                    available = self.tap.ready()
                    while not self._stop and self._due(available, finished):
                        self._emit(available)
                    if finished and self.written >= available:
                        return
        except BaseException as error:  # noqa: BLE001 (raised in the prediction's thread by finish())
            log.warning("streaming stopped: %s", error)
            self._error = error

    def _due(self, available: int, finished: bool) -> bool:
        """Whether the next chunk can be written: its frames and RIGHT_CONTEXT after them are
        complete, or the piece is done (then whatever is left goes)."""
        if finished:
            return self.written < available
        return self.written + chunk_frames(self.chunks) + RIGHT_CONTEXT <= available

    def _emit(self, available: int) -> None:
        start = self.written
        end = min(available, start + chunk_frames(self.chunks))
        began = time.perf_counter()
        wav = decode_span(self.model, self.tap, start, end, available)
        wav = levels.normalize(wav.float().cpu(), self.model.sample_rate, "clip")
        path = self._write(wav, self.model.sample_rate, self.chunks)
        self.written, self.chunks = end, self.chunks + 1
        rate = self.model.frame_rate
        log.info(
            "chunk %d: %.2f s of audio (to %.2f s), decoded and written in %.2f s",
            self.chunks,
            (end - start) / rate,
            end / rate,
            time.perf_counter() - began,
        )
        self._deliver(path)


class Stream:
    """What a streaming prediction asks of its generation: each new span of the piece as a file,
    handed to `deliver` as it is written. The mode's tokens call begin() (the model known, the
    tap the loop feeds), end() when they are done, close() in every case."""

    def __init__(self, write: Callable[[torch.Tensor, int, int], Path], deliver: Callable[[Path], None]):
        self._write, self._deliver = write, deliver
        self._writer: ChunkWriter | None = None

    def begin(self, model, head: torch.Tensor | None, prompt: torch.Tensor | None) -> PieceTap:
        """Start writing chunks of a piece that starts with `head` and `prompt` (frames known now)."""
        tap = PieceTap(head, prompt)
        self._writer = ChunkWriter(model, tap, self._write, self._deliver).start()
        return tap

    def end(self, tokens: torch.Tensor) -> None:
        """The whole piece's tokens: the chunks not yet written are written, in order."""
        self._writer.finish(tokens)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
