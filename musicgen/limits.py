"""What a caller may ask for: the service's fixed limits and choices, as plain data (imports nothing).

musicgen.request (predictions) and musicgen.train.options (trainings) enforce them; the layers
below (audio, train, generate) read them from here, never from the request module.
"""

NORMALIZATION_STRATEGIES = ("loudness", "clip", "peak", "rms")  # audiocraft's audio_write strategies
OUTPUT_FORMATS = ("wav", "mp3")
MIN_DURATION = 1  # seconds
MAX_DURATION = 60  # seconds; past 30 s generation runs in overlapping windows
MAX_CLASSIFIER_FREE_GUIDANCE = 30
MIN_SAMPLING_TEMPERATURE = 0.01  # below it logits / temperature overflow (float16 on GPU first)
MAX_PROMPT_CHARACTERS = 2000  # about T5's 512-token context; longer prompts only cost time
MAX_SEED = 2**32 - 1
RANDOM_SEED = -1  # like None: draw a random seed
MAX_CONTEXT = 30  # seconds the LM attends to; a continuation window may not be longer
MIN_INPUT_SECONDS = 0.1  # shorter inputs carry no usable melody or prompt
MAX_MP3_CHANNELS = 2  # MP3 holds mono or stereo
URL_SCHEMES = ("http", "https", "data")  # what a file input given as text may be
