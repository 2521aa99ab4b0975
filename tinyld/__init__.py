"""tinyld — see how finetuning changes a language model: Δlog π ≈ −η·A·K·G as tensors you can print.

The core import is light: numpy + torch. Tokenizers, plots and the Hugging Face import load on demand.
"""
__version__ = "0.1.0"

from tinyld.runtime import TinyldError, TrainingDiverged, pick_device, seed_everything  # noqa: E402
from tinyld.model import GPT, GPTConfig  # noqa: E402

__all__ = ["GPT", "GPTConfig", "TinyldError", "TrainingDiverged", "pick_device", "seed_everything", "__version__"]
