"""The OpenAPI schema `cog build` would write: inputs (predict.py read statically), openapi (document, file)."""
