"""Audio as it is made: a streaming prediction's chunks (chunks.py), written while its tokens arrive."""
