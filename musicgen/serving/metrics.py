"""The Prometheus metrics the worker exports at /metrics (musicgen.serving.probes), with prometheus_client.

Counted as predictions end (PredictionRunner), or read from the service when Prometheus scrapes
(ServiceCollector). Labels never carry a caller's data: `model_version` is one of the table's
versions (anything else a caller sent counts as `invalid`), `status` one of STATUSES, `phase` one
of musicgen.tokens.progress.PHASES, `kind` used or limit. docs/operations.md lists them.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from musicgen.tokens.progress import PHASES, Measures
from musicgen.versions import MODEL_VERSIONS

STATUSES = ("succeeded", "failed", "canceled")
# seconds: a demo prediction on a CPU (under 1 s) to a 60 s piece of the 3.3 B model on a CPU
BUCKETS = (0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 3600)

disable_created_metrics()  # no `_created` series beside each counter and histogram (OpenMetrics' extra)
REGISTRY = CollectorRegistry(auto_describe=True)
PREDICTIONS = Counter(
    "musicgen_predictions", "Predictions ended, by model version and status.", ["model_version", "status"],
    registry=REGISTRY,
)  # fmt: skip
PREDICTION_SECONDS = Histogram(
    "musicgen_prediction_seconds", "Wall time of a prediction, from its arrival in the worker to its end.",
    ["model_version"], buckets=BUCKETS, registry=REGISTRY,
)  # fmt: skip
PHASE_SECONDS = Histogram(
    "musicgen_prediction_phase_seconds",
    "A prediction's wall time by phase: queue (a worker, the turn, a batch slot), prefill (conditions and "
    "prefill), decode (the LM's steps), codec (EnCodec or MultiBand Diffusion), encode (normalize, write).",
    ["model_version", "phase"], buckets=BUCKETS, registry=REGISTRY,
)  # fmt: skip
DECODE_STEPS = Counter(
    "musicgen_decode_steps", "LM decode steps run for predictions, by model version.", ["model_version"],
    registry=REGISTRY,
)  # fmt: skip


def version_label(model_version: object) -> str:
    """A request's model_version as a label: a known version, else `invalid` (never the caller's text)."""
    return model_version if model_version in MODEL_VERSIONS else "invalid"


def observe(model_version: object, status: str, seconds: float, measures: Measures) -> None:
    """One ended prediction."""
    version = version_label(model_version)
    PREDICTIONS.labels(version, status).inc()
    PREDICTION_SECONDS.labels(version).observe(seconds)
    for phase in PHASES:
        if phase in measures.seconds:
            PHASE_SECONDS.labels(version, phase).observe(measures.seconds[phase])
    if measures.steps:
        DECODE_STEPS.labels(version).inc(measures.steps)


class ServiceCollector:
    """What the loaded models hold, read at each scrape: batch slots in use, loads and evictions,
    the memory budget, predictions in flight. `runner`: the PredictionRunner."""

    def __init__(self, runner):
        self.runner = runner

    def collect(self):
        models = self.runner.service.models
        in_use = GaugeMetricFamily(
            "musicgen_batch_slots_in_use", "Batch slots holding a window, by model version.", labels=["model_version"]
        )
        slots = GaugeMetricFamily("musicgen_batch_slots", "Batch slots, by model version.", labels=["model_version"])
        if models.batcher is not None:
            for version, served in list(models.resident.items()):
                used, total = models.batcher.occupancy(served.loop)
                in_use.add_metric([version], used)
                slots.add_metric([version], total)
        loads = CounterMetricFamily(
            "musicgen_model_loads", "Models loaded, by model version.", labels=["model_version"]
        )
        evictions = CounterMetricFamily(
            "musicgen_model_evictions", "Models evicted to make room, by model version.", labels=["model_version"]
        )
        for version in MODEL_VERSIONS:
            if models.loads[version]:
                loads.add_metric([version], models.loads[version])
            if models.evictions[version]:
                evictions.add_metric([version], models.evictions[version])
        budget = GaugeMetricFamily(
            "musicgen_memory_budget_bytes", "The memory budget's use and limit, in bytes.", labels=["kind"]
        )
        budget.add_metric(["used"], models.resident_bytes())
        if models.budget is not None:
            budget.add_metric(["limit"], models.budget.limit)
        in_flight = GaugeMetricFamily("musicgen_predictions_in_flight", "Predictions in the worker now.")
        in_flight.add_metric([], self.runner.in_flight)
        yield from (in_use, slots, loads, evictions, budget, in_flight)
