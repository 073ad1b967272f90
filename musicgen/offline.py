"""Importing this module points every cache at the weights root and turns the hub offline.

Hugging Face libraries read their environment once, when first imported, so every module that
imports audiocraft, transformers or demucs imports this module first.
"""

from musicgen.weights import configure_offline_environment

WEIGHTS_ROOT = configure_offline_environment()
