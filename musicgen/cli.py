"""`python -m musicgen <command>`: the command-line front of the same Predictor (and train function) Cog serves."""

from __future__ import annotations

import argparse
import asyncio
import logging
import shutil
import sys
import time
from pathlib import Path

from musicgen.boot import FORMAT, boot
from musicgen.errors import CapacityError, InputError, SettingsError, TrainingError, WeightsError
from musicgen.input_rules import is_url
from musicgen.serving.entry_points import (
    input_fields,
    load_predictor_class,
    load_streaming_predictor_class,
    load_train_function,
)
from musicgen.serving.launch import serve
from musicgen.settings import Settings
from musicgen.weights.download import DownloadError, download
from musicgen.weights.layout import ADAPTER_FILE
from musicgen.weights.manifest import MANIFEST

WEIGHTS_HELP = "a fine-tuned LM checkpoint (file, folder or URL) served in place of its base (default: $COG_WEIGHTS)"
TRUE_WORDS = ("true", "1", "yes")
FALSE_WORDS = ("false", "0", "no")


# Text inputs that name a file (a URL over HTTP): from the command line also a local file, as a file input.
FILE_TEXT_INPUTS = ("lora_weights",)


def parse_value(name: str, text: str, value_type: type) -> object:
    """Turn `-i name=text` into the schema's type, as `cog predict` does."""
    if name in FILE_TEXT_INPUTS:
        value_type = Path
    try:
        if value_type is bool:
            if text.lower() not in TRUE_WORDS + FALSE_WORDS:
                raise ValueError
            return text.lower() in TRUE_WORDS
        if value_type is int:
            return int(text) if text.strip().lstrip("+-").isdigit() else float(text)  # 7.0: Request takes 7
        if value_type is float:
            return float(text)
        if value_type is str:
            return text
    except ValueError:
        raise InputError(f"{name}={text!r} is not a valid {value_type.__name__}.") from None
    if is_url(text):
        return text  # fetched by the prediction, under the same limits as over HTTP
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


def weights_source(args: argparse.Namespace) -> str | None:
    """--weights, else COG_WEIGHTS (what Cog's runtime hands setup()), else None."""
    return args.weights or args.settings.fine_tuned


def run_predict(args: argparse.Namespace) -> int:
    predictor_class = load_streaming_predictor_class() if args.stream else load_predictor_class()
    values = parse_inputs(args.input, input_fields(predictor_class))
    predictor = predictor_class()
    predictor.setup(weights=weights_source(args))
    if args.stream:
        output = write_stream(asyncio.run(predictor.predict(**values)), args.output)
    else:
        result = Path(asyncio.run(predictor.predict(**values)))
        output = output_path(args.output, result.suffix, result.name)
        shutil.copyfile(result, output)
    print(f"output: {output}")
    # Imported here, not at the top: it loads torch, which no other command needs at start.
    from musicgen.audio.encode import read_metadata

    print(f"seed: {read_metadata(output)['seed']}")  # as the file records it
    return 0


def output_path(requested: str | None, suffix: str, default_name: str) -> Path:
    """Where -o puts the output (default: ./<its name>); InputError when its suffix is not the audio's."""
    output = Path(requested).resolve() if requested else Path.cwd() / default_name
    if output.suffix.lower() != suffix.lower():
        raise InputError(f"-o {requested}: the output is {suffix} audio; name the file *{suffix}.")
    output.parent.mkdir(parents=True, exist_ok=True)
    return output


def write_stream(items, requested: str | None) -> Path:
    """predict --stream: each item of the streaming predictor's iterator copied as it comes to
    <output>.partNNN<suffix>, a line for each; the last item is the whole piece, moved to -o."""
    start, parts, output = time.monotonic(), [], None
    for item in items:
        item = Path(item)
        output = output or output_path(requested, item.suffix, item.name.replace("-part001", ""))
        part = output.with_name(f"{output.stem}.part{len(parts) + 1:03d}{output.suffix}")
        shutil.copyfile(item, part)
        parts.append(part)
        print(f"part {len(parts)}: {part.name}, {_seconds(part)} of audio, {time.monotonic() - start:.1f} s after the start",
              flush=True)  # fmt: skip
    parts[-1].replace(output)  # the last is the whole piece (the others are the chunks that made it)
    return output


def _seconds(path: Path) -> str:
    import soundfile  # here, not at the top: `serve` stays running as the server's parent without it

    try:
        return f"{soundfile.info(str(path)).duration:.2f} s"
    except RuntimeError:  # a format this libsndfile cannot read
        return "some"


