"""The OpenAPI schema `cog build` would write: refs (cog.yaml's targets), literals and inputs (predict.py
and train.py read statically), openapi (the documents, their merge, the file), gojson (Go's JSON text)."""
