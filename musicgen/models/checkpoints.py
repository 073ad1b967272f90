"""Reading checkpoint files: audiocraft's exports (weights only), and the community fine-tuner's LMs.

Every released checkpoint and every export (ours included) keeps its config as a YAML string, so
torch's weights-only loader reads it. The community fine-tuner
(sakemin/cog-musicgen-fine-tuner) writes `trained_model.tar` instead:
`torch.save({'xp.cfg': <the training run's OmegaConf DictConfig>, 'model': <LM state dict>})`.
That config is pickled (and holds a filled collections.defaultdict, which the weights-only loader
refuses whatever it is allowed), so read_lm_checkpoint unpickles such a file with an explicit
allow-list of the classes an OmegaConf config and a state dict need (COMMUNITY_GLOBALS) and refuses
anything else, naming the file and what it found. The result has the shape of an export: the
config as YAML (interpolations left unresolved: resolving could read the environment), the state
dict as `best_state`.
"""

from __future__ import annotations

import _compat_pickle
import pickle
import types
from pathlib import Path

import omegaconf
import torch

# (module, name) of every global a community trained_model.tar may reference: OmegaConf's
# containers and nodes, the builtins and collections they are made of, and torch's tensor rebuild
# (storages are resolved by torch itself). Names are after Python 2 -> 3 renames (protocol 2).
COMMUNITY_GLOBALS = frozenset(
    {
        ("omegaconf.dictconfig", "DictConfig"),
        ("omegaconf.listconfig", "ListConfig"),
        ("omegaconf.base", "ContainerMetadata"),
        ("omegaconf.base", "Metadata"),
        *(("omegaconf.nodes", node) for node in ("AnyNode", "StringNode", "IntegerNode", "FloatNode", "BooleanNode")),
        ("typing", "Any"),
        *(("builtins", name) for name in ("dict", "list", "tuple", "int", "float", "str", "bool")),
        ("collections", "OrderedDict"),
        ("collections", "defaultdict"),
        ("torch._utils", "_rebuild_tensor_v2"),
        ("torch._utils", "_rebuild_parameter"),
    }
)
COMMUNITY_KEYS = ("xp.cfg", "model")  # what the community fine-tuner saves


class RefusedPickle(pickle.UnpicklingError):
    """A pickle references a global outside the allow-list."""


class _AllowListUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        if (module, name) not in COMMUNITY_GLOBALS:
            raise RefusedPickle(f"{module}.{name}")
        return super().find_class(module, name)


def _allow_list_load(file, **kwargs):
    return _AllowListUnpickler(file, **kwargs).load()


# torch.load takes a pickle *module*: its zip reader uses Unpickler, its legacy reader load; both
# go through the allow-list.
_allow_list_pickle = types.ModuleType("musicgen_allow_list_pickle")
_allow_list_pickle.Unpickler = _AllowListUnpickler
_allow_list_pickle.load = _allow_list_load
_allow_list_pickle.__dict__.update({"UnpicklingError": pickle.UnpicklingError})


def read_checkpoint(path: Path | str) -> dict:
    """torch.load of an audiocraft checkpoint, memory-mapped, safe unpickling only."""
    return torch.load(path, map_location="cpu", mmap=True, weights_only=True)


def read_lm_checkpoint(path: Path | str) -> dict:
    """An LM checkpoint as audiocraft's export ({'xp.cfg': YAML, 'best_state': state dict, ...}):
    an export as it is, a community trained_model.tar converted in memory.

    Raises pickle.UnpicklingError for a file that holds pickled objects of any other kind, with a
    message naming the file and the refused class; other errors (not a torch file) as torch raises them.
    """
    try:
        return read_checkpoint(path)
    except pickle.UnpicklingError:
        pass  # pickled objects: a community checkpoint, or something to refuse
    try:
        package = torch.load(path, map_location="cpu", mmap=True, weights_only=False, pickle_module=_allow_list_pickle)
    except RefusedPickle as refused:
        raise pickle.UnpicklingError(
            f"{path} holds a pickled {refused}, which is not among the classes of an audiocraft training config "
            f"(OmegaConf containers, builtins, tensors); it is not loaded. Export the LM with "
            f"audiocraft.utils.export.export_lm (an 'xp.cfg' YAML string and 'best_state')."
        ) from None
    if not (isinstance(package, dict) and all(key in package for key in COMMUNITY_KEYS)):
        found = sorted(map(str, package)) if isinstance(package, dict) else type(package).__name__
        raise pickle.UnpicklingError(
            f"{path} holds pickled objects but is neither an audiocraft export nor a community fine-tuner "
            f"checkpoint (keys {list(COMMUNITY_KEYS)}); it has {found}. Export a training checkpoint with "
            f"audiocraft.utils.export.export_lm."
        )
    config = package["xp.cfg"]
    if not isinstance(config, omegaconf.DictConfig) or not isinstance(package["model"], dict):
        raise pickle.UnpicklingError(
            f"{path}: its 'xp.cfg' is a {type(config).__name__} and its 'model' a "
            f"{type(package['model']).__name__}; a community checkpoint holds a DictConfig and a state dict"
        )
    return {
        "xp.cfg": omegaconf.OmegaConf.to_yaml(config),
        "best_state": package["model"],
        "exported": True,
        "community": True,  # read from a trained_model.tar
    }
