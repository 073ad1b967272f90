"""`python -m musicgen <command>`: the command-line front of the same Predictor Cog serves."""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import logging
import shutil
import sys
import types
import typing
from pathlib import Path

from musicgen.errors import InputError, WeightsError
from musicgen.weights import REPOSITORY, weights_root

PREDICT_FILE = REPOSITORY / "predict.py"
TRUE_WORDS = ("true", "1", "yes")
FALSE_WORDS = ("false", "0", "no")


def load_predictor_class(path: Path = PREDICT_FILE) -> type:
    """Import predict.py by path, as Cog does, and return its Predictor class."""
    spec = importlib.util.spec_from_file_location("predict", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("predict", module)
    spec.loader.exec_module(module)
    return module.Predictor


def input_fields(predictor_class: type) -> dict[str, tuple[type, object]]:
    """The predict() inputs in declaration order: name -> (value type, default)."""
    fields = {}
    hints = typing.get_type_hints(predictor_class.predict)
    for name, parameter in inspect.signature(predictor_class.predict).parameters.items():
        if name == "self":
            continue
        value_type = hints[name]
        if typing.get_origin(value_type) in (typing.Union, types.UnionType):
            value_type = next(arg for arg in typing.get_args(value_type) if arg is not type(None))
        fields[name] = (value_type, getattr(parameter.default, "default", parameter.default))
    return fields


def parse_value(name: str, text: str, value_type: type) -> object:
    """Turn `-i name=text` into the schema's type, as `cog predict` does."""
    try:
        if value_type is bool:
            if text.lower() not in TRUE_WORDS + FALSE_WORDS:
                raise ValueError
            return text.lower() in TRUE_WORDS
        if value_type is int:
            return int(text)
        if value_type is float:
            return float(text)
        if value_type is str:
            return text
    except ValueError:
        raise InputError(f"{name}={text!r} is not a valid {value_type.__name__}.") from None
    path = Path(text).expanduser()
    if not path.is_file():
        raise InputError(f"{name}={text!r}: no such file.")
    return value_type(path.resolve())


def parse_inputs(pairs: list[str], fields: dict[str, tuple[type, object]]) -> dict[str, object]:
    """Every input's value: the defaults, overridden by `-i key=value` pairs."""
    values = {name: default for name, (_, default) in fields.items()}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        if not sep:
            raise InputError(f"-i {pair!r} must be written key=value.")
        if name not in fields:
            raise InputError(f"unknown input {name!r}; the inputs are: {', '.join(fields)}.")
        values[name] = parse_value(name, text, fields[name][0])
    return values


def run_predict(args: argparse.Namespace) -> int:
    predictor_class = load_predictor_class()
    values = parse_inputs(args.input, input_fields(predictor_class))
    predictor = predictor_class()
    predictor.setup()
    result = Path(predictor.predict(**values))
    output = Path(args.output).resolve() if args.output else Path.cwd() / result.name
    if output.suffix.lower() != result.suffix.lower():
        raise InputError(f"-o {args.output}: the output is {result.suffix} audio; name the file *{result.suffix}.")
    output.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(result, output)
    print(f"output: {output}")
    print(f"seed: {predictor.service.last_seed}")
    return 0


def run_demo_weights(args: argparse.Namespace) -> int:
    from musicgen.demo import write_demo_weights

    root = Path(args.directory).resolve()
    write_demo_weights(root)
    print(f"demo weights written to {root}")
    return 0


def run_serve(args: argparse.Namespace) -> int:
    from musicgen.server import serve

    serve(args.host, args.port, args.upload_url)  # replaces this process with the server
    return 0


def run_download(args: argparse.Namespace) -> int:
    from musicgen.download import DownloadError, download
    from musicgen.manifest import MANIFEST

    targets = list(MANIFEST.targets) if args.all else args.models
    unknown = [name for name in targets if name not in MANIFEST.targets]
    if unknown or not targets:
        raise InputError(f"download: name models to fetch ({', '.join(MANIFEST.targets)}) or give --all.")
    root = Path(args.root).resolve() if args.root else weights_root()
    try:
        results = download(targets, root=root, workers=args.workers)
    except DownloadError as error:
        raise WeightsError(str(error)) from None
    fetched = sum(result.status == "downloaded" for result in results)
    print(f"{len(results)} files verified under {root} ({fetched} downloaded, {len(results) - fetched} already there)")
    return 0


def download_help() -> str:
    """The models `download` knows, with what they fetch and how big it is (for --help)."""
    from musicgen.manifest import MANIFEST

    lines = ["models:"]
    for name, description in MANIFEST.descriptions.items():
        lines.append(f"  {name:<14} {MANIFEST.size_summary(name):<44} {description}")
    return "\n".join(lines)


def run_bench(args: argparse.Namespace) -> int:
    from musicgen.bench import main

    return main(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m musicgen", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    predict = commands.add_parser("predict", help="run one prediction through predict.py's Predictor")
    predict.add_argument(
        "-i",
        "--input",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an input of the schema, as with `cog predict` (repeat for each input)",
    )
    predict.add_argument("-o", "--output", help="where to copy the output file (default: ./<output name>)")
    predict.set_defaults(run=run_predict)

    demo = commands.add_parser("demo-weights", help="write tiny random checkpoints in the released formats")
    demo.add_argument("directory", nargs="?", default=None, help="the weights root (default: the configured one)")
    demo.set_defaults(run=run_demo_weights)

    fetch = commands.add_parser(
        "download",
        help="fetch the real checkpoints into the weights root (verified, resumable)",
        description="Fetch the checkpoints into the weights root, in the layout the loaders read: in parallel, "
        "resumable, each file verified (size, sha256) and renamed into place only when complete. "
        "The hub endpoint is $HF_ENDPOINT (default https://huggingface.co).",
        epilog=download_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    fetch.add_argument("models", nargs="*", metavar="MODEL", help="models to fetch (listed below)")
    fetch.add_argument("--all", action="store_true", help="fetch every model")
    fetch.add_argument("--root", help="the weights root (default: $MUSICGEN_WEIGHTS or weights/)")
    fetch.add_argument("--workers", type=int, default=4, help="files fetched at once (default: 4)")
    fetch.set_defaults(run=run_download)

    serve = commands.add_parser("serve", help="start the real Cog HTTP server on predict.py, as the container does")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    serve.add_argument("--port", type=int, default=5000, help="port to listen on (default: 5000)")
    serve.add_argument("--upload-url", help="PUT output files to this URL/ instead of returning data: URIs")
    serve.set_defaults(run=run_serve)

    bench = commands.add_parser(
        "bench",
        help="time stock audiocraft and our Predictor side by side on random checkpoints",
        description="Interleaved runs, each in a fresh process, of stock audiocraft (get_pretrained, generate, "
        "audio_write) and predict.py's Predictor on the same random-weight checkpoints (built once under "
        "<weights root>/bench/), with the same seed: times, memory, and whether the tokens are identical. "
        "Exit status 1 when they are not.",
    )
    from musicgen.bench import add_arguments

    add_arguments(bench)
    bench.set_defaults(run=run_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "directory", "") is None:
        args.directory = str(weights_root())
    try:
        return args.run(args)
    except (InputError, WeightsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
