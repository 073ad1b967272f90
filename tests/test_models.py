"""Loading: the same models as audiocraft's get_pretrained, each loaded once, the memory report,
fine-tuned checkpoints (served in place of their base, or refused with a clear error).

Runs in-process on the session's demo weights (conftest.py points the caches there before import).
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import threading

import omegaconf
import pytest
import torch
from helpers import LoopbackServer, fine_tune, sines

from musicgen.errors import WeightsError
from musicgen.generate import seed_everything
from musicgen.settings import read_settings
from musicgen.versions import GENERATING
from musicgen.weights import layout, store

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
SEED = 1234
PROMPT = "calm piano"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def loaded(settings):
    from musicgen.models.load import load_models

    return load_models(settings)


def tokens(model, seed: int = SEED, melody: torch.Tensor | None = None) -> torch.Tensor:
    """The tokens [1, K, S] of 0.5 s generated with `seed`, text only or with a melody [1, 1, T].

    Seeded as the service seeds: Python's random too, which demucs draws its stem-separation shifts from."""
    seed_everything(seed)
    model.set_generation_params(duration=0.5)
    with torch.inference_mode():
        if melody is None:
            return model.generate([PROMPT], return_tokens=True)[1]
        return model.generate_with_chroma([PROMPT], melody, 32000, return_tokens=True)[1]


def sine(seconds: float = 1.0) -> torch.Tensor:
    """A 440 Hz melody [1, 1, T] at 32 kHz."""
    return torch.from_numpy(sines(seconds, 32000, amplitude=0.5).T).float()[None]


