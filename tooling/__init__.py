"""Developer tooling, never imported by the serving path: the schema generator, the demo weights, the benchmark."""
