"""Continuous batching (MUSICGEN_MAX_BATCH): concurrent predictions decode together, and no output
depends on its neighbours.

The batched step's rows are independent of each other and of the occupancy; the batcher's windows get
their own generator and settings; and through the real server with N = 4 a prediction's bytes are
the same alone, among others of every mode arriving and leaving, beside a cancelled one and a
refused one; a burst of 2N is answered without a 409 and leaves nothing behind.
"""

from __future__ import annotations

import itertools
import threading
import time

import pytest
import requests
import torch
from helpers import (
    HTTP_TIMEOUT,
    PREDICT_TIMEOUT,
    FileServer,
    data_uri,
    fine_tune,
    started_server,
    train_adapter,
    write_scale,
)

from musicgen.generate import seed_everything
from musicgen.models.load import load_models
from musicgen.models.sizes import lm_bytes, static_bytes
from musicgen.serving.runtime_patches import PREDICTION_FOLDERS
from musicgen.tokens.batching import Draws
from musicgen.tokens.cache import CrossAttentionCache
from musicgen.tokens.checks import Tolerance, check_adapter, check_inputs, compare, loop_logits, slot_logits
from musicgen.tokens.choose import batched_step
from musicgen.tokens.graphs import CROSS_CAPACITY
from musicgen.tokens.layer import bind_linear
from musicgen.tokens.loops import WindowPlan
from musicgen.tokens.sampling import Sampling
from musicgen.tokens.slots import ROWS_PER_SLOT
from musicgen.weights import layout
from tooling.bench.storm import storm

SLOTS = 4
TARGET = {"model_version": "large", "prompt": "calm piano", "duration": 12, "seed": 11, "top_k": 50}


# --------------------------------------------------------------------------------------------
# The step and the batcher, in process


@pytest.fixture(scope="module")
def batched_models(settings, one_torch_thread):
    return load_models(settings.replace(max_batch=SLOTS))


@pytest.mark.parametrize("static", [True, False], ids=["static (the CUDA graph's form)", "per slot (the CPU's)"])
def test_a_rows_logits_do_not_depend_on_the_other_rows_or_its_slot(batched_models, static):
    """The same window (with its adapter) in slot 0 beside random neighbours (with other adapters,
    or none), then in slot 2 beside others: the same logits, bit for bit, in both forms of the
    step; the static form holds the adapters in buffers it reads (a graph is not captured again)."""
    model, fast = batched_models.get("large").model, batched_models.get("large").loop
    t = fast.transformer
    assert t.cross  # the text reaches the demo LM by cross-attention, as in the released ones
    generator = torch.Generator().manual_seed(0)
    adapters = [check_adapter(model.lm, rank, seed, scale) for rank, seed, scale in ((4, 1, 1.0), (8, 2, -0.5))]
    mine = check_adapter(model.lm, 2, 3, 0.7)

    def random_cross():
        keys = [torch.randn(2, t.heads, 7, t.head_dim, generator=generator) for _ in t.layers]
        return CrossAttentionCache(keys, [torch.randn(k.shape, generator=generator) for k in keys])

    def scramble(step, positions):
        prefill = fast.cache(2, step.cache.length, torch.zeros(2, 1, t.dim))
        for slot, position in enumerate(positions):
            prefill.storage.copy_(torch.randn(prefill.storage.shape, generator=generator))
            step.load(slot, prefill, position, random_cross(), [*adapters, None][slot % 3])
            tokens = torch.randint(0, model.lm.card, (2, model.lm.num_codebooks), generator=generator)
            step.feed(slot, tokens, position)

    with torch.inference_mode():
        step = batched_step(t, model, SLOTS, masked=static, adapter_rank=8)
        scramble(step, [40, 7, 300, 2])
        prefill = fast.cache(2, step.cache.length, torch.zeros(2, 1, t.dim))
        prefill.storage.copy_(step.cache.storage[:, :, 0:2])
        cross, tokens = random_cross(), step.tokens[0:2].clone()
        step.load(0, prefill, 40, cross)
        plain = step.step()[0:2].clone()
        step.load(0, prefill, 40, cross, mine)
        first = step.step()[0:2].clone()
        scramble(step, [9, 1000, 40, 5])
        step.load(2, prefill, 40, cross, mine)
        step.feed(2, tokens, 40)
        moved = step.step()[4:6]
        for slot in (0, 1, 3):  # now alone: the per-slot form steps its two rows only (compact)
            step.free(slot)
        alone = step.step()[4:6].clone()
        step.load(2, prefill, 40, cross)
        step.feed(2, tokens, 40)
        plain_alone = step.step()[4:6]
    assert torch.equal(first, moved), (first - moved).abs().max()
    assert torch.equal(first, alone), (first - alone).abs().max()
    assert torch.equal(plain, plain_alone), (plain - plain_alone).abs().max()  # no adapter: no trace of one
    assert (first - plain).abs().max() > 0.01  # the adapter moves this slot's logits
    assert step.compact == (not static)


