"""Checkpoints and the output folder: atomic save, validated load, one run per folder.

- :func:`save_checkpoint` writes a temp file beside the target and renames it over the target, so a crash, a full
  disk or a diverged update never destroys the last good checkpoint. A checkpoint holds finite weights only, the
  model and training config, the tokenizer's and the data's identity, the optimizer and RNG state, the versions
  and a format version.
- :func:`load_checkpoint` reads with ``torch.load(weights_only=True)`` (no code from a file ever runs) and turns
  every kind of damage into one clear :class:`~tinyld.runtime.TinyldError`. :func:`load_model` gives back
  (model, tokenizer, checkpoint).
- :class:`FolderLock` keeps a second live run out of a folder that a run is writing to.
"""
from __future__ import annotations

import contextlib
import json
import os
import pickle
import threading
from pathlib import Path

try:
    import fcntl  # the OS's file lock (POSIX)
except ImportError:  # Windows
    fcntl = None

import torch

from tinyld.model import GPT, GPTConfig
from tinyld.runtime import TinyldError, TrainingDiverged, check_int, first_nonfinite, versions, writable_dir
from tinyld.tokenizers import tokenizer_from_identity

FORMAT = "tinyld-checkpoint"
FORMAT_VERSION = 1


def data_identity(data) -> dict | None:
    """What a data source says about itself (``identity()``), stored in checkpoints and checked on resume."""
    ident = getattr(data, "identity", None)
    return ident() if callable(ident) else None


class FolderLock:
    """``out/.lock``, held with the OS's file lock (``flock``) for as long as a run writes in ``out``, and naming
    that run (its pid, and ``what`` it runs). A second run is refused while the first holds it. The OS releases the
    lock when its process ends, however it ends, so a lock file left by a killed run is simply taken over. (Without
    ``fcntl``, on Windows, a live pid in the file refuses instead.)"""

    def __init__(self, out: Path | None, what: str = "a training run"):
        self.path = out / ".lock" if out else None
        self.what = what
        self.held = False
        self.fd: int | None = None

    def __enter__(self):
        if self.path is None:
            return self
        if self.path.is_dir():
            raise TinyldError(f"{self.path} is a folder; tinyld keeps its lock file there: remove the folder")
        for _ in range(5):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                raise TinyldError(f"cannot write to {self.path.parent} ({e.strerror})") from None
            if not self._take(fd):
                holder = self._holder()
                os.close(fd)
                raise TinyldError(f"{self.path.parent} is in use by {holder}: two runs writing one folder would mix "
                                  "their files; wait for it to end, or give this run another folder") from None
            try:  # the lock is on this file: is it still the one at the path (a run that ends removes it)?
                current = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                current = False
            if not current:
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n{self.what}".encode())
            self.fd, self.held = fd, True
            return self
        raise TinyldError(f"could not take the lock {self.path}: other runs keep taking it")

    def _take(self, fd: int) -> bool:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                return False
        pid = self._pid()
        return not (pid and pid != os.getpid() and _alive(pid))

    def _pid(self) -> int:
        try:
            return int(self.path.read_text().partition("\n")[0].strip() or 0)
        except (OSError, ValueError):
            return 0

    def _holder(self) -> str:
        try:
            pid, _, what = self.path.read_text().partition("\n")
        except OSError:
            return "another run"
        return f"{what.strip() or 'another run'} (pid {pid.strip()})" if pid.strip() else "another run"

    def __exit__(self, *exc):
        if self.held:
            with contextlib.suppress(OSError):
                self.path.unlink()  # while still locked: a run waiting on this file sees that it is gone
            os.close(self.fd)
            self.held, self.fd = False, None
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def save_checkpoint(path: str | Path, model: GPT, tokenizer=None, step: int = 0, train_config: dict | None = None,
                    optimizer: dict | None = None, **extra) -> Path:
    """Write a checkpoint atomically: a temp file in the same folder, then a rename over ``path``. If anything
    fails (a full disk, a NaN weight) the file at ``path`` is left as it was."""
    path = Path(path)
    if not isinstance(model, torch.nn.Module) or not hasattr(getattr(model, "config", None), "to_dict"):
        raise TinyldError(f"save_checkpoint saves a tinyld GPT, got {type(model).__name__}")
    if tokenizer is not None and not callable(getattr(tokenizer, "identity", None)):
        raise TinyldError(f"tokenizer must be a tinyld tokenizer or None, got {type(tokenizer).__name__}")
    step = check_int("step", step, 0)
    for k, v in extra.items():
        if not _plain(v):
            raise TinyldError(f"checkpoint field {k!r} holds a {type(v).__name__}: checkpoints keep tensors and "
                              "plain data (str, int, float, bool, None, lists, dicts) so they load without code")
    bad = first_nonfinite(model)
    if bad:
        raise TrainingDiverged(f"not saving {path}: parameter {bad!r} is not finite (checkpoints hold finite "
                               "weights only)")
    writable_dir(path.parent, "checkpoint folder")
    ck = {"format": FORMAT, "format_version": FORMAT_VERSION, "model_config": model.config.to_dict(),
          "tokenizer": tokenizer.identity() if tokenizer is not None else None, "step": step,
          "train_config": train_config, "model": model.state_dict(), "optimizer": optimizer,
          "rng": torch.get_rng_state(), "versions": versions(), **extra}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")  # one per writer
    try:
        torch.save(ck, tmp)
        os.replace(tmp, path)  # atomic: the old file stays whole until the new one is complete
    except BaseException as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if not isinstance(e, (OSError, RuntimeError)):
            raise
        why = getattr(e, "strerror", None) or str(e).splitlines()[0][:120]
        keep = f"{path} was left as it was" if path.exists() else "nothing was written"
        raise TinyldError(f"could not write checkpoint {path} ({why}); {keep}. Free disk space or choose "
                          "another folder, then save again") from None
    return path


