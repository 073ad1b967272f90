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


def cancelled_once_inside(work) -> dict:
    """Run `work(outcome)` in a thread, cancel it once it has set outcome["inside"], wait for it to
    end: its outcome."""
    thread, outcome = run_in_thread(work)
    assert outcome["inside"].wait(5)
    cancellation.cancel(thread.ident)
    thread.join(5)
    cancellation.clear(thread.ident)
    return outcome


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

    outcome = cancelled_once_inside(work)
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
            models.get("melody-large")
    finally:
        cancellation.clear(threading.get_ident())
    served = models.resident["melody-large"]  # the model and its token loop, both recorded
    assert served.model is not None and served.loop is not None
    assert models.memory_report()["lm:melody-large"] > 0
    monkeypatch.setattr(load, "assemble", real_assemble)
    assert models.get("melody-large").model is models.models["melody-large"]


def test_a_job_is_not_stopped_by_a_cancel_left_for_its_thread():
    """Thread ids are reused: a cancel meant for an earlier job (or thread) never stops the next one."""
    import contextvars

    from musicgen.serving.workers import _Job

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


# --------------------------------------------------------------------------------------------
# Every lock a prediction's thread takes: a cancel landing anywhere leaves it free


def cancel_at_random_moments(work, rounds: int, latest: float, seed: int = 0) -> int:
    """Run `work()` in a new thread `rounds` times, each cancelled after a random delay of up to
    `latest` seconds (a real cancel, landing wherever that thread is); return how many cancels
    landed (the others came after the work was done)."""
    import random

    chooser = random.Random(seed)
    landed = 0
    for _ in range(rounds):
        thread, outcome = run_in_thread(lambda outcome: work())
        time.sleep(chooser.uniform(0, latest))
        cancellation.cancel(thread.ident)
        thread.join(10)
        assert not thread.is_alive(), "a cancelled thread hung"
        cancellation.clear(thread.ident)
        error = outcome.get("error")
        assert error is None or isinstance(error, PredictionCancelled), repr(error)
        landed += error is not None
    return landed


def is_free(lock) -> bool:
    """Whether another thread can take `lock` (a Lock, an RLock or a Condition) within a second."""
    taken = {}

    def take():
        taken["yes"] = lock.acquire(timeout=1)
        if taken["yes"]:
            lock.release()

    other = threading.Thread(target=take)
    other.start()
    other.join(5)
    return taken.get("yes", False)


def test_a_cancel_as_a_waiter_takes_the_turn_leaves_the_turn_free():
    """The jam of issue 32, in process: A holds the turn, B waits for it, B's cancel lands as A
    hands it over (B's acquire succeeding). Before the fix the turn stayed taken, recorded as
    B's, and every later prediction waited for ever. Swept over the moment of the cancel."""
    from musicgen.tokens.turn import Turn, Watch

    turn = Turn(Watch(limit=60))
    for round_ in range(60):
        handed_over = threading.Event()
        holder, _ = run_in_thread(lambda outcome, handed_over=handed_over: turn.run(lambda: handed_over.wait(5), "A"))
        time.sleep(0.01)
        waiter, outcome = run_in_thread(lambda outcome: turn.run(lambda: outcome.setdefault("ran", True), "B"))
        time.sleep(0.06)  # B polls for the turn
        cancellation.cancel(waiter.ident)
        time.sleep(round_ * 0.0002)  # the cancel lands around the hand-over, earlier or later each round
        handed_over.set()
        holder.join(5)
        waiter.join(5)
        cancellation.clear(waiter.ident)
        assert not waiter.is_alive() and is_free(turn._lock), f"round {round_}: the turn was left taken"
        assert isinstance(outcome.get("error"), PredictionCancelled) or outcome.get("ran")


def test_a_cancel_anywhere_in_taking_giving_up_and_taking_back_the_turn_leaves_it_free():
    """Two threads take the turn, give it up while they wait and take it back, over and over; the
    third is cancelled at random moments of the same. The turn is free after every cancel."""
    from musicgen.tokens.turn import Turn, Watch

    turn = Turn(Watch(limit=60))
    stop = threading.Event()

    def busy_prediction():
        while not stop.is_set():
            turn.run(lambda: turn.while_waiting(lambda: time.sleep(0.0005)), "busy")

    def cancelled_prediction():
        while True:
            turn.run(lambda: turn.while_waiting(lambda: time.sleep(0.0005)), "cancelled")

    neighbours = [threading.Thread(target=busy_prediction) for _ in range(2)]
    for neighbour in neighbours:
        neighbour.start()
    try:
        landed = cancel_at_random_moments(cancelled_prediction, rounds=150, latest=0.02)
    finally:
        stop.set()
        for neighbour in neighbours:
            neighbour.join(10)
    assert landed == 150 and is_free(turn._lock)
    assert not turn._waiting and not any(neighbour.is_alive() for neighbour in neighbours)


def test_a_cancel_anywhere_in_joining_the_batch_leaves_its_lock_free_and_no_window_behind(settings):
    """Windows joining a batch and waiting for their tokens, cancelled at random moments: the
    Batcher's lock is free afterwards, the turn too, and no cancelled window keeps a slot."""
    from musicgen.models.load import load_models
    from musicgen.tokens.batching import Draws
    from musicgen.tokens.sampling import Sampling

    models = load_models(settings.replace(max_batch=2), versions=("large",))
    model, fast = models.get("large").model, models.get("large").loop
    attributes, _ = model._prepare_tokens_and_attributes(["calm"], None)

    def window():
        import torch

        with torch.inference_mode():
            state = fast.window.start(None, attributes, 50)
            draws = Draws(torch.Generator().manual_seed(1), lambda: None)
            models.in_turn(lambda: models.batcher.run(fast, state, Sampling(), draws, lambda: None), "window")

    landed = cancel_at_random_moments(window, rounds=40, latest=0.15)
    assert landed > 10  # most landed while joining or waiting, not after
    assert is_free(models.batcher._changed) and is_free(models.batcher.turn._lock)
    deadline = time.monotonic() + 10
    batch = models.batcher._batches[fast]
    while batch.busy and time.monotonic() < deadline:  # cancelled windows leave at the next step
        time.sleep(0.05)
    assert not batch.busy, "a cancelled window kept its slot"
    window()  # and the next one is decoded