def test_the_static_step_with_an_adapter_agrees_with_the_eager_step_with_it(batched_models):
    """The check setup() runs on CUDA before the captured batch serves: the static slots (their
    adapter buffers holding a random rank-4 adapter, padded to rank 8) against the eager step
    with the same adapter, on the same sequence; here uncaptured, on the CPU, in float32."""
    model, fast = batched_models.get("large").model, batched_models.get("large").loop
    inputs = check_inputs(model)
    adapted = check_adapter(model.lm, 4, seed=5)
    with torch.inference_mode():
        step = batched_step(fast.transformer, model, SLOTS, masked=True, adapter_rank=8)
        static = slot_logits(model, fast, step, *inputs, adapted)
    eager, plain = loop_logits(model, fast, None, *inputs, adapted), loop_logits(model, fast, None, *inputs)
    assert "allowed" in compare("static", static, "eager", eager, Tolerance(atol=1e-4, rtol=1e-4))
    assert (eager - plain).abs().max() > 0.01  # the adapter is there to agree about


def test_the_set_up_check_catches_a_step_whose_rows_depend_on_the_occupancy(batched_models):
    """The per-slot form runs only the occupied slots' rows once its step has shown, when built,
    that no slot's logits change with the occupancy. A product whose rows change in their last
    bits with the row count (as MKL's F.linear does past some row counts) fails the check; the
    step then runs wide_linear, over every slot's rows unless that passes."""
    model, fast = batched_models.get("large").model, batched_models.get("large").loop

    def row_count_dependent(weight, bias):
        linear = bind_linear(weight, bias)
        return lambda x: linear(x) * (1 + 2**-20 * (x.shape[0] > ROWS_PER_SLOT))

    with torch.inference_mode():
        step = batched_step(fast.transformer, model, SLOTS, masked=False)
        assert step.compact and step.packed_bytes > 0 and "oneDNN" in step.form
        assert step.occupancy_leaves_rows_alone() and step.compact  # checked again: still compact
        step.row_layers, step.row_heads = fast.transformer.with_linear(row_count_dependent)
        assert not step.occupancy_leaves_rows_alone()
        assert not step.cache.storage.any() and step.at == [None] * SLOTS  # left as it found them
        assert not step._run().any()  # nothing occupied: nothing stepped, zeros


def test_the_memory_budget_counts_the_batched_steps_buffers(settings, batched_models):
    """The budget's estimate of a model with N slots, before it loads, is what its batched step
    holds once built (the slots' cache and, on the CPU, the packed copy of the stepped weights),
    plus the slots' texts: keys and values of up to CROSS_CAPACITY tokens each."""
    checkpoint = layout.model_dir("large", settings.weights_root) / layout.LM_FILE
    t = batched_models.get("large").loop.transformer
    step = batched_models.batcher.step_of(batched_models.get("large").loop)
    assert (
        step.packed_bytes > 0 and static_bytes(batched_models.get("large").loop, batched_models.batcher) == step.nbytes
    )
    texts = CROSS_CAPACITY * 2 * len(t.layers) * ROWS_PER_SLOT * SLOTS * t.dim * 4
    assert lm_bytes(checkpoint, "cpu", SLOTS) - lm_bytes(checkpoint, "cpu", 1) == step.nbytes + texts


