"""The published and the streaming predictors' setup(): light to import, it boots first
(musicgen.boot) and only then imports the service, which imports audiocraft."""

from __future__ import annotations


def start_runner(weights: str | None = None):
    """boot(), then the service's models loaded once: the PredictionRunner a predictor's predict()
    hands its requests to. `weights` (Cog's COG_WEIGHTS): a fine-tuned LM served in place of its base.
    With MUSICGEN_METRICS_PORT the probes answer from the start: 503 "setting up" while the models
    load, 503 with the reason if setup fails, 200 once it succeeds (musicgen.serving.probes)."""
    from musicgen.boot import boot

    settings = boot()  # first: a bad setting stops setup here, naming it; then the service imports audiocraft

    from musicgen.serving.probes import Probes
    from musicgen.serving.workers import PredictionRunner

    probes = None if settings.metrics_address is None else Probes(settings.metrics_address).start()
    try:
        runner = PredictionRunner.load(settings, fine_tuned=weights)
    except BaseException as error:
        if probes is not None:
            probes.setup_failed(error)
        raise
    if probes is not None:
        probes.serving(runner)
    return runner
