"""The experiment kit: what every experiment does besides its science.

- :class:`RunFolder` — the life of one run in its output folder: one run per folder at a time (a lock naming the
  process), a manifest that ties every file to its run, results kept part by part as each seed or sweep point
  finishes, ``--resume`` and ``--overwrite``, and every path checked before the first step.
- :func:`header` — the lines every run starts with: what it is, where it runs, the versions, the config, and the
  values the config changed from what was asked.
- :func:`add_claim` and :func:`claims_table` — one claim of the paper measured per seed, with its verdict; each
  claim formats its own measurement.
- :func:`conditions_table`, :func:`summary` (mean ± sd over seeds) and :func:`write_json` (strict JSON).

An experiment is its science plus calls into this module: ``run(cfg)`` opens a RunFolder, computes each seed as a
:meth:`RunFolder.part`, judges the claims and ends with :meth:`RunFolder.finish`.
"""
from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import math
import statistics
from pathlib import Path
from typing import Callable

from tinyld.checkpoints import FolderLock
from tinyld.distributed import from_rank0, is_main
from tinyld.runtime import TinyldError, TrainingInterrupted, pick_device, versions, writable_dir, write_text_atomic

MANIFEST = "manifest.json"  # in the output folder: which run wrote which file
PARTS = "parts"  # the sub-folder where each finished part (a seed, a sweep point) is kept as JSON
NOT_HASHED = ("out",)  # config fields that do not change what a run computes


def config_hash(config: dict) -> str:
    """A short hash of a config (JSON with sorted keys), without the fields in :data:`NOT_HASHED`."""
    kept = {k: v for k, v in config.items() if k not in NOT_HASHED}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:16]


def now() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


class Folder:
    """Where an experiment's pieces write, when they are called on their own (from a lesson, a notebook): a plain
    folder, created if needed, with no lock and no manifest; a part is computed each time (and, as in a
    :class:`RunFolder`, goes through JSON). :class:`RunFolder` is the same interface with the run's lifecycle."""

    def __init__(self, out):
        self.out = writable_dir(out, "output folder") if is_main() else Path(out)
        self.manifest: dict = {"versions": versions()}

    def path(self, name: str) -> Path:
        """The path of output ``name`` (its folder created)."""
        if is_main():
            writable_dir((self.out / name).parent, "output folder")
        return self.out / name

    def write(self, name: str, text: str) -> Path:
        """Write output ``name`` atomically (rank 0 only)."""
        return write_text_atomic(self.path(name), text) if is_main() else self.out / name

    def part(self, key: str, compute: Callable[[], dict]) -> dict:
        """``compute()``, through JSON (rank 0; the other ranks get what they computed, ``{}``)."""
        value = compute()
        return json.loads(json.dumps(value)) if is_main() else value


def as_folder(folder) -> "Folder":
    """A :class:`Folder` (or :class:`RunFolder`) as it is, or a plain Folder at a path."""
    return folder if isinstance(folder, Folder) else Folder(folder)


