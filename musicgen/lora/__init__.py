"""Low-rank adapters (LoRA) of the MusicGen LMs: the adapter file, training adapters, and the
adapters ready on the device (how a step applies one is musicgen.tokens.adapters)."""