def _plain(v) -> bool:
    """Data that torch.load(weights_only=True) reads back: tensors and JSON-like Python values."""
    if v is None or type(v) in (str, int, float, bool) or isinstance(v, torch.Tensor):
        return True
    if type(v) in (list, tuple):
        return all(_plain(x) for x in v)
    if type(v) is dict:
        return all(type(k) in (str, int) and _plain(x) for k, x in v.items())
    return False


def load_checkpoint(path: str | Path) -> dict:
    """Read and validate a checkpoint; every failure is one clear TinyldError."""
    if not isinstance(path, (str, os.PathLike)):
        raise TinyldError(f"a checkpoint path must be a string or Path, got {type(path).__name__}")
    path = Path(path)
    if not path.is_file():
        raise TinyldError(f"no checkpoint at {path}: check the path (training writes out_dir/last.pt)")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)  # tensors and plain data only: no code runs
    except pickle.UnpicklingError as e:
        if "Unsupported global" in str(e) or "weights_only" in str(e):
            raise TinyldError(f"{path} carries Python code or objects other than tensors and plain data; "
                              "tinyld never runs code from a checkpoint (torch.load weights_only=True). "
                              "If you trust its author, re-save its tensors with torch.save") from None
        raise TinyldError(f"checkpoint {path} is truncated or corrupt (UnpicklingError); "
                          "use an earlier checkpoint or retrain") from None
    except Exception as e:
        raise TinyldError(f"checkpoint {path} is truncated or corrupt ({type(e).__name__}); "
                          "use an earlier checkpoint or retrain") from None
    if not isinstance(ck, dict) or ck.get("format") != FORMAT:
        raise TinyldError(f"{path} is not a tinyld checkpoint (no '{FORMAT}' marker); "
                          "for Hugging Face GPT-2 folders use GPT.from_hf")
    if ck.get("format_version") != FORMAT_VERSION:
        raise TinyldError(f"{path} has checkpoint format version {ck.get('format_version')}, this tinyld reads "
                          f"version {FORMAT_VERSION}: use the tinyld version that wrote it")
    missing = [k for k in ("model_config", "model", "step", "rng") if k not in ck]
    if missing or not isinstance(ck["model"], dict) or not ck["model"]:
        raise TinyldError(f"checkpoint {path} lacks {missing or ['model weights']}: it is incomplete; "
                          "use an earlier checkpoint or retrain")
    kinds = {"model_config": dict, "train_config": (dict, type(None)), "optimizer": (dict, type(None)),
             "tokenizer": (dict, type(None)), "data": (dict, type(None)), "step": int, "rng": torch.Tensor}
    bad = [k for k, t in kinds.items() if k in ck and not isinstance(ck[k], t)]
    weights = ck["model"].values()
    if not all(isinstance(w, torch.Tensor) and w.is_floating_point() for w in weights):
        bad.append("model")
    elif isinstance(ck["rng"], torch.Tensor) and ck["rng"].dtype != torch.uint8:
        bad.append("rng")
    if bad:
        raise TinyldError(f"checkpoint {path} has damaged fields {bad}: use an earlier checkpoint or retrain")
    return ck