class RunFolder(Folder):
    """One run of an experiment in its output folder ``out``: :class:`Folder` with a lifecycle.

    ``command``: the experiment's name; ``config``: its resolved config (a dict, as the JSON records it);
    ``outputs``: every file the run may write there, checked before any work; ``overwrite``: replace the run the
    folder holds (exactly the files its manifest lists are removed); ``resume``: continue it (its finished parts are
    read back, not computed again); ``again``: the command line that continues this run, said when it stops early.

    Use it as a context manager. Under torchrun rank 0 alone reads and writes the folder and the others are told its
    decisions, so that every rank skips a finished part together."""

    def __init__(self, out, command: str, config: dict, outputs: list[str], overwrite: bool = False,
                 resume: bool = False, again: str | None = None):
        if overwrite and resume:
            raise TinyldError(f"{command}: --overwrite starts the run in {out} again, --resume continues it: give "
                              "one of them")
        self.out, self.command, self.config = Path(out), command, config
        self.outputs, self.overwrite, self.resume = list(outputs), overwrite, resume
        self.again = again or "run(cfg, resume=True)"
        self.manifest: dict = {}
        self.done: list[str] = []  # the parts finished, in the order they finished
        self.lock = FolderLock(None)
        self.finished = False

    # -------------------------------------------------------------------------------------------------- opening
    def __enter__(self) -> "RunFolder":
        verdict = from_rank0(lambda: self._open_checked() if is_main() else [])  # rank 0 decides; every rank
        # raises the same error, or goes on
        if isinstance(verdict, str):
            raise TinyldError(verdict)
        self.done = verdict
        return self

    def _open_checked(self):
        try:
            return self._open()
        except TinyldError as e:
            self.lock.__exit__(None, None, None)
            return str(e)

    def _open(self) -> list[str]:
        out = writable_dir(self.out, f"{self.command} output folder")
        self.lock = FolderLock(out, f"tinyld {self.command}").__enter__()
        for name in self.outputs:  # every path the run writes, before the first step
            if (out / name).is_dir():
                raise TinyldError(f"{out / name} is a folder: {self.command} writes a file there; remove or rename "
                                  "it, or choose another --out")
        if (out / PARTS).exists() and not (out / PARTS).is_dir():
            raise TinyldError(f"{out / PARTS} is a file: {self.command} keeps its finished parts in a folder there; "
                              "remove or rename it, or choose another --out")
        old = self._old_manifest(out)
        if old is None:
            return self._fresh(out)
        left = [name for name in old["files"] if (out / name).exists()]
        if self.overwrite or (old.get("status") != "finished" and not old.get("parts") and not left):
            self._remove(out, old)  # (a run that stopped before writing anything left nothing to keep)
            return self._fresh(out)
        if old.get("status") == "finished" or not self.resume:
            state = ("a finished run" if old.get("status") == "finished" else
                     f"an unfinished run ({len(old.get('parts', []))} parts done)")
            what = ("give --overwrite to replace it, or choose another --out" if old.get("status") == "finished" else
                    "continue it with --resume, or start again with --overwrite")
            raise TinyldError(f"{out} holds {state} of {old.get('command', '?')}, started {old.get('started', '?')}: "
                              f"{what}")
        return self._continue(out, old)

    def _old_manifest(self, out: Path) -> dict | None:
        path = out / MANIFEST
        if not path.exists():
            if self.resume:
                raise TinyldError(f"{out} holds no run to resume (no {MANIFEST}): run without --resume")
            mine = [n for n in self.outputs if (out / n).exists()]
            if mine and not self.overwrite:
                raise TinyldError(f"{out} already holds {', '.join(mine[:3])}{' …' if len(mine) > 3 else ''}, "
                                  "which no tinyld run there claims: give --overwrite to replace them, or choose "
                                  "another --out")
            return None
        try:
            old = json.loads(path.read_text())
            assert isinstance(old, dict) and isinstance(old.get("files"), list)
        except (OSError, ValueError, AssertionError):
            raise TinyldError(f"{path} is not a tinyld run manifest: remove it, or choose another --out") from None
        return old

    def _fresh(self, out: Path) -> list[str]:
        self.manifest = {"tinyld": "run manifest", "command": self.command, "config": self.config,
                         "config_hash": config_hash(self.config), "versions": versions(), "started": now(),
                         "status": "running", "parts": [], "files": [], "continue": self.again}
        self._save()
        return []

    def _continue(self, out: Path, old: dict) -> list[str]:
        if old.get("command") != self.command or old.get("config_hash") != config_hash(self.config):
            was = old.get("config", {})
            diff = [k for k in sorted(set(was) | set(self.config)) if k not in NOT_HASHED
                    and was.get(k) != self.config.get(k)]
            shown = ", ".join(f"{k} {was.get(k)!r} → {self.config.get(k)!r}" for k in diff[:4]) or "the command"
            raise TinyldError(f"{out} holds a run of {old.get('command')} with another config ({shown}): resume it "
                              "with the config it was started with, or start again with --overwrite")
        if old.get("versions") != versions():
            print(f"  note: the run was started with versions {json.dumps(old.get('versions'))}")
        done = [k for k in old.get("parts", []) if (out / self.part_file(k)).is_file()]
        self.manifest = {**old, "status": "running", "parts": done,
                         "resumed": old.get("resumed", []) + [now()], "continue": self.again}
        self._save()
        print(f"  resuming: {len(done)} finished parts read back from {out / PARTS}")
        return done

    def _remove(self, out: Path, old: dict) -> None:
        """Remove exactly the files the old manifest lists (inside ``out``), then the manifest and empty folders."""
        for name in old["files"] + [MANIFEST]:
            path = (out / name).resolve()
            if out.resolve() not in path.parents:
                raise TinyldError(f"{out / MANIFEST} lists {name!r}, which is not inside {out}: remove it by hand")
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        for folder in sorted({(out / n).parent for n in old["files"]}, key=lambda p: -len(p.parts)):
            if folder != out and folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()

    # -------------------------------------------------------------------------------------------------- writing
    def _save(self) -> None:
        write_text_atomic(self.out / MANIFEST, json.dumps(self.manifest, indent=1, default=str) + "\n")

    def path(self, name: str) -> Path:
        """The path of output ``name`` (one of ``outputs``), listed in the manifest before it is written."""
        if name not in self.outputs and not name.startswith(PARTS + "/"):
            raise TinyldError(f"{self.command} writes {name!r}, which its outputs did not list: list it in outputs()")
        if is_main() and name not in self.manifest["files"]:
            self.manifest["files"].append(name)
            self._save()
        if is_main() and name.startswith(PARTS + "/"):
            writable_dir(self.out / PARTS, f"{self.command} parts folder")
        return self.out / name

    @staticmethod
    def part_file(key: str) -> str:
        return f"{PARTS}/{key.replace('/', '__')}.json"

    def part(self, key: str, compute: Callable[[], dict]) -> dict:
        """The result of part ``key`` (a seed, a sweep point): read back if a resumed run finished it, else
        ``compute()``, kept at once in ``parts/`` (atomically) and in the manifest. Either way the result has been
        through JSON, so a resumed run and an uninterrupted one go on from identical objects. Every rank computes
        (training is shared); rank 0's result is kept, the others' (``{}``) returned to them."""
        if from_rank0(lambda: key in self.done):
            return json.loads((self.out / self.part_file(key)).read_text()) if is_main() else {}
        value = compute()
        if not is_main():
            return value
        text = json.dumps(value)  # NaN allowed here: parts are read back by tinyld alone
        self.write(self.part_file(key), text)
        self.done.append(key)
        self.manifest["parts"] = self.done
        self._save()
        return json.loads(text)

    def finish(self) -> None:
        """Mark the run finished: the folder now holds a complete run."""
        if is_main():
            self.manifest.update(status="finished", finished=now())
            self._save()
        self.finished = True

    # -------------------------------------------------------------------------------------------------- closing
    def __exit__(self, kind, err, tb):
        if is_main() and self.manifest and not self.finished:
            self.manifest["status"] = "interrupted" if kind and issubclass(kind, KeyboardInterrupt) else "failed"
            with contextlib.suppress(TinyldError):
                self._save()
        self.lock.__exit__(None, None, None)
        if not self.manifest or self.finished or kind is None:
            return False
        n = len(self.done)
        kept = (f"{n} finished part{' is' if n == 1 else 's are'} kept in {self.out}" if self.done else
                f"no part had finished; {self.out} keeps the run's manifest")
        if issubclass(kind, KeyboardInterrupt):
            raise TrainingInterrupted(f"stopped: {kept}. Continue with: {self.again}", None) from None
        if self.done and is_main():
            print(f"  {kept}: the same command with --resume continues from them ({self.again}), or with "
                  "--overwrite starts again")
        return False