def run_demo_weights(args: argparse.Namespace) -> int:
    # Imported when the command runs (after configure_hub): it loads torch, audiocraft and transformers.
    from musicgen.demo.builders import write_demo_weights

    root = Path(args.directory).resolve()
    write_demo_weights(root)
    print(f"demo weights written to {root}")
    return 0


def run_train(args: argparse.Namespace) -> int:
    train = load_train_function()
    values = parse_inputs(args.input, input_fields(train))
    if values["dataset_path"] is None:
        raise InputError("dataset_path is required: -i dataset_path=<an archive of audio files, or one audio file>.")
    if is_url(values["dataset_path"]):
        raise InputError(
            f"dataset_path={values['dataset_path']!r}: the command line trains on a local file; download it first "
            f"(the HTTP server's POST /trainings takes URLs)."
        )
    folder = Path(args.output).resolve()
    try:
        folder.mkdir(parents=True, exist_ok=True)  # before training: a bad -o must not cost a whole run
    except OSError as error:
        raise InputError(f"-o {args.output}: cannot make this folder ({error.strerror}).") from None
    result = Path(train(**values).weights)
    dest = folder / result.name  # state_dict.bin, or a LoRA training's adapter.safetensors
    shutil.move(result, dest)
    shutil.rmtree(result.parent, ignore_errors=True)  # train.py's own folder, now empty
    print(f"{'adapter' if dest.name == ADAPTER_FILE else 'checkpoint'}: {dest}")
    print(f"serve it with: python -m musicgen predict --weights {dest} -i prompt=...")
    return 0


def run_serve(args: argparse.Namespace) -> int:
    # runs the server as this process's child until it exits (musicgen.serving.supervisor)
    serve(args.host, args.port, args.upload_url, train=args.train, weights=weights_source(args), stream=args.stream)
    return 0


def run_download(args: argparse.Namespace) -> int:
    targets = list(MANIFEST.targets) if args.all else args.models
    unknown = [name for name in targets if name not in MANIFEST.targets]
    if unknown or not targets:
        raise InputError(f"download: name models to fetch ({', '.join(MANIFEST.targets)}) or give --all.")
    settings: Settings = args.settings
    root = Path(args.root).resolve() if args.root else settings.weights_root
    try:
        results = download(
            targets, root=root, hub=settings.hub_endpoint, token=settings.hub_token, workers=args.workers
        )
    except DownloadError as error:
        raise WeightsError(str(error)) from None
    fetched = sum(result.status == "downloaded" for result in results)
    print(f"{len(results)} files verified under {root} ({fetched} downloaded, {len(results) - fetched} already there)")
    return 0


def download_help() -> str:
    """The models `download` knows, with what they fetch and how big it is (for --help)."""
    lines = ["models:"]
    for name, description in MANIFEST.descriptions.items():
        lines.append(f"  {name:<14} {MANIFEST.size_summary(name):<44} {description}")
    return "\n".join(lines)


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
    predict.add_argument("--weights", help=WEIGHTS_HELP)
    predict.add_argument(
        "--stream",
        action="store_true",
        help="the streaming model: write each chunk as it is made (<output>.part001.wav, ...), then the whole piece",
    )
    predict.set_defaults(run=run_predict)

    training = commands.add_parser(
        "train",
        help="fine-tune a model's LM on your audio through train.py, as `cog train` does",
        description="Fine-tune a served model's LM on an archive of audio files (captions in same-named .txt "
        "files) through train.py, with the inputs of `cog train`. Writes <dir>/state_dict.bin, which "
        "`predict --weights` and `serve --weights` serve.",
    )
    training.add_argument(
        "-i", "--input", action="append", default=[], metavar="KEY=VALUE", help="an input of train.py (repeat)"
    )
    training.add_argument("-o", "--output", required=True, metavar="DIR", help="the folder to write the checkpoint to")
    training.set_defaults(run=run_train)

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
    serve.add_argument("--weights", help=WEIGHTS_HELP)
    serve.add_argument(
        "--train", action="store_true", help="serve trainings (POST /trainings, train.py) instead of predictions"
    )
    serve.add_argument(
        "--stream",
        action="store_true",
        help="serve the streaming model (streaming/predict.py): the audio as it is made, over server-sent events",
    )
    serve.set_defaults(run=run_serve)

    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format=FORMAT)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.settings = boot()  # every setting checked once, before any command imports audiocraft
        if getattr(args, "directory", "") is None:
            args.directory = str(args.settings.weights_root)
        return args.run(args)
    except (InputError, SettingsError, WeightsError, CapacityError, TrainingError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
