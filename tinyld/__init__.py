"""tinyld — see how finetuning changes a language model: Δlog π ≈ −η·A·K·G as tensors you can print.

The core import is light: numpy + torch. Tokenizers, plots and the Hugging Face import load on demand.
"""
from tinyld.model import GPT, GPTConfig
from tinyld.runtime import VERSION as __version__
from tinyld.runtime import TinyldError, TrainingDiverged, pick_device, seed_everything

__all__ = ["GPT", "GPTConfig", "TinyldError", "TrainingDiverged", "pick_device", "seed_everything", "__version__"]
