"""The config of ``python -m tinyld forecast``: every field checked when it is made."""
from __future__ import annotations

from dataclasses import dataclass, field

from tinyld.choose import model_choice
from tinyld.experiments.common import changed_note, check_shared
from tinyld.runtime import TinyldError, check_choice, check_int, check_number

EXPERIMENTS = ("sweep", "perturb", "curate", "ches", "all")
MAX_NEW = 26  # tokens sampled per solution: the longest written form is 18 tokens and EOS
FAST_FIELDS = ("pretrain_steps", "ches_pretrain_steps", "epochs", "data", "lrs", "measured", "curate_start",
               "curate_add", "curate_rounds", "curate_epochs")  # what fast mode may change


def _numbers(name: str, xs, kind, lo: float = 0, hi: float = 10, empty: bool = False) -> list:
    """A list of distinct integers ≥ 1 (``kind`` int, at most ``hi``) or finite floats in (lo, hi]."""
    if not isinstance(xs, (list, tuple)) or (not xs and not empty):
        raise TinyldError(f"forecast {name} must be a non-empty list, got {xs!r}")
    out = [check_int(name, x, 1, int(hi)) if kind is int else float(check_number(name, x, lo, hi, strict=True))
           for x in xs]
    if len(set(out)) != len(out):
        raise TinyldError(f"forecast {name} repeats a value: {out}")
    return out


@dataclass
class ForecastConfig:
    experiment: str = "all"  # sweep | perturb | curate | ches | all
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    lrs: list[float] = field(default_factory=lambda: [1e-3, 3e-3, 1e-2])  # AdamW, cosine to 10%, no clipping
    epochs: list[int] = field(default_factory=lambda: [3, 10])
    data: list[int] = field(default_factory=lambda: [32, 256])  # training questions per run
    measured: int = 64  # PM and train accuracy are measured on (at most) this many of a run's training questions
    batch_size: int = 8
    samples: int = 5  # solutions sampled per question and checkpoint
    temperature: float = 0.8
    tau: float = -2.3  # memorized ⇔ perplexity < exp(e^τ): the published GSM8k value, held fixed
    taus: list[float] = field(default_factory=lambda: [-3.0, -2.6, -2.3, -2.0, -1.7, -1.4, -1.1])  # R² vs τ
    curate_start: int = 32  # curate: questions before the first round
    curate_add: int = 32  # questions added per round
    curate_rounds: int = 3
    curate_epochs: int = 10  # with curate_lr: the sweep's configuration that learned most
    curate_lr: float = 1e-2
    ches_lr: float = 1e-3  # ches: AdamW on one pair alone
    ches_steps: int = 5
    ches_beta: float = 0.1
    pretrain_steps: int = 1500  # the arithmetic base model
    ches_pretrain_steps: int = 3000  # the fact world's base model (ches)
    model: str = "tiny"  # the only one: forecast trains many tiny models from scratch (tinyld.choose)
    out: str = "tinyld_out/forecast"
    device: str = "cpu"
    threads: int = 2
    fast: bool = False  # a small sweep and short curation on 400-step base models: the numbers mean less

    def __post_init__(self):
        check_choice("forecast --experiment", self.experiment, EXPERIMENTS)
        check_shared(self, "forecast")
        self.model = model_choice(self.model, "forecast", ("tiny",), "it trains many tiny models from scratch, in "
                                  "short runs").name
        self.lrs = _numbers("--lrs", self.lrs, float)
        self.epochs = _numbers("--epochs", self.epochs, int, hi=1000)
        self.data = _numbers("--data", self.data, int, hi=10_000)
        self.taus = _numbers("taus", self.taus, float, lo=-20, hi=5, empty=True)
        self.tau = float(check_number("--tau", self.tau, -20, 5))
        self.batch_size = check_int("forecast --batch-size", self.batch_size, 1)
        self.samples = check_int("forecast --samples", self.samples, 1, 64)
        self.temperature = float(check_number("forecast --temperature", self.temperature, 0.01, 100))
        for k in ("measured", "curate_start", "curate_add", "curate_rounds", "curate_epochs", "ches_steps",
                  "pretrain_steps", "ches_pretrain_steps"):
            setattr(self, k, check_int(f"forecast --{k.replace('_', '-')}", getattr(self, k), 1, 1_000_000))
        for k in ("curate_lr", "ches_lr", "ches_beta"):
            setattr(self, k, float(check_number(f"forecast --{k.replace('_', '-')}", getattr(self, k), 0, 10,
                                                strict=True)))
        if not isinstance(self.fast, bool):
            raise TinyldError(f"ForecastConfig.fast must be True or False, got {self.fast!r}")
        self.changed = []
        if self.fast:  # the run records the values it uses, and says which fast mode changed
            before = {k: getattr(self, k) for k in FAST_FIELDS}
            self.pretrain_steps = min(self.pretrain_steps, 400)
            self.ches_pretrain_steps = min(self.ches_pretrain_steps, 400)
            self.epochs = sorted({min(e, 4) for e in self.epochs[:2]})
            self.data = [min(d, 32) for d in self.data[:1]]
            self.lrs, self.measured = self.lrs[-2:], min(self.measured, 32)
            self.curate_start, self.curate_add = min(self.curate_start, 16), min(self.curate_add, 16)
            self.curate_rounds, self.curate_epochs = min(self.curate_rounds, 1), min(self.curate_epochs, 3)
            self.changed = changed_note(self, before)


# --------------------------------------------------------------------------------------------------------------
# the pieces: base model, one SFT run with a checkpoint every epoch, the measurements
# --------------------------------------------------------------------------------------------------------------

