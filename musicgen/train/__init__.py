"""Fine-tuning a served MusicGen LM on the caller's audio (`cog train`, `python -m musicgen train`).

options (TrainRequest and its rules) -> dataset (archive members, captions) -> segments (decoded,
converted, 30 s, tokens and chroma) -> model (the base LM in float32, its codec) -> loop (AdamW,
warm-up and cosine, masked cross-entropy) -> export (audiocraft's LM export format). run.py ties
them together.
"""