def assert_same_tensors(ours: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> None:
    assert ours.keys() == reference.keys()
    for key, tensor in reference.items():
        mine = ours[key]
        assert (mine.dtype, mine.device, mine.shape) == (tensor.dtype, tensor.device, tensor.shape), key
        assert torch.equal(mine, tensor), key


def module_tensors(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer, non-persistent buffers included (the state dict leaves those out)."""
    return {**dict(module.named_parameters()), **{f"buffer:{k}": v for k, v in module.named_buffers()}}


# ---------------------------------------------------------------------------------------------
# Same models as audiocraft's own get_pretrained.


@pytest.mark.parametrize("device", DEVICES)
def test_loads_exactly_what_get_pretrained_loads(demo_weights, settings, device: str) -> None:
    from audiocraft.models import MusicGen

    from musicgen.models.load import load_models

    ours = load_models(settings.replace(device=device))
    for version in ("melody", "large"):
        reference = MusicGen.get_pretrained(str(layout.model_dir(version, demo_weights)), device=device)
        model = ours.get(version).model
        assert_same_tensors(model.lm.state_dict(), reference.lm.state_dict())
        assert_same_tensors(module_tensors(model.lm), module_tensors(reference.lm))
        assert_same_tensors(module_tensors(model.compression_model), module_tensors(reference.compression_model))
        assert not model.lm.training and not model.compression_model.training
        assert model.lm.cfg == reference.lm.cfg
        assert (model.max_duration, model.sample_rate, model.frame_rate) == (
            reference.max_duration,
            reference.sample_rate,
            reference.frame_rate,
        )
        for name, conditioner in reference.lm.condition_provider.conditioners.items():
            mine = model.lm.condition_provider.conditioners[name]
            assert vars(mine).keys() == vars(conditioner).keys()
            for attribute in ("match_len_on_eval", "_use_masking", "device", "name", "finetune"):
                assert getattr(mine, attribute, None) == getattr(conditioner, attribute, None)
            for outside in ("t5", "demucs"):  # held outside the LM's state dict
                if outside in vars(conditioner):
                    assert_same_tensors(module_tensors(vars(mine)[outside]), module_tensors(vars(conditioner)[outside]))
                    assert vars(mine)[outside].training == vars(conditioner)[outside].training
        assert torch.equal(tokens(model), tokens(reference))
        if version == "melody":
            assert torch.equal(tokens(model, melody=sine()), tokens(reference, melody=sine()))


def test_each_model_is_loaded_once_and_shared(settings, monkeypatch) -> None:
    import demucs.pretrained
    from audiocraft.models import loaders
    from audiocraft.modules import conditioners
    from transformers import T5EncoderModel, T5Tokenizer

    from musicgen.models.load import load_models

    calls: dict[str, list] = {"t5": [], "tokenizer": [], "demucs": [], "lm": [], "codec": []}

    def counting(kind: str, function):
        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            calls[kind].append(args[0])
            return function(*args, **kwargs)

        return staticmethod(wrapper) if kind in ("t5", "tokenizer") else wrapper

    monkeypatch.setattr(T5EncoderModel, "from_pretrained", counting("t5", T5EncoderModel.from_pretrained))
    monkeypatch.setattr(T5Tokenizer, "from_pretrained", counting("tokenizer", T5Tokenizer.from_pretrained))
    monkeypatch.setattr(demucs.pretrained, "get_model", counting("demucs", demucs.pretrained.get_model))
    monkeypatch.setattr(loaders, "load_lm_model", counting("lm", loaders.load_lm_model))
    monkeypatch.setattr(loaders, "load_compression_model", counting("codec", loaders.load_compression_model))

    random_init = torch.nn.init.normal_
    models = load_models(settings)
    assert calls["t5"] == ["t5-base"] and calls["tokenizer"] == ["t5-base"]
    assert calls["demucs"] == ["htdemucs"]  # the melody LM's chroma conditioner; large has none
    assert sorted(calls["lm"]) == sorted(str(models.checkpoints[version]) for version in ("melody", "large"))
    assert len(calls["codec"]) == 1

    melody, large = models.get("melody").model, models.get("large").model
    t5 = [model.lm.condition_provider.conditioners["description"] for model in (melody, large)]
    assert t5[0].t5 is t5[1].t5 and t5[0].t5_tokenizer is t5[1].t5_tokenizer
    assert "t5" not in dict(melody.lm.named_children()) and not any("t5" in k for k in melody.lm.state_dict())
    assert melody.compression_model is large.compression_model is models.codec

    # The loading hooks are gone once setup is over.
    assert conditioners.T5EncoderModel is T5EncoderModel and conditioners.T5Tokenizer is T5Tokenizer
    assert loaders.load_lm_model_ckpt.__module__ == "audiocraft.models.loaders"
    assert demucs.pretrained.get_model.__wrapped__ is not None  # our counter, not a loading hook
    assert torch.nn.init.normal_ is random_init

    # Models loaded on their first request share the same T5, HT-Demucs and EnCodecs.
    stereo_melody, melody_large = models.get("stereo-melody-large").model, models.get("melody-large").model
    assert calls["t5"] == ["t5-base"] and calls["demucs"] == ["htdemucs"]
    assert len(calls["codec"]) == 2  # melody's EnCodec file, and the Hugging Face one the others point to
    chroma = [m.lm.condition_provider.conditioners["self_wav"] for m in (melody, stereo_melody, melody_large)]
    assert chroma[0].demucs is chroma[1].demucs is chroma[2].demucs
    assert stereo_melody.lm.condition_provider.conditioners["description"].t5 is t5[0].t5
    assert stereo_melody.compression_model.model is melody_large.compression_model


def test_random_init_is_skipped_only_where_asked() -> None:
    from musicgen.models.cold_start import fast_loading, skipping_random_init

    with fast_loading():
        filled = torch.nn.init.normal_(torch.zeros(1000))
        assert filled.abs().sum() > 0  # outside skipping_random_init: initialised as usual
        with skipping_random_init():
            assert torch.equal(torch.nn.init.normal_(torch.zeros(1000)), torch.zeros(1000))
            other: list[torch.Tensor] = []
            thread = threading.Thread(target=lambda: other.append(torch.nn.init.normal_(torch.zeros(1000))))
            thread.start()
            thread.join()
            assert other[0].abs().sum() > 0  # another thread is not affected


def test_codec_is_loaded_once_per_distinct_file(demo_weights, tmp_path) -> None:

    from musicgen.models.load import LoadedModels

    root = tmp_path / "root"
    for version in ("melody", "large"):
        folder = layout.model_dir(version, root)
        folder.mkdir(parents=True)
        shutil.copyfile(layout.model_dir(version, demo_weights) / layout.CODEC_FILE, folder / layout.CODEC_FILE)
    models = LoadedModels(device="cpu", root=root)
    assert models.codec_for("melody") is models.codec_for("large")

    package = torch.load(layout.model_dir("large", root) / layout.CODEC_FILE, weights_only=True)
    package["best_state"]["decoder.model.0.conv.conv.bias"] += 1  # a different codec
    torch.save(package, layout.model_dir("large", root) / layout.CODEC_FILE)
    models = LoadedModels(device="cpu", root=root)
    assert models.codec_for("melody") is not models.codec_for("large")


def test_the_pointer_checkpoints_share_the_hugging_face_encodec(demo_weights) -> None:
    """melody-large and the stereo models ship {'pretrained': 'facebook/encodec_32khz'}: audiocraft
    loads transformers' EncodecModel from the hub cache, once for the three."""
    from audiocraft.models.encodec import HFEncodecCompressionModel

    from musicgen.models.load import LoadedModels

    pointer = torch.load(layout.model_dir("stereo-large", demo_weights) / layout.CODEC_FILE, weights_only=True)
    assert pointer["pretrained"] == layout.ENCODEC_HF_NAME and pointer["exported"] is True
    models = LoadedModels(device="cpu", root=demo_weights)
    codecs = [models.codec_for(version) for version in ("melody-large", "stereo-large", "stereo-melody-large")]
    assert isinstance(codecs[0], HFEncodecCompressionModel) and codecs[0] is codecs[1] is codecs[2]
    assert (codecs[0].sample_rate, codecs[0].frame_rate, codecs[0].num_codebooks, codecs[0].channels) == (
        32000,
        50,
        4,
        1,
    )
    assert models.codec_for("melody") is not codecs[0]


def test_pointers_exported_by_different_audiocraft_versions_load_one_encodec(demo_weights, tmp_path) -> None:
    """The released pointer files were exported separately: their bytes may differ (the 'version'
    they record) while they name the same EnCodec, which is then loaded once."""
    from musicgen.models.load import LoadedModels

    root = tmp_path / "root"
    shutil.copytree(layout.hf_home(demo_weights), layout.hf_home(root))
    for version, exported_by in (("stereo-large", "1.2.0"), ("melody-large", "1.3.0")):
        folder = layout.model_dir(version, root)
        folder.mkdir(parents=True)
        pointer = {"pretrained": layout.ENCODEC_HF_NAME, "exported": True, "version": exported_by}
        torch.save(pointer, folder / layout.CODEC_FILE)
    files = [(layout.model_dir(v, root) / layout.CODEC_FILE).read_bytes() for v in ("stereo-large", "melody-large")]
    assert files[0] != files[1]
    models = LoadedModels(device="cpu", root=root)
    assert models.codec_for("stereo-large") is models.codec_for("melody-large")


# ---------------------------------------------------------------------------------------------
# Memory report.


def tensor_bytes(module: torch.nn.Module) -> int:
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in module.parameters()}
    storages |= {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in module.buffers()}
    return sum(storages.values())


def test_memory_report_counts_each_component_once(loaded) -> None:
    report = loaded.memory_report()
    assert set(report) == {"lm:melody", "lm:large", "codec", "t5", "demucs", "process_rss"}
    melody, large = loaded.get("melody").model, loaded.get("large").model
    assert report["lm:melody"] == tensor_bytes(melody.lm) and report["lm:large"] == tensor_bytes(large.lm)
    assert report["codec"] == tensor_bytes(loaded.codec)
    assert report["t5"] == tensor_bytes(melody.lm.condition_provider.conditioners["description"].t5)
    assert report["demucs"] == tensor_bytes(melody.lm.condition_provider.conditioners["self_wav"].demucs)
    components = sum(size for name, size in report.items() if name != "process_rss")
    assert report["process_rss"] > components > 0


def test_memory_report_adds_mbd_once_loaded(settings, caplog) -> None:
    from musicgen.models.load import load_models

    models = load_models(settings, ("large",))
    assert "mbd" not in models.memory_report()
    with caplog.at_level("INFO", logger="musicgen"):
        mbd = models.mbd
    assert models.mbd is mbd and mbd.codec_model is models.codec
    report = models.memory_report()
    assert report["mbd"] == sum(tensor_bytes(p.model) + tensor_bytes(p.schedule.sample_processor) for p in mbd.DPs)
    assert "memory with MultiBand Diffusion" in caplog.text


def test_each_lm_keeps_a_bounded_number_of_codebook_patterns(loaded) -> None:
    from audiocraft.modules.codebooks_patterns import DelayedPatternProvider

    from musicgen.models.memory import PATTERN_CACHE_ENTRIES

    provider = loaded.get("melody").model.lm.pattern_provider
    reference = DelayedPatternProvider(n_q=provider.n_q, delays=provider.delays)
    for timesteps in range(10, 10 + 3 * PATTERN_CACHE_ENTRIES):  # every duration a server sees
        assert provider.get_pattern(timesteps).layout == reference.get_pattern(timesteps).layout
    assert provider.get_pattern.cache_info().currsize == PATTERN_CACHE_ENTRIES
    assert reference.get_pattern.cache_info().currsize == 3 * PATTERN_CACHE_ENTRIES  # audiocraft's own keeps 100


# A fresh process: decodes and re-encodes with the demo EnCodec at 120 lengths (a server meets a new
# one with almost every request), then prints how much its RSS grew after the first few.
CONVOLUTIONS_AT_MANY_LENGTHS = """
import sys, torch
from audiocraft.models.loaders import load_compression_model
from musicgen.models.memory import bound_onednn_cache, process_rss, release_freed_memory
from musicgen.settings import read_settings
bound_onednn_cache(read_settings().onednn_cache_entries)
torch.set_num_threads(1)
codec = load_compression_model(sys.argv[1], device="cpu")
with torch.no_grad():
    for frames in range(50, 170):
        codec.encode(codec.decode(torch.randint(0, 2048, (1, 4, frames))))
        release_freed_memory()
        if frames == 55:
            start = process_rss()
print((process_rss() - start) / 1e6)
"""


@pytest.mark.slow
def test_onednn_keeps_a_bounded_primitive_cache_unless_the_operator_sets_one(demo_weights) -> None:
    from musicgen.settings import ONEDNN_CACHE_ENV

    codec = demo_weights / "musicgen-large" / layout.CODEC_FILE
    env = {key: value for key, value in os.environ.items() if key != ONEDNN_CACHE_ENV}

    def growth_mb(**extra: str) -> float:
        command = [sys.executable, "-c", CONVOLUTIONS_AT_MANY_LENGTHS, str(codec)]
        done = subprocess.run(command, env={**env, **extra}, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        return float(done.stdout.split()[-1])

    bounded, operators = growth_mb(), growth_mb(**{ONEDNN_CACHE_ENV: "1024"})  # 1024: oneDNN's default
    assert bounded < operators / 2, (bounded, operators)


@pytest.mark.slow
def test_setup_logs_load_times_and_memory_to_stderr(demo_weights) -> None:
    """Cog's worker has no logging handler: setup() adds one on stderr (once)."""
    code = (
        "from musicgen.serving.entry_points import load_predictor_class\n"
        "predictor = load_predictor_class()()\n"
        "predictor.setup()\n"
        "from musicgen.boot import configure_logging\n"
        "configure_logging()\n"
        "import logging; logging.getLogger('musicgen.test').info('once')\n"
    )
    env = dict(os.environ, MUSICGEN_WEIGHTS=str(demo_weights))
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.count("INFO musicgen.test: once") == 1
    assert "INFO musicgen.models.load: loaded melody, large on cpu in" in result.stderr
    assert result.stderr.count("INFO musicgen.models.load: memory after setup: lm:melody") == 1
    # Only what matters to the user: no library noise at start-up.
    for noise in ("XFORMERS", "weight_norm", "Loading weights", "WARNING"):
        assert noise not in result.stderr, result.stderr


# ---------------------------------------------------------------------------------------------
# Fine-tuned checkpoints.


@pytest.mark.parametrize("version", ["melody", "large"])
def test_fine_tuned_checkpoint_replaces_its_base(loaded, settings, tmp_path, version: str) -> None:
    from audiocraft.models import loaders

    from musicgen.models.load import load_models

    path = fine_tune(version, tmp_path / "my-finetune" / layout.LM_FILE)
    models = load_models(settings, fine_tuned=str(path.parent))  # a folder holding state_dict.bin works too
    other = "large" if version == "melody" else "melody"
    assert models.checkpoints[version] == path.resolve() and models.checkpoints[other] == loaded.checkpoints[other]
    assert set(models.models) == {"melody", "large"}

    tuned, base = models.get(version).model, loaded.get(version).model
    reference = loaders.load_lm_model(str(path), device="cpu")  # audiocraft's own loader
    assert_same_tensors(tuned.lm.state_dict(), reference.state_dict())
    assert not torch.equal(tuned.lm.state_dict()["linears.0.weight"], base.lm.state_dict()["linears.0.weight"])
    assert not torch.equal(tokens(tuned), tokens(base))
    assert torch.equal(tokens(models.get(other).model), tokens(loaded.get(other).model))  # the other is the base
    assert tuned.compression_model is models.get(other).model.compression_model
    if version == "melody":
        conditioner = tuned.lm.condition_provider.conditioners["self_wav"]
        assert conditioner.match_len_on_eval and not conditioner._use_masking


@pytest.mark.parametrize(
    ("tuned_from", "replaces"),
    [("stereo-large", "stereo-large"), ("stereo-melody-large", "stereo-melody-large"), ("melody-large", "melody")],
)
def test_a_fine_tune_replaces_the_served_model_its_conditioners_and_channels_fit(
    loaded, settings, tmp_path, tuned_from, replaces
):
    """A stereo fine-tune replaces a stereo model (loaded at setup, as the operator gave it); a
    mono melody one the first preloaded melody model."""
    from musicgen.models.load import load_models

    path = fine_tune(tuned_from, tmp_path / "tuned.bin")
    models = load_models(settings, fine_tuned=str(path))
    assert models.checkpoints[replaces] == path.resolve()
    assert replaces in models.preloaded and replaces in models.models
    tuned = models.get(replaces).model
    assert tuned.audio_channels == (2 if tuned_from.startswith("stereo") else 1)
    assert not torch.equal(tokens(tuned), tokens(loaded.get(tuned_from).model))


def test_setup_serves_the_weights_argument(demo_weights, tmp_path) -> None:
    from musicgen.serving.entry_points import load_predictor_class

    path = fine_tune("large", tmp_path / "large-tuned.bin")
    predictor = load_predictor_class()()
    predictor.setup(weights=str(path))
    assert predictor.runner.service.models.checkpoints["large"] == path.resolve()


def set_key(dotted: str, value):
    def edit(cfg, package):
        omegaconf.OmegaConf.update(cfg, dotted, value, force_add=True)

    return edit


REFUSALS = {
    "codebooks": (
        set_key("transformer_lm.n_q", 8),
        "transformer_lm.n_q \\(codebooks\\) is 8; large over its EnCodec has 4",
    ),
    "codebook size": (set_key("transformer_lm.card", 1024), "transformer_lm.card \\(codebook size\\) is 1024"),
    "sample rate": (set_key("sample_rate", 16000), "sample_rate is 16000; large over its EnCodec has 32000"),
    "stereo": (
        set_key("interleave_stereo_codebooks.use", True),  # fits stereo-large, but with mono's codebooks
        "transformer_lm.n_q \\(codebooks\\) is 4; stereo-large over its EnCodec has 8",
    ),
    "dimension": (
        set_key("transformer_lm.dim", 128),
        "its weight emb.0.weight is \\(2049, 64\\), its config .* says \\(2049, 128\\)",
    ),
    "layers": (set_key("transformer_lm.num_layers", 3), "it has 2 transformer layers, its config says 3"),
    "text encoder": (set_key("conditioners.description.t5.name", "t5-large"), "its text encoder is 't5-large'"),
    "fine-tuned T5": (set_key("conditioners.description.t5.finetune", True), "finetune: true"),
    "conditioners": (
        set_key("conditioners.genre", {"model": "lut", "lut": {"n_bins": 10}}),
        "its conditioners are \\{'description': 't5', 'genre': 'lut'\\}",
    ),
    "not an LM": (set_key("lm_model", "transformer_lm_magnet"), "lm_model is 'transformer_lm_magnet'"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_fine_tuned_checkpoint_that_does_not_fit_is_refused(loaded, tmp_path, case: str) -> None:
    from musicgen.models.fine_tuned import check_fine_tuned

    edit, message = REFUSALS[case]
    path = fine_tune("large", tmp_path / "bad.bin", edit)
    with pytest.raises(WeightsError, match=message):
        check_fine_tuned(path, loaded.preloaded, list(loaded.checkpoints), loaded.codec_for)


def test_files_that_are_not_lm_checkpoints_are_refused(loaded, settings, tmp_path) -> None:
    from musicgen.models.fine_tuned import check_fine_tuned
    from musicgen.models.load import load_models

    codecs = (loaded.preloaded, list(loaded.checkpoints), loaded.codec_for)
    codec_file = (
        layout.model_dir("large", settings.weights_root) / layout.CODEC_FILE
    )  # an audiocraft export, but of EnCodec
    with pytest.raises(WeightsError, match="lm_model is None; only MusicGen's 'transformer_lm' is served"):
        check_fine_tuned(codec_file, *codecs)

    torch.save({"state_dict": {}}, tmp_path / "other.bin")
    with pytest.raises(WeightsError, match="needs the keys 'xp.cfg' and 'best_state', it has \\['state_dict'\\]"):
        check_fine_tuned(tmp_path / "other.bin", *codecs)

    (tmp_path / "notes.txt").write_text("not a checkpoint")
    with pytest.raises(WeightsError, match="is not a torch checkpoint"):
        check_fine_tuned(tmp_path / "notes.txt", *codecs)

    training = {"best_state": {"model": {}}, "xp.cfg": omegaconf.OmegaConf.create({"lm_model": "transformer_lm"})}
    torch.save(training, tmp_path / "checkpoint.th")  # what a training run saves: a pickled DictConfig
    with pytest.raises(WeightsError, match="neither an audiocraft export nor a community fine-tuner.*export_lm"):
        check_fine_tuned(tmp_path / "checkpoint.th", *codecs)

    with pytest.raises(WeightsError, match="no such file"):
        load_models(settings, fine_tuned=str(tmp_path / "missing.bin"))


@pytest.fixture
def file_server(tmp_path):
    """An HTTP server on a free loopback port serving tmp_path/served/."""
    served = tmp_path / "served"
    served.mkdir()
    server = LoopbackServer(directory=served)
    yield served, server.url
    server.close()


def test_fine_tuned_url_is_downloaded_once_into_the_weights_root(demo_weights, file_server, tmp_path) -> None:
    served, url = file_server
    source = fine_tune("melody", served / "tuned.bin")
    root = tmp_path / "root"
    path = store.fine_tuned_checkpoint(f"{url}/tuned.bin", root)
    assert path.parent.parent == root / layout.FINE_TUNED_DIR and path.name == "tuned.bin"
    assert path.read_bytes() == source.read_bytes()
    assert not list(path.parent.glob("*.part"))

    source.unlink()  # the next setup finds the verified copy without the network
    assert store.fine_tuned_checkpoint(f"{url}/tuned.bin", root) == path

    with pytest.raises(WeightsError, match="fine-tuned checkpoint: .*HTTP 404"):
        store.fine_tuned_checkpoint(f"{url}/missing.bin", root)


def test_the_operator_chooses_which_versions_setup_loads(settings):
    """Setup loads what MUSICGEN_MODEL_VERSIONS names; every other version with weights in place
    loads on its first request."""
    from musicgen.request import Request
    from musicgen.serving.service import MusicGenService

    chosen = read_settings({"MUSICGEN_MODEL_VERSIONS": "large", "MUSICGEN_DEVICE": "cpu"})
    service = MusicGenService.load(settings.replace(model_versions=chosen.model_versions, device=chosen.device))
    assert list(service.models.models) == ["large"] and service.models.device == "cpu"
    assert service.models.preloaded == ("large",)
    assert set(service.models.servable) == set(GENERATING)
    assert service.predict(Request(model_version="large", prompt="calm", duration=1, seed=0)).path.is_file()
    assert service.predict(Request(model_version="melody", prompt="calm", duration=1, seed=0)).path.is_file()
    assert list(service.models.models) == ["large", "melody"]


def test_sizes_are_written_in_units_that_show_them() -> None:
    from musicgen.models.memory import format_bytes

    assert [format_bytes(size) for size in (5_540_000_000, 236_001_935, 12_345, 512)] == [
        "5.54 GB",
        "236.0 MB",
        "12.3 kB",
        "512 bytes",
    ]
