"""Audio in and out: decode (input files), levels (conversion, normalization), encode (output files)."""
