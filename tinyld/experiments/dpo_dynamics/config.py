"""The config of ``python -m tinyld dpo-dynamics``: every field checked (and resolved) when it is made, and the
TrainConfig of each stage."""
from __future__ import annotations

from dataclasses import dataclass, field

from tinyld.experiments.common import WORLD_SFT, check_base_model, check_shared, fast_caps, stage_config
from tinyld.losses import pair_loss
from tinyld.runtime import TinyldError, check_choice, check_int, check_number
from tinyld.train import OPTIMIZERS, TrainConfig
from tinyld.world import MODES

EXPERIMENTS = ("dynamics", "extend", "on-policy", "conditions", "all")


@dataclass
class DPODynamicsConfig:
    experiment: str = "all"  # dynamics | extend | on-policy | conditions | all
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    modes: list[str] | None = None  # None: hard and easy (conditions: hard; it runs in one mode)
    sft_epochs: int = WORLD_SFT.epochs  # SFT on y⁺ before DPO (extend: the same number of steps on y⁺ and y⁻)
    dpo_epochs: int = 8
    optimizer: str = WORLD_SFT.optimizer  # both stages: sgd | adamw | rmsprop
    lr: float = WORLD_SFT.lr  # both stages, constant, no clipping
    loss: str = "sigmoid"  # any name of tinyld.losses.PAIR_LOSSES
    beta: float = 0.1
    batch_size: int = WORLD_SFT.batch_size  # pairs per step (40 training prompts: 5 steps per epoch)
    samples: int = 4  # on-policy: answers sampled per prompt · win rate: answers per held-out prompt
    pretrain_steps: int | None = None  # of the base model (cached): 3000 tiny, 1000 gpt2
    preset: str | None = None  # the base model: tiny (default; the world's words) or gpt2 (GPT-2 small, BPE)
    hf: str | None = None  # a local Hugging Face GPT-2 folder to start the gpt2 pretraining from (GPT.from_hf)
    out: str = "tinyld_out/dpo_dynamics"
    device: str | None = None  # None: cpu for tiny, auto for gpt2
    threads: int = 2
    fast: bool = False  # 400-step base models, 2 SFT and 4 DPO epochs: for lessons, the numbers mean less

    def __post_init__(self):
        check_choice("dpo-dynamics --experiment", self.experiment, EXPERIMENTS)
        check_base_model(self, "dpo-dynamics")
        check_shared(self, "dpo-dynamics")
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
        caps = {"pretrain_steps": 400, "sft_epochs": WORLD_SFT.fast_epochs, "dpo_epochs": 4}
        self.changed = fast_caps(self, caps) if self.fast else []

    def train_config(self, task: str, steps: int, seed: int, optimizer: str | None = None, lr: float | None = None,
                     beta: float | None = None) -> TrainConfig:
        """The TrainConfig of one stage (:func:`~tinyld.experiments.common.stage_config`); None: this config's."""
        return stage_config(task, steps, seed, optimizer or self.optimizer, lr or self.lr,
                            pair_loss={"name": self.loss, "beta": beta or self.beta})

