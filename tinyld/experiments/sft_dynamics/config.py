"""The config of ``python -m tinyld sft-dynamics``: every field checked (and resolved) when it is made."""
from __future__ import annotations

from dataclasses import dataclass, field

from tinyld.experiments.common import check_base_model, check_shared, fast_caps
from tinyld.runtime import TinyldError, check_choice, check_int, check_number
from tinyld.train import OPTIMIZERS
from tinyld.world import MODES


@dataclass
class SFTDynamicsConfig:
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])  # world, init and data order
    modes: list[str] | None = None  # world modes (tinyld.world); None: hard and easy (your own --probes: none)
    epochs: int = 20  # passes over the training prompts
    optimizer: str = "adamw"  # sgd | adamw | rmsprop
    lr: float = 1e-3  # constant learning rate, no warm-up
    batch_size: int = 8  # prompts per step (40 training prompts: 5 steps per epoch)
    grad_clip: float = 0.0  # global gradient-norm clipping of the SFT runs (0: none, as the first-order picture)
    every: int = 0  # steps between measurements (0: once per epoch)
    pretrain_steps: int | None = None  # of the base model (tinyld.pretrained.pretrained, cached): 3000 tiny, 1000 gpt2
    preset: str | None = None  # the base model: tiny (default; the world's words) or gpt2 (GPT-2 small, BPE)
    hf: str | None = None  # a local Hugging Face GPT-2 folder to start the gpt2 pretraining from (GPT.from_hf)
    attribution: bool = True  # the SGD attribution run (first mode; in fast mode first seed only)
    attr_lr: float = 1e-4  # its plain-SGD learning rate (no clipping, no momentum): small, so first order holds
    attr_prompts: int = 4  # training prompts u whose y_{j≠u}⁺ is attributed
    conditions: bool = False  # also run the sweep over optimizer, lr and pretraining depth
    probes: str | None = None  # a probe JSONL (then --model): your own data with the GPT-2 BPE
    model: str | None = None  # with --probes: a Hugging Face GPT-2 folder, or a preset name (random init)
    out: str = "tinyld_out/sft_dynamics"
    device: str | None = None  # auto | cpu | cuda | mps (None: cpu for tiny, where it is quickest; auto for gpt2)
    threads: int = 2  # CPU threads (pinned: the figures in the README were made with 2)
    fast: bool = False  # fewer epochs and a shallower base model: ≤ 60 s, the numbers then mean less

    def __post_init__(self):
        if self.probes is not None:  # the world's flags mean nothing for your own probes: refused, never ignored
            given = [f"--{k.replace('_', '-')}" for k in ("modes", "pretrain_steps", "preset", "hf")
                     if getattr(self, k) is not None] + (["--conditions"] if self.conditions is True else [])
            if given:
                raise TinyldError(f"sft-dynamics: {', '.join(given)} choose the world's runs and base model; your own "
                                  "--probes take their model from --model: leave them out")
        check_base_model(self, "sft-dynamics")
        check_shared(self, "sft-dynamics")
        if self.probes is None:
            self.modes = list(MODES) if self.modes is None else self.modes
            if isinstance(self.modes, str) or not isinstance(self.modes, (list, tuple)) or not self.modes:
                raise TinyldError(f"sft-dynamics --modes must be a non-empty list of {' / '.join(MODES)}, got "
                                  f"{self.modes!r}")
            self.modes = [check_choice("sft-dynamics --modes", m, MODES) for m in self.modes]
            if len(set(self.modes)) != len(self.modes):
                raise TinyldError(f"sft-dynamics --modes repeats a mode: {self.modes}")
        for name in ("attribution", "conditions", "fast"):
            if not isinstance(getattr(self, name), bool):
                raise TinyldError(f"SFTDynamicsConfig.{name} must be True or False, got {getattr(self, name)!r}")
        self.epochs = check_int("sft-dynamics --epochs", self.epochs, 1, 10_000)
        check_choice("sft-dynamics --optimizer", self.optimizer, OPTIMIZERS)
        self.lr = check_number("sft-dynamics --lr", self.lr, 0, strict=True)
        self.batch_size = check_int("sft-dynamics --batch-size", self.batch_size, 1)
        self.grad_clip = check_number("sft-dynamics --grad-clip", self.grad_clip, 0)
        self.every = check_int("sft-dynamics --every", self.every, 0)
        self.attr_lr = check_number("sft-dynamics --attr-lr", self.attr_lr, 0, strict=True)
        self.attr_prompts = check_int("sft-dynamics --attr-prompts", self.attr_prompts, 1)
        if (self.probes is None) != (self.model is None):
            raise TinyldError("sft-dynamics: --probes FILE and --model M go together (your own probes need a "
                              "model and the GPT-2 BPE; the world's probes use the world's pretrained model)")
        self.changed = fast_caps(self, {"epochs": 8, "pretrain_steps": 400}) if self.fast else []