def test_one_at_a_time_is_the_loop_as_it_was(settings, batched_models):
    """N = 1 (the CPU's default): no batcher, no turn, the window generated as before batching
    (the loop test_tokens.py compares with audiocraft's); N > 1 serves the same model batched."""
    one = load_models(settings, versions=("large",))
    assert one.max_batch == 1 and one.batcher is None and one.get("large").loop.batcher is None
    assert batched_models.get("large").loop.batcher is batched_models.batcher
    assert batched_models.get("large").loop.form == (
        f"batched, {SLOTS} slots (per slot, oneDNN's packed products over the occupied slots' rows)"
    )


def _window_tokens(models, version, prompt, seconds, seed, sampling, on_step=None):
    """One window's tokens through the batcher (in this thread), as a prediction asks for them;
    `on_step(version)` after each of its steps."""
    model, fast = models.get(version).model, models.get(version).loop
    attributes, _ = model._prepare_tokens_and_attributes([prompt], None)
    frames = int(seconds * model.frame_rate)
    generator = torch.Generator().manual_seed(seed)
    with torch.inference_mode():
        state = fast.window.start(None, attributes, frames)
        draws = Draws(generator, lambda: seed_everything(seed))
        codes, _ = models.batcher.run(fast, state, sampling, draws, lambda: on_step and on_step(version))
    return codes


def test_a_window_gets_the_same_tokens_alone_and_in_a_batch_and_a_failing_neighbour_fails_alone(batched_models):
    sampling = Sampling(top_k=40, cfg_coef=3.0)
    alone = _window_tokens(batched_models, "large", "calm", 2, 5, sampling)
    results, errors = {}, {}

    def run(name, *args):
        try:
            results[name] = _window_tokens(batched_models, *args)
        except Exception as error:  # noqa: BLE001 (the failing neighbour's error is the point)
            errors[name] = error

    crowd = [
        ("greedy", "large", "drums", 3, 1, Sampling(use_sampling=False, cfg_coef=1.0)),
        ("melody model", "melody", "strings", 2.5, 2, Sampling(top_p=0.8, temp=0.7, cfg_coef=0.0)),
        ("broken", "large", "noise", 2, 3, Sampling(top_k=10**6)),  # more than the codebook: kthvalue fails
        ("target", "large", "calm", 2, 5, sampling),
    ]
    threads = [threading.Thread(target=run, args=job) for job in crowd]
    for thread in threads:
        thread.start()
        time.sleep(0.05)
    for thread in threads:
        thread.join(PREDICT_TIMEOUT)
    assert set(errors) == {"broken"}, errors
    assert torch.equal(results["target"], alone)
    assert results["greedy"].shape[-1] == 150 and results["melody model"].shape[-1] == 125


