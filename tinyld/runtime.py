"""Small shared pieces every module needs: the error types, argument checks, the device choice, seeding, versions.

Notable choices
- Every user-facing failure raises :class:`TinyldError` (a ``ValueError``) with one message that names the
  offending value and the fix, instead of a deep PyTorch traceback.
- :func:`pick_device` decides cuda → mps → cpu and *says why*, so a lesson's first printed lines tell the
  reader where the numbers came from.
- :func:`exact_mode` switches TF32 off: exactness checks in tinyld run in float64 on the CPU with TF32 off.
"""
from __future__ import annotations

import contextlib
import math
import numbers
import os
import platform
import random
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch

VERSION = "0.1.0"  # tinyld's version (tinyld.__version__), stored in checkpoints and results


class TinyldError(ValueError):
    """A mistake in what the user passed in, explained in words (value + fix)."""


class TrainingDiverged(TinyldError):
    """The loss, the gradient or the weights became NaN or infinite; the message names the step and the last good
    checkpoint. ``fact``: what happened, without advice (a caller with its own flags words its own advice);
    ``updates``: how many updates the run had taken by then (0: the learning rate cannot be the cause)."""

    def __init__(self, message: str, fact: str | None = None, updates: int | None = None):
        super().__init__(message)
        self.fact = fact or message
        self.updates = updates


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped a training run at a step boundary; ``checkpoint`` is where it was saved (None: nowhere)."""

    def __init__(self, message: str, checkpoint=None):
        super().__init__(message)
        self.checkpoint = checkpoint


# ---------------------------------------------------------------------------------------------------------------
# Argument checks: every public entry point validates what it is given with these, so a bad value gets one line
# that names it and says what is allowed, before any work starts.
# ---------------------------------------------------------------------------------------------------------------


SEED_MAX = 2**31 - 1  # seeds are mixed with step numbers in int64 arithmetic: keep them well inside it


def first_nonfinite(model: torch.nn.Module) -> str | None:
    """The name of the first floating-point parameter holding a NaN or inf, or None (one device sync)."""
    params = [(n, p) for n, p in model.named_parameters() if p.is_floating_point()]
    if not params:
        return None
    ok = torch.stack([torch.isfinite(p).all() for _, p in params])  # (n_params,)
    if bool(ok.all()):
        return None
    return params[int((~ok).nonzero()[0])][0]


def check_number(name: str, value, lo: float | None = None, hi: float | None = None, strict: bool = False,
                 hi_open: bool = False) -> float:
    """A finite real number in [lo, hi] (``strict``: lo excluded; ``hi_open``: hi excluded)."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if ok and lo is not None:
        ok = value > lo if strict else value >= lo
    if ok and hi is not None:
        ok = value < hi if hi_open else value <= hi
    if not ok:
        if lo == 0 and strict and hi is None:
            want = "a positive finite number"
        elif lo is not None and hi is not None:
            want = f"a finite number in {'(' if strict else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
        elif lo is not None:
            want = f"a finite number {'>' if strict else '≥'} {lo:g}"
        else:
            want = "a finite number"
        raise TinyldError(f"{name} must be {want}, got {value!r}")
    return float(value) if not isinstance(value, int) else value  # numpy scalars become Python numbers


def check_int(name: str, value, lo: int | None = None, hi: int | None = None) -> int:
    """An integer (not a bool, not a float) in [lo, hi]."""
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if not ok or (lo is not None and value < lo) or (hi is not None and value > hi):
        rng = (f" in [{lo}, {hi}]" if hi is not None else f" ≥ {lo}") if lo is not None else ""
        raise TinyldError(f"{name} must be an integer{rng}, got {value!r}")
    return int(value)


def check_seed(name: str, value) -> int:
    return check_int(name, value, 0, SEED_MAX)


def check_choice(name: str, value, choices) -> str:
    """One of ``choices`` (names of a dict, a tuple…)."""
    if not isinstance(value, str) or value not in choices:
        what = name.replace(".", " ").split()[-1].lstrip("-")
        raise TinyldError(f"{name}: unknown {what} {value!r}; choose one of {', '.join(choices)}")
    return value


