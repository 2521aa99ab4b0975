"""The config of ``python -m tinyld sft-dynamics``: every field checked (and resolved) when it is made."""
from __future__ import annotations

from dataclasses import dataclass, field

from tinyld.experiments.common import check_base_model, check_own_file, check_shared, fast_caps, is_real, real_defaults
from tinyld.runtime import TinyldError, check_choice, check_int, check_number
from tinyld.train import OPTIMIZERS
from tinyld.world import MODES

WORLD_RUN = {"epochs": 20, "lr": 1e-3}  # a world model's defaults
REAL_SFT = {"epochs": 8, "lr": 5e-6, "fast_epochs": 3}  # a real LLM's (AdamW, constant lr): see the lab report


@dataclass
class SFTDynamicsConfig:
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])  # world, init and data order
    modes: list[str] | None = None  # world modes (tinyld.world); None: hard and easy (your own --probes: none)
    epochs: int | None = None  # passes over the training prompts (None: 20; a real LLM: REAL_SFT's)
    optimizer: str = "adamw"  # sgd | adamw | rmsprop
    lr: float | None = None  # constant learning rate, no warm-up (None: 1e-3; a real LLM: REAL_SFT's)
    batch_size: int = 8  # prompts per step (40 training prompts: 5 steps per epoch)
    grad_clip: float = 0.0  # global gradient-norm clipping of the SFT runs (0: none, as the first-order picture)
    every: int = 0  # steps between measurements (0: once per epoch)
    pretrain_steps: int | None = None  # of a world model (tinyld.pretrained.pretrained, cached): 3000 tiny, 1000 gpt2
    model: str | None = None  # tinyld.choose: tiny (default) | gpt2 | smollm2 | a .gguf file | a Hugging Face folder
    attribution: bool = True  # the SGD attribution run (first mode; in fast mode first seed only)
    attr_lr: float = 1e-4  # its plain-SGD learning rate (no clipping, no momentum): small, so first order holds
    attr_prompts: int = 4  # training prompts u whose y_{j≠u}⁺ is attributed
    conditions: bool = False  # also run the sweep over optimizer, lr and pretraining depth
    probes: str | None = None  # a probe JSONL: your own data (a real LLM: prompts as chat turns)
    out: str = "tinyld_out/sft_dynamics"
    device: str | None = None  # auto | cpu | cuda | mps (None: cpu for tiny, where it is quickest; auto for gpt2)
    threads: int = 2  # CPU threads (pinned: the figures in the README were made with 2)
    fast: bool = False  # fewer epochs and a shallower base model: ≤ 60 s, the numbers then mean less
    preset: str | None = field(default=None, init=False)  # tiny, gpt2 or smollm2: from model
    hf: str | None = field(default=None, init=False)  # the Hugging Face folder gpt2 starts from: from model

    def __post_init__(self):
        self.probes = check_own_file(self.probes, "sft-dynamics --probes")
        if self.probes is not None:  # the world's flags mean nothing for your own probes: refused, never ignored
            given = (["--modes"] if self.modes is not None else []) + (["--conditions"] if self.conditions is True
                                                                       else [])
            if given:
                raise TinyldError(f"sft-dynamics: {', '.join(given)} choose the world's runs; your own --probes "
                                  "are the whole run: leave them out")
        check_base_model(self, "sft-dynamics", own=self.probes is not None)
        check_shared(self, "sft-dynamics")
        for name in ("attribution", "conditions", "fast"):
            if not isinstance(getattr(self, name), bool):
                raise TinyldError(f"SFTDynamicsConfig.{name} must be True or False, got {getattr(self, name)!r}")
        if is_real(self):
            if self.conditions:
                raise TinyldError(f"sft-dynamics --conditions trains 18 runs of the world model: on --model "
                                  f"{self.model} it would take hours on a CPU; leave it out")
            self.changed = real_defaults(self, {"epochs": REAL_SFT["epochs"], "lr": REAL_SFT["lr"]},
                                         {"epochs": REAL_SFT["fast_epochs"]})
            given = [f"--{k.replace('_', '-')}" for k in ("attr_lr", "attr_prompts")
                     if getattr(self, k) != SFTDynamicsConfig.__dataclass_fields__[k].default]
            if given:
                raise TinyldError(f"sft-dynamics {', '.join(given)}: on --model {self.model} there is no attribution "
                                  "run (per-example JVPs of a 135M model, out of a CPU budget): leave it out")
            self.attribution = False  # said in the run's note
        else:
            self.epochs = WORLD_RUN["epochs"] if self.epochs is None else self.epochs
            self.lr = WORLD_RUN["lr"] if self.lr is None else self.lr
        if self.probes is None:
            self.modes = list(MODES) if self.modes is None else self.modes
            if isinstance(self.modes, str) or not isinstance(self.modes, (list, tuple)) or not self.modes:
                raise TinyldError(f"sft-dynamics --modes must be a non-empty list of {' / '.join(MODES)}, got "
                                  f"{self.modes!r}")
            self.modes = [check_choice("sft-dynamics --modes", m, MODES) for m in self.modes]
            if len(set(self.modes)) != len(self.modes):
                raise TinyldError(f"sft-dynamics --modes repeats a mode: {self.modes}")
        self.epochs = check_int("sft-dynamics --epochs", self.epochs, 1, 10_000)
        check_choice("sft-dynamics --optimizer", self.optimizer, OPTIMIZERS)
        self.lr = check_number("sft-dynamics --lr", self.lr, 0, strict=True)
        self.batch_size = check_int("sft-dynamics --batch-size", self.batch_size, 1)
        self.grad_clip = check_number("sft-dynamics --grad-clip", self.grad_clip, 0)
        self.every = check_int("sft-dynamics --every", self.every, 0)
        self.attr_lr = check_number("sft-dynamics --attr-lr", self.attr_lr, 0, strict=True)
        self.attr_prompts = check_int("sft-dynamics --attr-prompts", self.attr_prompts, 1)
        if not is_real(self):
            self.changed = fast_caps(self, {"epochs": 8, "pretrain_steps": 400}) if self.fast else []