def test_a_fine_tuned_model_decodes_in_the_batch(settings, batched_models, tmp_path):
    """A fine-tuned LM (served in its base's place) decodes in its own batch: its window gets the
    same tokens alone and beside another of its windows and a base model's, and they are the
    fine-tune's, not the base's."""
    tuned = load_models(settings.replace(max_batch=SLOTS), fine_tuned=str(fine_tune("large", tmp_path / "tuned.bin")))
    assert tuned.get("large").loop.batcher is tuned.batcher
    sampling = Sampling(top_k=40, temp=0.9)
    alone = _window_tokens(tuned, "large", "calm", 2, 5, sampling)
    results = {}
    crowd = {
        "target": ("large", "calm", 2, 5, sampling),
        "its neighbour": ("large", "drums", 3, 6, Sampling(use_sampling=False)),
        "the base melody": ("melody", "x", 2, 1, Sampling()),
    }
    threads = [
        threading.Thread(target=lambda name=name, job=job: results.update({name: _window_tokens(tuned, *job)}))
        for name, job in crowd.items()
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(PREDICT_TIMEOUT)
    assert set(results) == set(crowd) and torch.equal(results["target"], alone)
    assert not torch.equal(alone, _window_tokens(batched_models, "large", "calm", 2, 5, sampling))


def test_a_window_that_cannot_join_runs_alone_from_its_prefill(settings):
    """A window whose model's batch is gone (its model evicted) runs alone in its prediction's
    thread, from the prefill it already made (moved into a whole window's cache): the tokens of
    the one-window loop with the same generator."""
    models = load_models(settings.replace(max_batch=SLOTS), versions=("large",))
    model, fast = models.get("large").model, models.get("large").loop
    models.batcher.forget(fast)  # nothing running: its batch goes now
    attributes, _ = model._prepare_tokens_and_attributes(["calm"], None)
    sampling, frames = Sampling(top_k=40), 2 * int(model.frame_rate)
    with torch.inference_mode():
        draws = Draws(torch.Generator().manual_seed(5), lambda: None)
        plan = WindowPlan(0.0, frames, 0)
        alone = fast._window(None, attributes, plan, sampling, lambda: None, None, draws, None, None)
        expected = fast.window.generate(
            None, attributes, frames, sampling, lambda: None, generator=torch.Generator().manual_seed(5)
        )
    assert models.batcher.step_of(fast) is None and alone.shape[-1] == frames
    assert torch.equal(alone, expected)


def test_models_take_turns_step_by_step(batched_models):
    """Two models' windows at once: their steps alternate, neither waits for the other to end."""
    steps: list[str] = []
    threads = [
        threading.Thread(
            target=_window_tokens,
            args=(batched_models, version, "calm", 2, 1, Sampling()),
            kwargs={"on_step": steps.append},
        )
        for version in ("large", "melody")
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(PREDICT_TIMEOUT)
    assert sorted(set(steps)) == ["large", "melody"] and len(steps) == 2 * 103
    first_together = max(steps.index(version) for version in ("large", "melody"))
    last_together = min(len(steps) - 1 - steps[::-1].index(version) for version in ("large", "melody"))
    together = steps[first_together : last_together + 1]
    assert len(together) > 50, steps  # they overlapped...
    assert max(len(list(run)) for _, run in itertools.groupby(together)) <= 2, together  # ...one step each in turn


# --------------------------------------------------------------------------------------------
# Through the real server, N = 4


@pytest.fixture(scope="module")
def batch_server(demo_weights, tmp_path_factory):
    server = started_server(demo_weights, tmp_path_factory.mktemp("batch-server"), {"MUSICGEN_MAX_BATCH": str(SLOTS)})
    yield server
    server.stop()


@pytest.fixture(scope="module")
def melody_file(tmp_path_factory):
    directory = tmp_path_factory.mktemp("batch-files")
    write_scale(directory / "melody.wav", 3, base=220.0, channel_gain_step=0.0)
    write_scale(directory / "window.wav", 30, rate=16000, channels=1)  # a full 30 s window
    return directory / "melody.wav"


@pytest.fixture(scope="module")
def target_alone(batch_server):
    answer = batch_server.predict(**TARGET)
    assert answer["status"] == "succeeded", answer
    return answer["output"]


def _in_threads(server, requests_by_name: dict[str, dict], gap: float) -> dict[str, dict]:
    """Each request in its own thread, `gap` seconds apart, answered synchronously."""
    answers: dict[str, dict] = {}

    def send(name, inputs):
        answers[name] = server.post("/predictions", {"input": inputs}).json()

    threads = []
    for name, inputs in requests_by_name.items():
        threads.append(threading.Thread(target=send, args=(name, inputs)))
        threads[-1].start()
        time.sleep(gap)
    for thread in threads:
        thread.join(PREDICT_TIMEOUT)
    return answers


@pytest.mark.slow
def test_a_prediction_is_the_same_alone_and_among_others(batch_server, target_alone, melody_file):
    """Among a 45 s piece (two windows), a melody, a greedy continuation at guidance 30, a stereo
    model with a negative prompt, a continuation of a whole 30 s window and a request refused for
    bad input, arriving at different times: the same bytes, its steps shared."""
    melody = data_uri(melody_file)
    window = data_uri(melody_file.with_name("window.wav"))
    crowd = {
        "long": {"model_version": "large", "prompt": "rock", "duration": 45, "seed": 1, "top_p": 0.9, "temperature": 0.8},
        "melody": {"model_version": "melody", "prompt": "strings", "input_audio": melody, "duration": 20, "seed": 2,
                   "classifier_free_guidance": 0},
        "refused": {"model_version": "large", "prompt": "x", "continuation": True, "duration": 5},
        "target": TARGET,
        "continuation": {"model_version": "large", "prompt": "jazz", "input_audio": melody, "continuation": True,
                         "duration": 15, "seed": 3, "temperature": 0, "classifier_free_guidance": 30},
        "stereo": {"model_version": "stereo-large", "prompt": "wide", "negative_prompt": "drums", "duration": 10,
                   "seed": 5},
        "full window": {"model_version": "large", "prompt": "on", "input_audio": window, "continuation": True,
                        "duration": 3, "seed": 6, "top_k": 10},
    }  # fmt: skip
    answers = _in_threads(batch_server, crowd, gap=0.4)
    assert answers["refused"]["status"] == "failed" and "input_audio" in answers["refused"]["error"], answers["refused"]
    for name in ("long", "melody", "continuation", "stereo", "full window", "target"):
        assert answers[name]["status"] == "succeeded", answers[name]
    assert answers["target"]["output"] == target_alone
    assert "its steps shared with up to" in answers["target"]["logs"], answers["target"]["logs"]


@pytest.fixture(scope="module")
def adapters(settings, adapter, tmp_path_factory) -> tuple[str, str]:
    """Two LoRA adapters of large: the session's (rank 4) and one of rank 8 trained here (another
    seed), as data URIs."""
    second = train_adapter(settings, tmp_path_factory.mktemp("adapters"), rank=8, seed=5)
    return data_uri(adapter, "application/octet-stream"), data_uri(second, "application/octet-stream")


@pytest.mark.slow
def test_requests_with_different_adapters_decode_together_with_their_bytes_alone(batch_server, adapters):
    """Two adapters, one at half scale, and none: each request's bytes alone are its bytes among
    the other three, their steps shared (each slot's rows get their own adapter's update)."""
    first, second = adapters
    crowd = {
        "first": {"model_version": "large", "prompt": "calm", "duration": 3, "seed": 1, "lora_weights": first},
        "second": {"model_version": "large", "prompt": "rock", "duration": 2, "seed": 2, "lora_weights": second},
        "half": {"model_version": "large", "prompt": "calm", "duration": 3, "seed": 1, "lora_weights": first,
                 "lora_scale": 0.5},
        "none": {"model_version": "large", "prompt": "calm", "duration": 3, "seed": 1},
    }  # fmt: skip
    alone = {name: batch_server.predict(**inputs) for name, inputs in crowd.items()}
    together = _in_threads(batch_server, crowd, gap=0.0)
    for name in crowd:
        assert alone[name]["status"] == together[name]["status"] == "succeeded", (alone[name], together[name])
        assert together[name]["output"] == alone[name]["output"], name
    assert len({answer["output"] for answer in alone.values()}) == 4  # the adapters and the scale change the piece
    assert "its steps shared with up to 3" in together["none"]["logs"], together["none"]["logs"]


@pytest.mark.slow
def test_a_burst_of_twice_the_batch_gets_no_409_and_leaves_nothing(batch_server):
    ids = [f"burst-{index}" for index in range(2 * SLOTS)]
    answers: dict[str, requests.Response] = {}

    def send(prediction_id, seed):
        body = {"id": prediction_id, "input": {"prompt": "burst", "duration": 2, "seed": seed}}
        answers[prediction_id] = batch_server.post("/predictions", body)

    threads = [threading.Thread(target=send, args=(pid, index % 2)) for index, pid in enumerate(ids)]
    time.sleep(1.0)  # the runtime frees a slot a few ms after its answer (docs/operations.md): start with 2N free
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(PREDICT_TIMEOUT)
    assert sorted(answers) == sorted(ids)
    assert [answers[pid].status_code for pid in ids] == [200] * len(ids), [answers[pid].text for pid in ids]
    outputs = [answers[pid].json() for pid in ids]
    assert all(output["status"] == "succeeded" for output in outputs), outputs
    assert len({output["output"] for output in outputs}) == 2  # two seeds, two files, whatever ran beside them
    batch_server.wait_for({"READY"}, PREDICT_TIMEOUT)
    assert not [pid for pid in ids if (PREDICTION_FOLDERS / pid).exists()]
    files = [path for path in batch_server.tmp.rglob("*") if path.is_file()]
    assert all(path.parent.name.startswith("musicgen-") and path.suffix == ".wav" for path in files), files
    assert len(files) <= 2 * 2 * SLOTS - 1  # only the answers the runtime may still be sending


@pytest.mark.slow
def test_a_neighbour_cancelled_midway_changes_nothing(batch_server, tmp_path):
    """Two 60 s pieces side by side (three windows each); the neighbour is cancelled while both
    decode: the other's bytes are its bytes alone."""
    target = {**TARGET, "duration": 60}
    alone = batch_server.predict(**target)
    assert alone["status"] == "succeeded", alone
    hooks = FileServer(tmp_path)
    try:
        body = {
            "id": "neighbour-to-cancel",
            "webhook": f"{hooks.url}/hook",
            "input": {"model_version": "large", "prompt": "long", "duration": 60, "seed": 4},
        }
        response = batch_server.post("/predictions", body, headers={"Prefer": "respond-async"}, timeout=HTTP_TIMEOUT)
        assert response.status_code == 202, response.text
        answers: dict[str, dict] = {}
        beside = threading.Thread(target=lambda: answers.update(target=batch_server.predict(**target)))
        beside.start()
        time.sleep(1.0)  # both in the batch, a few hundred steps in
        cancel = requests.post(f"{batch_server.url}/predictions/neighbour-to-cancel/cancel", timeout=HTTP_TIMEOUT)
        assert cancel.status_code == 200, cancel.text
        beside.join(PREDICT_TIMEOUT)
        final = hooks.wait_for_webhook("neighbour-to-cancel", {"succeeded", "failed", "canceled"}, PREDICT_TIMEOUT)
    finally:
        hooks.close()
    assert final["status"] == "canceled", final
    assert answers["target"]["status"] == "succeeded", answers["target"]
    assert answers["target"]["output"] == alone["output"]
    assert "its steps shared with up to" in answers["target"]["logs"], answers["target"]["logs"]


@pytest.mark.slow
def test_a_storm_of_cancels_leaves_the_server_serving(batch_server):
    """Three callers start async predictions of every mode and cancel each 0 to 0.6 s after it
    starts, beside a running sync prediction (issue 32: about 100 such cancels once jammed a
    batching server for good). Every prediction gets its terminal webhook, the predictions beside
    succeed, the server is READY and serves the next one. (The long storm: tooling.bench.storm.)"""
    report = storm(batch_server.url, callers=3, cancels=8)
    assert report.started == 24 and report.cancels == 24, report
    assert not report.missing_webhooks, report
    assert report.beside and all(status == "succeeded" for status in report.beside), report
    assert report.settled == "READY" and report.after == "succeeded", report
    assert report.terminal.get("canceled", 0) >= 12, report  # most were stopped, not run to their end
