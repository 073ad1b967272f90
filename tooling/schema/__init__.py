"""The OpenAPI schema `cog build` would write: literals and inputs (predict.py and train.py read
statically), openapi (the documents, their merge, the file), gojson (Go's JSON text); cog.yaml's
targets are musicgen.serving.cog_yaml's."""
