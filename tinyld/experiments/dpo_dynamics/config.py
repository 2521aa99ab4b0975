"""The config of ``python -m tinyld dpo-dynamics``: every field checked (and resolved) when it is made, and the
TrainConfig of each stage."""
from __future__ import annotations

from dataclasses import dataclass, field

from tinyld.experiments.common import (WORLD_SFT, check_base_model, check_own_file, check_shared, fast_caps, is_real,
                                       real_defaults, stage_config)
from tinyld.losses import pair_loss
from tinyld.runtime import TinyldError, check_choice, check_int, check_number
from tinyld.train import OPTIMIZERS, TrainConfig
from tinyld.world import MODES

EXPERIMENTS = ("dynamics", "extend", "on-policy", "conditions", "all")


WORLD_DPO_EPOCHS = 8  # a world model's default
REAL_DPO = {"sft_epochs": 3, "dpo_epochs": 4, "lr": 5e-6, "fast_sft_epochs": 1, "fast_dpo_epochs": 2}  # a real LLM


@dataclass
class DPODynamicsConfig:
    experiment: str | None = None  # dynamics | extend | on-policy | conditions | all (None: all; a real LLM or
    # your own --pairs: dynamics, the only one they run)
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    modes: list[str] | None = None  # None: hard and easy (conditions: hard; a real LLM: easy)
    sft_epochs: int | None = None  # SFT on y⁺ before DPO (None: WORLD_SFT's; a real LLM: REAL_DPO's)
    dpo_epochs: int | None = None  # None: 8; a real LLM: REAL_DPO's
    optimizer: str = WORLD_SFT.optimizer  # both stages: sgd | adamw | rmsprop
    lr: float | None = None  # both stages, constant, no clipping (None: WORLD_SFT's; a real LLM: REAL_DPO's)
    loss: str = "sigmoid"  # any name of tinyld.losses.PAIR_LOSSES
    beta: float = 0.1
    batch_size: int = WORLD_SFT.batch_size  # pairs per step (40 training prompts: 5 steps per epoch)
    samples: int = 4  # on-policy: answers sampled per prompt · win rate: answers per held-out prompt
    pretrain_steps: int | None = None  # of a world model (cached): 3000 tiny, 1000 gpt2
    model: str | None = None  # tinyld.choose: tiny (default) | gpt2 | smollm2 | a .gguf file | a Hugging Face folder
    pairs: str | None = None  # your own preference pairs: JSONL as a probe file (ProbeSet.load)
    out: str = "tinyld_out/dpo_dynamics"
    device: str | None = None  # None: cpu for tiny, auto otherwise
    threads: int = 2
    fast: bool = False  # 400-step base models, 2 SFT and 4 DPO epochs: for lessons, the numbers mean less
    preset: str | None = field(default=None, init=False)  # tiny, gpt2 or smollm2: from model
    hf: str | None = field(default=None, init=False)  # the Hugging Face folder gpt2 starts from: from model

    def __post_init__(self):
        self.pairs = check_own_file(self.pairs, "dpo-dynamics --pairs")
        check_base_model(self, "dpo-dynamics", own=self.pairs is not None)
        check_shared(self, "dpo-dynamics")
        if self.pairs is not None and self.modes is not None:
            raise TinyldError("dpo-dynamics: --modes choose the world's runs; your own --pairs are the whole run: "
                              "leave it out")
        if is_real(self) or self.pairs is not None:
            if self.experiment not in (None, "dynamics"):
                why = "your own --pairs" if self.pairs is not None else f"--model {self.model}"
                raise TinyldError(f"dpo-dynamics --experiment {self.experiment}: with {why} the run is --experiment "
                                  "dynamics (extend, on-policy and conditions need the world model's many short runs "
                                  "or its oracle): leave it out")
            self.experiment = "dynamics"
        self.experiment = "all" if self.experiment is None else self.experiment
        check_choice("dpo-dynamics --experiment", self.experiment, EXPERIMENTS)
        if is_real(self):
            self.changed = real_defaults(self, {k: REAL_DPO[k] for k in ("sft_epochs", "dpo_epochs", "lr")},
                                         {k: REAL_DPO[f"fast_{k}"] for k in ("sft_epochs", "dpo_epochs")})
        else:
            self.sft_epochs = WORLD_SFT.epochs if self.sft_epochs is None else self.sft_epochs
            self.dpo_epochs = WORLD_DPO_EPOCHS if self.dpo_epochs is None else self.dpo_epochs
            self.lr = WORLD_SFT.lr if self.lr is None else self.lr
        if self.pairs is None:
            if self.modes is None:
                self.modes = ["hard"] if self.experiment == "conditions" else list(MODES)
            if isinstance(self.modes, str) or not isinstance(self.modes, (list, tuple)) or not self.modes:
                raise TinyldError(f"dpo-dynamics --modes must be a non-empty list of {' / '.join(MODES)}")
            self.modes = [check_choice("dpo-dynamics --modes", m, MODES) for m in self.modes]
            if len(set(self.modes)) != len(self.modes):
                raise TinyldError(f"dpo-dynamics --modes repeats a mode: {self.modes}")
        if self.experiment == "conditions" and len(self.modes) > 1:
            raise TinyldError("dpo-dynamics --experiment conditions runs in one world mode: give one --modes (all "
                              "runs the conditions in the first)")
        self.sft_epochs = check_int("dpo-dynamics --sft-epochs", self.sft_epochs, 0, 1000)
        self.dpo_epochs = check_int("dpo-dynamics --dpo-epochs", self.dpo_epochs, 1, 1000)
        check_choice("dpo-dynamics --optimizer", self.optimizer, OPTIMIZERS)
        self.lr = check_number("dpo-dynamics --lr", self.lr, 0, strict=True)
        if not isinstance(self.loss, str):
            raise TinyldError(f"dpo-dynamics --loss must be a loss name, got {type(self.loss).__name__}")
        self.beta = float(check_number("dpo-dynamics --beta", self.beta, 0, strict=True))
        self.lr = float(self.lr)
        pair_loss(self.loss, beta=self.beta)
        self.batch_size = check_int("dpo-dynamics --batch-size", self.batch_size, 1)
        self.samples = check_int("dpo-dynamics --samples", self.samples, 1, 64)
        if not isinstance(self.fast, bool):
            raise TinyldError(f"DPODynamicsConfig.fast must be True or False, got {self.fast!r}")
        if not is_real(self):
            caps = {"pretrain_steps": 400, "sft_epochs": WORLD_SFT.fast_epochs, "dpo_epochs": 4}
            self.changed = fast_caps(self, caps) if self.fast else []

    def train_config(self, task: str, steps: int, seed: int, optimizer: str | None = None, lr: float | None = None,
                     beta: float | None = None) -> TrainConfig:
        """The TrainConfig of one stage (:func:`~tinyld.experiments.common.stage_config`); None: this config's."""
        return stage_config(task, steps, seed, optimizer or self.optimizer, lr or self.lr,
                            pair_loss={"name": self.loss, "beta": beta or self.beta})

