"""The published and the streaming predictors' setup(): light to import, it boots first
(musicgen.boot) and only then imports the service, which imports audiocraft."""

from __future__ import annotations


def start_runner(weights: str | None = None):
    """boot(), then the service's models loaded once: the PredictionRunner a predictor's predict()
    hands its requests to. `weights` (Cog's COG_WEIGHTS): a fine-tuned LM served in place of its base."""
    from musicgen.boot import boot

    settings = boot()  # first: a bad setting stops setup here, naming it; then the service imports audiocraft

    from musicgen.serving.workers import PredictionRunner

    return PredictionRunner.load(settings, fine_tuned=weights)