# ------------------------------------------------------------------------------------------------------------------
# the header, claims, tables and JSON
# ------------------------------------------------------------------------------------------------------------------


def header(command: str, title: str, cfg, config: dict) -> None:
    """The first lines of a run: its title, device, threads, versions and config; then one line per value the config
    changed from what was asked (``cfg.changed``: e.g. fast mode's caps)."""
    print(f"tinyld {command} — {title}")
    print(f"  {pick_device(cfg.device)}, {cfg.threads} CPU threads · versions {json.dumps(versions())}\n"
          f"  config {json.dumps(config)}")
    for line in getattr(cfg, "changed", []):
        print(f"  note: {line}")


def honour_batch_size(cfg, available: int, what: str) -> None:
    """A batch larger than the data cannot be honoured: the run uses all ``available`` examples per step, the config
    records that, and the header says so (``cfg.changed``)."""
    if cfg.batch_size > available:
        cfg.changed = [*getattr(cfg, "changed", []), f"batch_size {cfg.batch_size} → {available}: there are "
                       f"{available} {what}, and a step holds each at most once"]
        cfg.batch_size = available


class Claim(dict):
    """One claim as the JSON records it (a dict), with ``fmt``: how one seed's measurement is shown."""

    fmt: Callable[[dict], str]


def add_claim(out: list, key: str, paper: str, per: list[dict], fmt: Callable[[dict], str]) -> None:
    """Append one claim, measured per seed (each with a ``held`` flag), with its verdict (held · not held ·
    mixed (n/seeds)) and ``fmt``, which writes one seed's measurement in the claims table."""
    n = sum(m["held"] for m in per)
    verdict = "held" if n == len(per) else ("not held" if n == 0 else f"mixed ({n}/{len(per)})")
    c = Claim(claim=key, paper=paper, per_seed=per, held=n, of=len(per), verdict=verdict)
    c.fmt = fmt
    out.append(c)


