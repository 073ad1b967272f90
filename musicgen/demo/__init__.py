"""Tiny random checkpoints in the released formats: configs (plain data), builders (the models and files)."""
