"""Stock audiocraft against our Predictor: checkpoints (sizes, building), processes, child (measured runs), report."""
