"""A cancel stops a prediction's thread at once, except inside the work that must not stop half-way
(loading a model): there it lands when that work ends, and the models stay whole."""

from __future__ import annotations

import threading
import time

import pytest

from musicgen import cancellation
from musicgen.errors import PredictionCancelled


def run_in_thread(work) -> tuple[threading.Thread, dict]:
    """Start `work(outcome)` in a thread; `outcome["error"]` is what stopped it, if anything."""
    outcome: dict = {"steps": 0, "inside": threading.Event()}

    def target():
        try:
            work(outcome)
        except BaseException as error:
            outcome["error"] = error

    thread = threading.Thread(target=target)
    thread.start()
    return thread, outcome


def busy(outcome: dict, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    outcome["inside"].set()
    while time.monotonic() < deadline:
        outcome["steps"] += 1
        time.sleep(0.001)


def test_a_cancel_lands_at_once_outside_uninterrupted_work():
    thread, outcome = run_in_thread(lambda outcome: busy(outcome, 10))
    assert outcome["inside"].wait(5)
    start = time.monotonic()
    cancellation.cancel(thread.ident)
    thread.join(5)
    cancellation.clear(thread.ident)
    assert isinstance(outcome.get("error"), PredictionCancelled)
    assert time.monotonic() - start < 5  # at once, not after the 10 s the work would take


def test_a_cancel_during_uninterrupted_work_lands_when_it_ends():
    def work(outcome):
        with cancellation.uninterrupted():
            busy(outcome, 0.5)
            outcome["finished"] = True

    thread, outcome = run_in_thread(work)
    assert outcome["inside"].wait(5)
    cancellation.cancel(thread.ident)
    thread.join(5)
    cancellation.clear(thread.ident)
    assert outcome.get("finished") and isinstance(outcome.get("error"), PredictionCancelled)


def test_uninterrupted_work_does_not_begin_after_a_cancel():
    def work(outcome):
        try:
            cancellation.cancel(threading.get_ident())
            time.sleep(1)  # the cancel lands here
        except PredictionCancelled:
            outcome["swallowed"] = True  # as a broad `except` on the way might
        with cancellation.uninterrupted():
            outcome["began"] = True

    thread, outcome = run_in_thread(work)
    thread.join(5)
    cancellation.clear(thread.ident)  # thread ids are reused: a flag left behind would stop a later thread
    assert outcome.get("swallowed") and "began" not in outcome
    assert isinstance(outcome.get("error"), PredictionCancelled)


def test_a_cancel_while_a_model_loads_leaves_it_loaded_whole(settings, monkeypatch):
    """The cancel arrives in the middle of loading melody-large on first use: the load finishes
    (model, decoder, size all recorded), then the prediction stops; the next one is served."""
    from musicgen.models import load

    models = load.load_models(settings, ("large",))
    real_assemble = load.assemble

    def assemble_cancelled(*args):
        cancellation.cancel(threading.get_ident())  # as the runtime's cancel would, mid-load
        return real_assemble(*args)

    monkeypatch.setattr(load, "assemble", assemble_cancelled)
    try:
        with pytest.raises(PredictionCancelled):
            models.generator("melody-large")
    finally:
        cancellation.clear(threading.get_ident())
    assert "melody-large" in models.generators and "melody-large" in models.decoders
    assert models.memory_report()["lm:melody-large"] > 0
    monkeypatch.setattr(load, "assemble", real_assemble)
    assert models.generator("melody-large") is models.generators["melody-large"]


def test_a_job_is_not_stopped_by_a_cancel_left_for_its_thread():
    """Thread ids are reused: a cancel meant for an earlier job (or thread) never stops the next one."""
    import contextvars

    from musicgen.runner import _Job

    def load_twice(request):
        with cancellation.uninterrupted():  # as loading a model on first use
            return request * 2

    def work(outcome):
        try:
            cancellation.cancel(threading.get_ident())
            time.sleep(1)
        except PredictionCancelled:
            pass  # the flag stays, as a dead thread with this id might have left it
        outcome["result"] = _Job(load_twice, 21, contextvars.copy_context(), None).run()

    thread, outcome = run_in_thread(work)
    thread.join(5)
    cancellation.clear(thread.ident)
    assert outcome.get("result") == 42, outcome.get("error")
