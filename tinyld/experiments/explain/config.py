"""The config of ``python -m tinyld explain``: every field checked (and resolved) when it is made."""
from __future__ import annotations

from dataclasses import dataclass, field

from tinyld.experiments.common import check_base_model, check_own_file, check_shared, is_real
from tinyld.losses import pair_loss
from tinyld.runtime import TinyldError, check_int, check_number, check_seed
from tinyld.train import OPTIMIZERS

DEFAULT_LR = {"real": 5e-6, "world": 1e-3}  # a real LLM's rate (its first-order check: the lab report) and a world
# model's


@dataclass
class ExplainConfig:
    pairs: str | None = None  # your preference pairs: JSONL as a probe file (required)
    model: str | None = "smollm2"  # tinyld.choose: smollm2 | a .gguf file | a Hugging Face GPT-2 folder | tiny | gpt2
    steps: int = 10  # DPO steps of the watched run (every pair, batch_size at a time)
    optimizer: str = "adamw"  # sgd | adamw | rmsprop, constant rate, no clipping
    lr: float | None = None  # None: 5e-6 for a real LLM, 1e-3 for a world model
    loss: str = "sigmoid"  # any name of tinyld.losses.PAIR_LOSSES
    beta: float = 0.1
    batch_size: int = 4  # pairs per step
    seed: int = 0  # data order (and a world model's seed)
    pretrain_steps: int | None = None  # a world model's (tiny, gpt2); not for a model used as it is
    out: str = "tinyld_out/explain"
    device: str | None = None  # auto | cpu | cuda | mps (None: cpu for tiny, auto otherwise)
    threads: int = 2
    fast: bool = False  # 4 steps
    preset: str | None = field(default=None, init=False)  # from model
    hf: str | None = field(default=None, init=False)  # from model

    @property
    def seeds(self) -> list[int]:
        """The one seed, as the experiments' shared checks read and write it."""
        return [self.seed]

    @seeds.setter
    def seeds(self, value: list[int]) -> None:
        self.seed = value[0]

    def __post_init__(self):
        self.pairs = check_own_file(self.pairs, "explain --pairs")
        if self.pairs is None:
            raise TinyldError("explain needs --pairs FILE: your preference pairs, one JSON object per line with "
                              "prompt, chosen and rejected")
        check_base_model(self, "explain", own=True)
        self.seed = check_seed("explain --seed", self.seed)
        check_shared(self, "explain")  # the seed, threads, device and out
        if not isinstance(self.fast, bool):
            raise TinyldError(f"ExplainConfig.fast must be True or False, got {self.fast!r}")
        self.steps = check_int("explain --steps", self.steps, 1, 10_000)
        self.changed = []
        if self.fast and self.steps > 4:
            self.changed, self.steps = [f"fast mode uses steps {self.steps} → 4"], 4
        if self.optimizer not in OPTIMIZERS:
            raise TinyldError(f"explain --optimizer: unknown optimizer {self.optimizer!r}; choose one of "
                              f"{', '.join(OPTIMIZERS)}")
        self.lr = DEFAULT_LR["real" if is_real(self) or self.hf else "world"] if self.lr is None else self.lr
        self.lr = float(check_number("explain --lr", self.lr, 0, strict=True))
        self.beta = float(check_number("explain --beta", self.beta, 0, strict=True))
        if not isinstance(self.loss, str):
            raise TinyldError(f"explain --loss must be a loss name, got {type(self.loss).__name__}")
        pair_loss(self.loss, beta=self.beta)
        self.batch_size = check_int("explain --batch-size", self.batch_size, 1)