def claims_table(claims: list[Claim], title: str, width: int = 40,
                 unit: str = " (nats, summed over the response)") -> str:
    """One line per claim: its verdict, then each seed's measurement as the claim formats it."""
    lines = [title, f"  {'claim':{width}s} {'verdict':13s} per seed{unit}"]
    for c in claims:
        lines.append(f"  {c['claim']:{width}s} {c['verdict']:13s} " + " | ".join(c.fmt(m) for m in c["per_seed"]))
    return "\n".join(lines)


def dash(value, spec: str) -> str:
    """``value`` formatted by ``spec``, or — for None (a measurement that does not exist)."""
    return "—" if value is None else format(value, spec)


def change_fmt(m: dict) -> str:
    """The most common measurement: a change in nats."""
    return f"{m['change']:+.1f}"


def conditions_table(heads: list[str], settings: list[tuple[str, list[str]]], claims: dict[str, list[str]],
                     width: int, col: int) -> list[str]:
    """Claims (rows) under conditions (columns): a row of heads, the settings that tell the conditions apart, then
    per claim the seeds where it held under each condition."""
    rows = [f"{'claim':{width}s}" + "".join(h.rjust(col) for h in heads)]
    rows += [f"{name:{width}s}" + "".join(v.rjust(col) for v in values) for name, values in settings]
    rows += [f"{name:{width}s}" + "".join(v.rjust(col) for v in values) for name, values in claims.items()]
    return rows


def held_counts(claims: list[dict]) -> dict[str, str]:
    """claim → "held/of", for a conditions table."""
    return {c["claim"]: f"{c['held']}/{c['of']}" for c in claims}


def plain_json(x):
    """NaN and ±inf become null: strict JSON readers refuse them."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: plain_json(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [plain_json(v) for v in x]
    return x


def write_json(folder: RunFolder, name: str, result: dict) -> Path:
    """The result as strict JSON (NaN and ±inf as null), written atomically into the run folder."""
    return folder.write(name, json.dumps(plain_json(result), indent=1, allow_nan=False))


def summary(per_seed: list[dict]) -> dict:
    """Mean and sd over seeds of every key of the per-seed dicts (sd 0 for one seed)."""
    return {k: {"mean": statistics.fmean(d[k] for d in per_seed),
                "sd": statistics.stdev([d[k] for d in per_seed]) if len(per_seed) > 1 else 0.0}
            for k in per_seed[0]}