def test_a_cancel_anywhere_in_loading_a_model_leaves_the_loaders_lock_free(settings):
    """Loading (and evicting, to make room) a model on first use, cancelled at random moments:
    the models' lock is free afterwards and the next request is served."""
    from musicgen.models.load import load_models

    models = load_models(settings.replace(max_batch=2), versions=("large",))

    def load_and_evict():
        models.get("melody-large")
        with models._lock:
            models.evict("melody-large")

    cancel_at_random_moments(load_and_evict, rounds=10, latest=1.0)
    assert is_free(models._lock)
    assert models.get("melody-large").model is models.models["melody-large"]


def test_a_cancel_while_logging_leaves_the_log_handlers_lock_free():
    """Threads logging without pause, cancelled at random moments: our log handler's lock is free
    afterwards (the standard handler's could be left taken, and every thread's next line would wait)."""
    import io
    import logging

    from musicgen.boot import CancelSafeStreamHandler

    handler = CancelSafeStreamHandler(io.StringIO())
    logger = logging.getLogger("musicgen.test-cancel-while-logging")
    logger.addHandler(handler)
    logger.propagate = False
    try:

        def log_lines():
            while True:
                logger.warning("a line")

        cancel_at_random_moments(log_lines, rounds=100, latest=0.005)
        assert is_free(handler.lock)
    finally:
        logger.removeHandler(handler)


def test_a_second_cancel_is_not_raised_in_the_first_ones_clean_up():
    def work(outcome):
        try:
            busy(outcome, 10)
        except PredictionCancelled:
            cancellation.cancel(threading.get_ident())  # a second cancel, as a client's retry
            busy(outcome, 0.2)  # the clean-up: nothing lands here
            outcome["cleaned"] = True
            raise

    outcome = cancelled_once_inside(work)
    assert outcome.get("cleaned") and isinstance(outcome.get("error"), PredictionCancelled)


# --------------------------------------------------------------------------------------------
# The stall watchdog


def test_a_prediction_waiting_on_a_stalled_turn_fails_naming_the_holder(caplog):
    """The turn held by a thread that never moves: a waiter fails with ServerStalled after the
    limit (not for ever), the error and one log line name the holder and the waiters; once the
    holder lets go, the turn serves again."""
    import logging

    from musicgen.errors import ServerStalled
    from musicgen.tokens.turn import Turn, Watch

    turn = Turn(Watch(limit=0.5))
    release = threading.Event()
    holder, _ = run_in_thread(lambda outcome: turn.run(lambda: release.wait(10), "melody, text"))
    time.sleep(0.05)
    waiters = [run_in_thread(lambda outcome: turn.run(lambda: None, "large, continuation")) for _ in range(2)]
    start = time.monotonic()
    with caplog.at_level(logging.ERROR, logger="musicgen.tokens.batching"):
        for waiter, _ in waiters:
            waiter.join(5)
    assert time.monotonic() - start < 3
    for _, outcome in waiters:
        error = outcome.get("error")
        assert isinstance(error, ServerStalled), repr(error)
        assert "made no progress" in str(error) and "(melody, text)" in str(error)
    lines = [record.getMessage() for record in caplog.records if "made no progress" in record.getMessage()]
    assert len(lines) == 1 and "held by" in lines[0] and "(large, continuation)" in lines[0]
    release.set()
    holder.join(5)
    served, outcome = run_in_thread(lambda outcome: outcome.update(result=turn.run(lambda: 42, "next")))
    served.join(5)
    assert outcome.get("result") == 42


def test_a_window_waiting_on_a_batch_that_never_steps_fails():
    """A window queued in a batch whose stepping never comes: ServerStalled after the limit."""
    import torch

    from musicgen.errors import ServerStalled
    from musicgen.tokens.batching import Job
    from musicgen.tokens.turn import Watch

    watch = Watch(limit=0.3)
    job = Job(None, None, torch.Generator(), lambda: None)
    start = time.monotonic()
    with pytest.raises(ServerStalled, match="made no progress"):
        job.wait(watch, lambda: "1 window(s) in slots")
    assert time.monotonic() - start < 2


def test_a_cancel_lost_where_python_ignores_exceptions_stops_the_next_step():
    """The one exception a cancel sends can land in a weakref callback or a __del__, where Python
    prints "Exception ignored" and goes on: the prediction then stops at its next decode step."""
    from musicgen.tokens.progress import Progress

    def work(outcome):
        progress = Progress(10**6, bar=False)
        try:
            busy(outcome, 10)
        except PredictionCancelled:
            outcome["swallowed"] = True  # as Python does in a weakref callback
        for _ in range(10**6):
            progress.advance()
            outcome["steps after"] = outcome.get("steps after", 0) + 1

    outcome = cancelled_once_inside(work)
    assert outcome.get("swallowed") and "steps after" not in outcome
    assert isinstance(outcome.get("error"), PredictionCancelled)
