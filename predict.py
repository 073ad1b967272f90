"""Cog entry point: the published MusicGen input schema, one Request, one call into the package.

Cog builds the HTTP schema by statically parsing this file, so every Input(...) stays literal.
predict() is async so that Cog's runtime may give it more than one slot (musicgen/serving/workers.py says
why): up to MUSICGEN_MAX_BATCH predictions run at once, decoding together (docs/batching.md).
From Python: `asyncio.run(predictor.predict(...))`.
"""

from typing import Optional

from cog import BasePredictor, Input, Path

from musicgen.request import Request


class Predictor(BasePredictor):
    def setup(self, weights: Optional[str] = None) -> None:
        """Load the melody and large models once, onto CUDA (float16) when present, else CPU.

        `weights` (Cog's `COG_WEIGHTS`): a fine-tuned LM checkpoint, a path or URL, served in
        place of the base model it matches (docs/fine-tuning.md).
        """
        from musicgen.serving.start import start_runner

        self.runner = start_runner(weights)

    async def predict(
        self,
        model_version: str = Input(
            description="Model to use for generation. If set to 'encode-decode', the audio specified via 'input_audio' will simply be encoded and then decoded.",
            default="melody",
            choices=[
                "melody",
                "large",
                "encode-decode",
                "melody-large",
                "stereo-large",
                "stereo-melody-large",
                "small",
                "medium",
                "stereo-small",
                "stereo-medium",
                "stereo-melody",
            ],
        ),
        prompt: Optional[str] = Input(
            description="A description of the music you want to generate.",
            default=None,
        ),
        input_audio: Optional[Path] = Input(
            description="An audio file that will influence the generated music. If `continuation` is `True`, the generated music will be a continuation of the audio file. Otherwise, the generated music will mimic the audio file's melody.",
            default=None,
        ),
        duration: int = Input(
            description="Duration of the generated audio in seconds.",
            default=8,
            le=60,
        ),
        continuation: bool = Input(
            description="If `True`, generated music will continue `melody`. Otherwise, generated music will mimic `audio_input`'s melody.",
            default=False,
        ),
        continuation_start: int = Input(
            description="Start time of the audio file to use for continuation.",
            default=0,
        ),
        continuation_end: Optional[int] = Input(
            description="End time of the audio file to use for continuation. If -1 or None, will default to the end of the audio clip.",
            default=None,
        ),
        multi_band_diffusion: bool = Input(
            description="If `True`, the EnCodec tokens will be decoded with MultiBand Diffusion.",
            default=False,
        ),
        normalization_strategy: str = Input(
            description="Strategy for normalizing audio.",
            default="loudness",
            choices=["loudness", "clip", "peak", "rms"],
        ),
        top_k: int = Input(
            description="Reduces sampling to the k most likely tokens.",
            default=250,
        ),
        top_p: float = Input(
            description="Reduces sampling to tokens with cumulative probability of p. When set to  `0` (default), top_k sampling is used.",
            default=0.0,
        ),
        temperature: float = Input(
            description="Controls the 'conservativeness' of the sampling process. Higher temperature means more diversity.",
            default=1.0,
        ),
        classifier_free_guidance: int = Input(
            description="Increases the influence of inputs on the output. Higher values produce lower-varience outputs that adhere more closely to inputs.",
            default=3,
        ),
        output_format: str = Input(
            description="Output format for generated audio.",
            default="wav",
            choices=["wav", "mp3"],
        ),
        seed: Optional[int] = Input(
            description="Seed for random number generator. If None or -1, a random seed will be used.",
            default=None,
        ),
        negative_prompt: Optional[str] = Input(
            description="What the music should not have, e.g. 'drums, vocals': classifier-free guidance steers away from it (it takes the place of the unconditional prompt). Left out or empty: no negative prompt.",
            default=None,
        ),
        lora_weights: Optional[str] = Input(
            description="A low-rank adapter (LoRA) to decode with: an http(s) URL or a data: URI of the adapter.safetensors a training with lora_rank above 0 made. Its base model_version must be the one chosen. Left out: the served weights as they are.",
            default=None,
        ),
        lora_scale: float = Input(
            description="How strongly the adapter applies: 1 as trained, 0 not at all (the base model's output), negative to steer away from its style.",
            default=1.0,
            ge=-1.0,
            le=2.0,
        ),
    ) -> Path:
        request = Request(
            model_version=model_version,
            prompt=prompt,
            input_audio=input_audio,
            duration=duration,
            continuation=continuation,
            continuation_start=continuation_start,
            continuation_end=continuation_end,
            multi_band_diffusion=multi_band_diffusion,
            normalization_strategy=normalization_strategy,
            top_k=top_k,
            top_p=top_p,
            temperature=temperature,
            classifier_free_guidance=classifier_free_guidance,
            output_format=output_format,
            seed=seed,
            negative_prompt=negative_prompt,
            lora_weights=lora_weights,
            lora_scale=lora_scale,
        )
        return Path((await self.runner.predict(request)).path)
