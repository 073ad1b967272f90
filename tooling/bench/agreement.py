"""How closely our loop follows audiocraft's on one device, on a bench size's checkpoints.

    python -m tooling.bench.agreement --size S --device D [--duration SECONDS] [--json FILE]

1. logits, in the dtype the model is served in (float16 transformer on CUDA, float32 on a CPU):
   audiocraft's loop generates (top-k 250, seeded) while a forward hook records the logits of each
   of its steps; our eager step and the static / CUDA-graph step are then fed the same token
   sequence (teacher forcing) and their logits compared with audiocraft's, step by step:
   max |difference|, that over max |logit|, and how often the arg-max agrees.
2. greedy tokens in float32 (the LM cast to float32, autocast off): audiocraft's loop, our eager
   loop and our static / CUDA-graph step, from the same conditions: identical, or where they part.

On CUDA the static step is captured as a CUDA graph; on a CPU it runs as it is. Exit status 1 when
the float32 greedy tokens of our eager loop differ from audiocraft's.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from musicgen import atomic_files
from musicgen.boot import boot
from tooling.bench.checkpoints import SIZES, ensure_checkpoints
from tooling.bench.report import DEFAULT_PROMPT, DEFAULT_SEED


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m tooling.bench.agreement", description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=list(SIZES), default="tiny")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds of audio (default: 8)")
    parser.add_argument("--json", type=Path, help="write the figures to this file")
    args = parser.parse_args(argv)
    root = ensure_checkpoints(args.size)
    boot(root)
    report = measure(args.size, root, args.device, args.duration)
    if args.json:
        atomic_files.write_text(args.json, json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0 if report["greedy_float32"]["eager"]["identical"] else 1


def measure(size: str, root: Path, device: str, duration: float) -> dict:
    import torch  # heavy imports here: the module is listed by the CLI's help without them
    from audiocraft.utils.autocast import TorchAutocast

    from musicgen.generate import seed_everything
    from musicgen.models.load import load_models
    from musicgen.settings import Settings
    from musicgen.tokens.checks import loop_logits
    from musicgen.tokens.graphs import GraphedStep
    from musicgen.tokens.loop import condition_tensors
    from musicgen.tokens.loops import AudiocraftLoop, FastLoop

    version = SIZES[size].version
    model = load_models(Settings(weights_root=root, device=device), (version,)).get(version).model
    on_cuda = device == "cuda"
    report: dict = {"size": size, "device": device, "duration": duration, "model_version": version}
    if on_cuda:
        report["gpu"] = torch.cuda.get_device_name()

    def tokens_of(loop):
        seed_everything(DEFAULT_SEED)
        attributes, prompt = model._prepare_tokens_and_attributes([DEFAULT_PROMPT], None)
        with torch.inference_mode():
            return loop.tokens(attributes, prompt)

    # 1. Logits in the served dtype, teacher-forced on audiocraft's own sequence.
    model.set_generation_params(duration=duration)
    recorded = []
    hook = model.lm.register_forward_hook(lambda module, args, output: recorded.append(output[:, :, -1].float()))
    codes = tokens_of(AudiocraftLoop(model))
    hook.remove()
    lm = model.lm
    pattern = lm.pattern_provider.get_pattern(codes.shape[-1])
    sequence, _, _ = pattern.build_pattern_sequence(codes, lm.special_token_id)
    stock = torch.stack(recorded, dim=2)  # [2, K, steps, card]
    fed = torch.cat([sequence, sequence])[..., : stock.shape[2]]
    attributes, _ = model._prepare_tokens_and_attributes([DEFAULT_PROMPT], None)
    with torch.inference_mode(), model.autocast:
        tensors = condition_tensors(lm, attributes)
    fast = FastLoop(model)
    with torch.no_grad():
        graph = GraphedStep(fast.transformer, model, capture=on_cuda)
    report["dtype"] = str(fast.transformer.kv_dtype(model.autocast)).replace("torch.", "")  # the attention's
    report["logits"] = {
        "eager": _difference(loop_logits(model, fast, None, tensors, fed), stock),
        "graph" if on_cuda else "static": _difference(loop_logits(model, fast, graph, tensors, fed), stock),
    }

    # 2. Greedy tokens in float32.
    lm.float()
    model.autocast = TorchAutocast(enabled=False)
    model.set_generation_params(duration=duration, use_sampling=False)
    reference = tokens_of(AudiocraftLoop(model))
    eager = FastLoop(model)
    graphed = FastLoop(model)
    with torch.no_grad():
        graphed.graph = GraphedStep(graphed.transformer, model, capture=on_cuda)
    report["greedy_float32"] = {
        "frames": int(reference.shape[-1]),
        "eager": _same(tokens_of(eager), reference),
        "graph" if on_cuda else "static": _same(tokens_of(graphed), reference),
    }
    return report


def _difference(ours, stock) -> dict:
    difference = (ours - stock).abs()
    return {
        "steps": int(stock.shape[2]),
        "max_abs": difference.max().item(),
        "max_abs_over_max_logit": (difference.max() / stock.abs().max()).item(),
        "argmax_agreement": (ours.argmax(-1) == stock.argmax(-1)).float().mean().item(),
    }


def _same(ours, reference) -> dict:
    identical = bool(ours.shape == reference.shape and (ours == reference).all())
    result: dict = {"identical": identical}
    if not identical and ours.shape == reference.shape:
        result["first_differing_frame"] = int((ours != reference).any(dim=1).any(dim=0).nonzero()[0])
    return result


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
