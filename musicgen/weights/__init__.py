"""The checkpoints on disk: layout (where), manifest (what, from where), download (fetch), store (check, ensure)."""
