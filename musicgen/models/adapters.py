"""The LoRA adapters a deployment serves: the one given as its weights, and those requests bring,
each checked against its model version's LM (read from the checkpoint's config, nothing loaded)
and kept ready on the device by content (musicgen.lora.cache)."""

from __future__ import annotations

from pathlib import Path

import omegaconf
import torch

from musicgen.errors import InputError, WeightsError
from musicgen.lora.adapter import Adapter, AdapterRefused, Geometry, read_adapter
from musicgen.lora.cache import AdapterCache
from musicgen.models.checkpoints import read_lm_checkpoint
from musicgen.tokens.adapters import Adapted


class ServedAdapters:
    """`checkpoints`: the LM file of each servable version (LoadedModels', kept up to date there)."""

    def __init__(self, cache: AdapterCache, checkpoints: dict[str, Path]):
        self.cache = cache
        self.weights: Adapter | None = None  # given as the weights (COG_WEIGHTS), on its base version
        self._checkpoints = checkpoints
        self._geometries: dict[str, Geometry] = {}

    @property
    def nbytes(self) -> int:
        """What the adapters ready on the device hold (the memory budget counts it)."""
        return self.cache.nbytes

    def geometry(self, version: str) -> Geometry:
        """The layers and widths of `version`'s LM, from its checkpoint's config (read once)."""
        if version not in self._geometries:
            cfg = omegaconf.OmegaConf.create(read_lm_checkpoint(self._checkpoints[version])["xp.cfg"])
            self._geometries[version] = Geometry.of_config(cfg)
        return self._geometries[version]

    def check(self, adapter: Adapter, version: str) -> None:
        """InputError naming lora_weights unless `adapter` was made for `version`'s LM."""
        try:
            adapter.check_serves(version, self.geometry(version))
        except AdapterRefused as why:
            raise InputError(f"lora_weights: {why}.") from None

    def serve(self, path: Path) -> str:
        """Serve the adapter at `path` as the weights of its base version; returns that version.
        WeightsError when it is not an adapter this deployment can serve."""
        try:
            adapter = read_adapter(path)
            if adapter.model_version not in self._checkpoints:
                raise AdapterRefused(
                    f"its base model_version {adapter.model_version!r} has no weights here "
                    f"(python -m musicgen download {adapter.model_version})"
                )
            adapter.check_serves(adapter.model_version, self.geometry(adapter.model_version))
        except AdapterRefused as why:
            raise WeightsError(f"{path} cannot be served: {why}") from None
        self.weights = adapter
        return adapter.model_version

    def applied(self, version: str, adapter: Adapter | None, lora_scale: float) -> Adapter | None:
        """The adapter a request of `version` decodes with: its own, else the one served as the
        weights when it is `version`'s; None for none, or at scale 0 (the base model)."""
        if adapter is None and self.weights is not None and self.weights.model_version == version:
            adapter = self.weights
        return None if lora_scale == 0 else adapter

    def for_request(self, version: str, adapter: Adapter | None, lora_scale: float, lm: torch.nn.Module):
        """The applied adapter (see applied()) ready on the LM's device and dtype, at `lora_scale`."""
        adapter = self.applied(version, adapter, lora_scale)
        if adapter is None:
            return None
        weight = lm.transformer.layers[0].linear1.weight
        low_rank = self.cache.get(adapter.digest, lambda: adapter.on(weight.device, weight.dtype))
        return Adapted.of(low_rank, lora_scale)
