"""The defaults and limits users see, defined once: the CLI's argparse defaults, the library's keyword defaults and
the docs read them from here. Two values that differ have two names.

This module imports nothing heavy, so `maskrt --help` stays fast.
"""

from __future__ import annotations

from maskrt.core.errors import MaskrtError

#: The model configs (training/models.py builds each; README "Model configs" says what each is for).
MODEL_CONFIGS = ("slim", "r50-fpn", "r50-fpn-v2", "slim-c4", "r50-c4", "mobilenet-fpn")
#: The config `maskrt train` and `maskrt demo` use by default: the one that trains in minutes on a CPU.
DEFAULT_MODEL_CONFIG = "slim"

#: What `maskrt predict`, `serve` and `triton` show by default: detections scoring at least this.
DEFAULT_SCORE_THRESHOLD = 0.5
#: The Predictor's default: every detection the graph returns (what parity and bench compare).
KEEP_ALL_SCORES = 0.0
#: Parity: detections at or above this score must find a counterpart on the other side (recall, precision gates)
DEFAULT_SCORE_FLOOR = 0.3

#: Largest image FILE read by default (MASKRT_MAX_IMAGE_PIXELS changes it).
DEFAULT_FILE_MAX_PIXELS = 100_000_000
#: Largest image a server decodes from a REQUEST by default (`--max-megapixels`): its masks are pasted at the
#: original size, and a server holds several requests at once.
DEFAULT_REQUEST_MAX_PIXELS = 40_000_000

#: The served model's name (`serve --name`, `triton --name`, `bench --server-model`).
DEFAULT_MODEL_NAME = "maskrt"
#: Images per request and per dynamic batch of a server (`serve/triton --max-batch`).
DEFAULT_SERVER_MAX_BATCH = 8
#: How long a server's dynamic batcher waits to fill a batch (`--queue-delay-us`).
DEFAULT_QUEUE_DELAY_US = 2000
#: The top of a dynamic-batch ENGINE's batch profile when `maskrt build --max-batch` is not given.
DEFAULT_ENGINE_MAX_BATCH = 4
#: The GPUs an RTX engine is built for unless `--compute-capabilities` says otherwise: Turing (7.5) has no fp32 GEMM
#: in TensorRT-RTX, so it is left out.
DEFAULT_RTX_CAPABILITIES = ("8.6", "8.9", "12.0")
#: The TensorRT-RTX the project is tested with (pyproject.toml's test extra pins the same; a test checks they agree).
RTX_REQUIREMENT = "tensorrt-rtx-cu13==1.7.1.116"

#: `maskrt layers`: images compared, the relative L2 error that counts as a difference, and the memory of the tensors
#: marked at once per image and side (MiB).
DEFAULT_LAYER_IMAGES = 4
DEFAULT_LAYER_TOLERANCE = 0.01
DEFAULT_LAYER_CHUNK_MIB = 512
#: `maskrt quantize --max-dap-drop`: the most quantized nodes accuracy control keeps in fp32 (`--max-excluded`).
DEFAULT_MAX_EXCLUDED_NODES = 32


def check_score_threshold(value: float) -> float:
    """`value` if it is a score threshold in [0, 1]; MaskrtError otherwise (NaN included)."""
    if not 0.0 <= value <= 1.0:  # False for NaN
        raise MaskrtError(f"score_threshold must be in [0, 1], got {value}")
    return value