def check_resumable(path, ck: dict, tokenizer, data: dict | None) -> None:
    """A training run may resume from checkpoint ``ck`` (read from ``path``) with this tokenizer and data (its
    identity): the same tokenizer, the same data, and an optimizer state to continue. Else one error that says
    what differs."""
    if tokenizer is not None and ck.get("tokenizer") and tokenizer.identity() != ck["tokenizer"]:
        want, got = ck["tokenizer"], tokenizer.identity()
        diff = sorted(k for k in set(want) | set(got) if want.get(k) != got.get(k))
        raise TinyldError(f"{path} was trained with tokenizer {want.get('kind')!r} (vocab "
                          f"{want.get('vocab_size')}), not the one given (they differ in {diff}): use the same one")
    want = ck.get("data")
    if want is not None and data is not None and want != data:
        diff = sorted(k for k in set(want) | set(data) if want.get(k) != data.get(k))
        raise TinyldError(f"{path} was trained on other data than the data given (they differ in {diff}): "
                          "resume with the same data source, seed, batch size and block size")
    if ck.get("train_config") is None or ck.get("optimizer") is None:
        raise TinyldError(f"{path} holds weights only (no optimizer state): load it with load_model() and "
                          "start a new Trainer instead of resuming")


def model_from_checkpoint(ck: dict | str | Path) -> GPT:
    path = ck if not isinstance(ck, dict) else "the checkpoint"
    if not isinstance(ck, dict):
        ck = load_checkpoint(ck)
    sd = ck["model"]
    try:
        config = GPTConfig.from_dict(ck["model_config"])
    except TinyldError as e:
        raise TinyldError(f"{path}: its model_config is not valid ({e})") from None
    model = GPT(config).to(next(iter(sd.values())).dtype)  # keep float64 models
    try:
        missing, unexpected = model.load_state_dict(sd, strict=False)
    except RuntimeError as e:  # shape mismatch
        missing, unexpected = [str(e).splitlines()[-1].strip()], []
    if missing or unexpected:
        raise TinyldError(f"checkpoint weights do not fit its config (missing/mismatched {missing[:3]}, unexpected "
                          f"{unexpected[:3]}): the file is incompatible with this tinyld")
    bad = first_nonfinite(model)
    if bad:
        raise TinyldError(f"{path} holds non-finite weights ({bad!r}): it comes from a diverged run; use an "
                          "earlier checkpoint")
    return model


def load_model(path: str | Path):
    """(model, tokenizer, checkpoint dict) from a tinyld checkpoint."""
    ck = load_checkpoint(path)
    model = model_from_checkpoint(ck)
    tok = tokenizer_from_identity(ck["tokenizer"]) if ck.get("tokenizer") else None
    if tok is not None and tok.vocab_size != model.config.vocab_size:
        raise TinyldError(f"{path}: its tokenizer has {tok.vocab_size} tokens but its model {model.config.vocab_size}")
    return model, tok, ck


def append_log(out: Path, rec: dict) -> None:
    """Append one record to ``out/log.jsonl`` (a training run's log: one JSON object per line)."""
    try:
        with open(out / "log.jsonl", "a") as f:
            f.write(json.dumps(rec) + "\n")
    except OSError as e:
        raise TinyldError(f"cannot append to {out / 'log.jsonl'} ({e.strerror or type(e).__name__})") from None
