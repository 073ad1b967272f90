"""MusicGen as an API: the package behind predict.py, the CLI and the Cog server."""
