"""The config of ``python -m tinyld rl-dynamics``: every field checked when it is made."""
from __future__ import annotations

from dataclasses import dataclass, field

from tinyld.choose import model_choice
from tinyld.experiments.common import check_shared, fast_caps
from tinyld.rl import GRPO_LOSSES, grpo_loss
from tinyld.runtime import TinyldError, check_int, check_number

# The fields whose default depends on the model (None in the dataclass): the tiny arithmetic GPT's, and a real LLM's
# (SmolLM2-135M-Instruct, sized for a 2-core CPU: one RL step of 16 samples takes about 15 s there, where the tiny
# model's step of 64 takes a tenth of a second).
TINY = {"steps": 120, "lr": 3e-4, "per_step": 8, "sft_data": 256, "sft_epochs": 3, "sft_lr": 3e-3,
        "pretrain_steps": 1500, "probes": 8, "test_questions": 40, "passk_n": 16, "measure_every": 20,
        "device": "cpu"}
REAL_RL = {"steps": 16, "lr": 1e-5, "per_step": 2, "sft_data": 128, "sft_epochs": 3, "sft_lr": 5e-5,
           "pretrain_steps": None, "probes": 4, "test_questions": 40, "passk_n": 16, "measure_every": 8,
           "device": "auto"}
FAST = {"pretrain_steps": 400, "sft_data": 64, "steps": 24, "probes": 4, "test_questions": 8, "passk_n": 8,
        "measure_every": 8}
REAL_FAST = {"sft_data": 64, "sft_epochs": 2, "steps": 4, "group": 4, "probes": 2, "test_questions": 4,
             "passk_n": 4, "measure_every": 2}


@dataclass
class RLDynamicsConfig:
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    losses: list[str] = field(default_factory=lambda: ["grpo", "dr_grpo"])  # each seed runs each, from one SFT model
    steps: int | None = None  # RL steps (None: TINY or REAL_RL, by the model; so every field set to None below)
    lr: float | None = None  # constant, no clipping
    optimizer: str = "adamw"
    group: int = 8  # samples per question (G)
    per_step: int | None = None  # questions per step
    temperature: float = 1.0  # sampling temperature, for training and every measurement
    clip: float = 0.2  # ε of the clipped ratio (active with inner_steps > 1)
    kl: float = 0.0  # β of the k3 KL penalty to the SFT model (0: none, as Dr. GRPO)
    inner_steps: int = 1  # optimizer steps per batch of samples
    sft_data: int | None = None  # the SFT model: SFT on this many questions of the pool
    sft_epochs: int | None = None
    sft_lr: float | None = None  # AdamW, cosine to 10%
    pretrain_steps: int | None = None  # the arithmetic base model (the forecasting task's; the tiny model only)
    probes: int | None = None  # training questions whose fixed samples are tracked
    fixed_samples: int = 8  # samples drawn per probe question at the start, kept fixed
    test_questions: int | None = None  # held-out questions for pass@k
    passk_n: int | None = None  # samples per held-out question (pass@k for k = 1 … passk_n, the unbiased estimator)
    measure_every: int | None = None  # steps between measurements (and the step whose update is checked at first
    # order)
    model: str = "tiny"  # tiny: the arithmetic task's GPT, pretrained here; smollm2 or a .gguf file: a real LLM,
    # SFT on the task as chat turns (tinyld.choose)
    out: str = "tinyld_out/rl_dynamics"
    device: str | None = None  # cpu for tiny, auto for a real LLM
    threads: int = 2
    fast: bool = False  # one seed, fewer and shorter runs (FAST, REAL_FAST): the numbers mean less

    def __post_init__(self):
        choice = model_choice(self.model, "rl-dynamics", ("tiny", "gguf"), "RL samples from the model at every "
                              "step: the arithmetic task's tiny GPT, or a real LLM (smollm2) on a CPU budget")
        self.model, self.real = choice.name, choice.real
        if self.real and self.pretrain_steps is not None:
            raise TinyldError(f"rl-dynamics --pretrain-steps: --model {self.model} is a pretrained LLM; "
                              "--pretrain-steps is for the tiny model: leave it out")
        for k, v in (REAL_RL if self.real else TINY).items():
            if getattr(self, k) is None:
                setattr(self, k, v)
        check_shared(self, "rl-dynamics")
        if not isinstance(self.losses, (list, tuple)) or not self.losses or len(set(self.losses)) != len(self.losses) \
                or not all(isinstance(x, str) and x in GRPO_LOSSES for x in self.losses):
            raise TinyldError(f"rl-dynamics --losses must name distinct losses of {', '.join(GRPO_LOSSES)}, got "
                              f"{self.losses!r}")
        self.losses = list(self.losses)
        for k, lo, hi in (("steps", 1, 100_000), ("group", 2, 256), ("per_step", 1, 256), ("inner_steps", 1, 64),
                          ("sft_data", 1, 10_000), ("sft_epochs", 1, 1000), ("probes", 1, 256),
                          ("fixed_samples", 2, 256), ("test_questions", 1, 10_000), ("passk_n", 1, 1024),
                          ("measure_every", 1, 100_000)):
            setattr(self, k, check_int(f"rl-dynamics --{k.replace('_', '-')}", getattr(self, k), lo, hi))
        if not self.real:
            self.pretrain_steps = check_int("rl-dynamics --pretrain-steps", self.pretrain_steps, 1, 1_000_000)
        for k in ("lr", "sft_lr"):
            setattr(self, k, float(check_number(f"rl-dynamics --{k.replace('_', '-')}", getattr(self, k), 0, 10,
                                                strict=True)))
        self.temperature = float(check_number("rl-dynamics --temperature", self.temperature, 0.01, 100))
        if self.optimizer not in ("sgd", "adamw", "rmsprop"):
            raise TinyldError(f"rl-dynamics --optimizer: choose sgd, adamw or rmsprop, got {self.optimizer!r}")
        for flag in ("clip", "kl"):  # the clip range and the KL weight, checked by the loss itself
            try:
                grpo_loss(self.losses[0], **{flag: getattr(self, flag)})
            except TinyldError as e:
                raise TinyldError(f"rl-dynamics --{flag}: {e}") from None
        self.clip, self.kl = float(self.clip), float(self.kl)
        if not isinstance(self.fast, bool):
            raise TinyldError(f"RLDynamicsConfig.fast must be True or False, got {self.fast!r}")
        self.changed = []
        if self.fast:
            self.changed = fast_caps(self, REAL_FAST if self.real else FAST)
            if len(self.seeds) > 1:
                self.changed.append(f"fast mode uses seed {self.seeds[0]} only")
                self.seeds = self.seeds[:1]