def write_text_atomic(path, text: str) -> Path:
    """Write ``text`` to ``path`` (UTF-8) through a temporary file and a rename: a failure or Ctrl-C never
    leaves a half-written file, and the old file stays whole until the new one is complete."""
    import threading

    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise TinyldError(f"cannot write {path} ({e.strerror or type(e).__name__})") from None
    return path


def writable_dir(path, what: str = "output folder") -> Path:
    """Create ``path`` if needed and prove that a file can be written there; else one clear TinyldError."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise TinyldError(f"the {what} {str(path)!r} is a file: choose a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".tinyld-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise TinyldError(f"cannot write to the {what} {str(path)!r} ({e.strerror or type(e).__name__}): "
                          "choose a folder you can write to") from None
    return path


def from_dict_strict(cls, d: dict):
    """Build dataclass ``cls`` from a dict (a checkpoint, a JSON file); an unknown key is an error, never dropped."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise TinyldError(f"unknown {cls.__name__} field(s) {unknown}: valid fields are {sorted(known)}")
    return cls(**d)


@dataclass(frozen=True)
class DeviceChoice:
    device: torch.device
    dtype: torch.dtype
    reason: str

    def __str__(self) -> str:
        return f"device={self.device} dtype={str(self.dtype).replace('torch.', '')} ({self.reason})"


def pick_device(prefer: str = "auto", exact: bool = False, verbose: bool = False) -> DeviceChoice:
    """Choose where to run: cuda → mps → cpu, and float32 (float64 when ``exact``).

    ``prefer`` is "auto", "cpu", "cuda" or "mps". Exact (float64) work always runs on the CPU, because
    float64 on consumer GPUs is slow or missing and TF32 would spoil the comparison.
    """
    if prefer not in ("auto", "cpu", "cuda", "mps"):
        raise TinyldError(f"unknown device {prefer!r}: use one of auto, cpu, cuda, mps")
    if exact:
        exact_mode()
        choice = DeviceChoice(torch.device("cpu"), torch.float64, "exact mode: float64 on the CPU, TF32 off")
    elif prefer == "cuda" or (prefer == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise TinyldError("device 'cuda' requested but torch.cuda.is_available() is False: use --device cpu")
        choice = DeviceChoice(torch.device("cuda"), torch.float32, f"CUDA GPU found: {torch.cuda.get_device_name()}")
    elif prefer == "mps" or (prefer == "auto" and _mps_ok()):
        if not _mps_ok():
            raise TinyldError("device 'mps' requested but Apple MPS is not available: use --device cpu")
        choice = DeviceChoice(torch.device("mps"), torch.float32, "Apple GPU (MPS) found")
    else:
        why = "asked for the CPU" if prefer == "cpu" else "no CUDA or MPS device found"
        choice = DeviceChoice(torch.device("cpu"), torch.float32, why)
    if verbose:
        print(f"[tinyld] {choice}")
    return choice


def _mps_ok() -> bool:
    return bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()


def exact_mode() -> None:
    """Turn TF32 off everywhere (matters on Ampere+ GPUs; harmless on the CPU)."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


@contextlib.contextmanager
def num_threads(n: int):
    """Run the block with ``n`` CPU threads, then restore the previous count. Float sums depend on the thread
    count, so pinning it is what makes a long CPU training run reproducible bit for bit."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def versions() -> dict:
    """Versions that decide the numbers: printed at the start of experiments, stored in checkpoints."""
    return {
        "tinyld": VERSION,
        "python": platform.python_version(),
        "torch": str(torch.__version__),  # a plain str: TorchVersion would not load with weights_only=True
        "numpy": np.__version__,
        "platform": platform.platform(),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
    }


def compare(name: str, manual, reference) -> float:
    """Print whether a hand-derived tensor equals the reference (autograd): exact / close / max abs diff."""
    exact = bool(torch.equal(manual, reference))
    close = bool(torch.allclose(manual, reference, rtol=1e-7, atol=1e-10))
    diff = (manual - reference).abs().max().item()
    print(f"{name:28s} | exact: {str(exact):5s} | close: {str(close):5s} | max diff: {diff:.2e}")
    return diff


def fast_mode() -> bool:
    """True when TINYLD_FAST is set (to anything but 0): lessons and commands then take a few steps only."""
    return os.environ.get("TINYLD_FAST", "") not in ("", "0")
