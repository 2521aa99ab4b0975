"""The config of ``python -m tinyld rl-dynamics``: every field checked when it is made."""
from __future__ import annotations

from dataclasses import dataclass, field

from tinyld.choose import model_choice
from tinyld.experiments.common import check_shared, fast_caps
from tinyld.rl import GRPO_LOSSES, grpo_loss
from tinyld.runtime import TinyldError, check_int, check_number

FAST = {"pretrain_steps": 400, "sft_data": 64, "steps": 24, "probes": 4, "test_questions": 8, "passk_n": 8,
        "measure_every": 8}


@dataclass
class RLDynamicsConfig:
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    losses: list[str] = field(default_factory=lambda: ["grpo", "dr_grpo"])  # each seed runs each, from one SFT model
    steps: int = 120  # RL steps
    lr: float = 3e-4  # AdamW, constant, no clipping
    optimizer: str = "adamw"
    group: int = 8  # samples per question (G)
    per_step: int = 8  # questions per step
    temperature: float = 1.0  # sampling temperature, for training and every measurement
    clip: float = 0.2  # ε of the clipped ratio (active with inner_steps > 1)
    kl: float = 0.0  # β of the k3 KL penalty to the SFT model (0: none, as Dr. GRPO)
    inner_steps: int = 1  # optimizer steps per batch of samples
    sft_data: int = 256  # the SFT model: the forecasting task's, on this many questions of the pool
    sft_epochs: int = 3
    sft_lr: float = 3e-3
    pretrain_steps: int = 1500  # the arithmetic base model (the forecasting task's)
    probes: int = 8  # training questions whose fixed samples are tracked
    fixed_samples: int = 8  # samples drawn per probe question at the start, kept fixed
    test_questions: int = 40  # held-out questions for pass@k
    passk_n: int = 16  # samples per held-out question (pass@k for k = 1 … passk_n, the unbiased estimator)
    measure_every: int = 20  # steps between measurements (and the step whose update is checked at first order)
    model: str = "tiny"  # the arithmetic task's GPT, pretrained here (tinyld.choose)
    out: str = "tinyld_out/rl_dynamics"
    device: str = "cpu"
    threads: int = 2
    fast: bool = False  # one seed, a 400-step base model, 24 RL steps, fewer probes: the numbers mean less

    def __post_init__(self):
        check_shared(self, "rl-dynamics")
        self.model = model_choice(self.model, "rl-dynamics", ("tiny",), "RL samples from the model at every step: "
                                  "the arithmetic task's tiny GPT").name
        if not isinstance(self.losses, (list, tuple)) or not self.losses or len(set(self.losses)) != len(self.losses) \
                or not all(isinstance(x, str) and x in GRPO_LOSSES for x in self.losses):
            raise TinyldError(f"rl-dynamics --losses must name distinct losses of {', '.join(GRPO_LOSSES)}, got "
                              f"{self.losses!r}")
        self.losses = list(self.losses)
        for k, lo, hi in (("steps", 1, 100_000), ("group", 2, 256), ("per_step", 1, 256), ("inner_steps", 1, 64),
                          ("sft_data", 1, 10_000), ("sft_epochs", 1, 1000), ("pretrain_steps", 1, 1_000_000),
                          ("probes", 1, 256), ("fixed_samples", 2, 256), ("test_questions", 1, 10_000),
                          ("passk_n", 1, 1024), ("measure_every", 1, 100_000)):
            setattr(self, k, check_int(f"rl-dynamics --{k.replace('_', '-')}", getattr(self, k), lo, hi))
        for k in ("lr", "sft_lr"):
            setattr(self, k, float(check_number(f"rl-dynamics --{k.replace('_', '-')}", getattr(self, k), 0, 10,
                                                strict=True)))
        self.temperature = float(check_number("rl-dynamics --temperature", self.temperature, 0.01, 100))
        if self.optimizer not in ("sgd", "adamw", "rmsprop"):
            raise TinyldError(f"rl-dynamics --optimizer: choose sgd, adamw or rmsprop, got {self.optimizer!r}")
        for name in self.losses:  # the clip range and the KL weight, checked by the loss itself
            grpo_loss(name, clip=self.clip, kl=self.kl)
        self.clip, self.kl = float(self.clip), float(self.kl)
        if not isinstance(self.fast, bool):
            raise TinyldError(f"RLDynamicsConfig.fast must be True or False, got {self.fast!r}")
        self.changed = []
        if self.fast:
            self.changed = fast_caps(self, FAST)
            if len(self.seeds) > 1:
                self.changed.append(f"fast mode uses seed {self.seeds[0]} only")
                self.seeds = self.seeds[:1]
