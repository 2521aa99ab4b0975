"""The life of one experiment run in its output folder (:class:`RunFolder`): one run per folder at a time (a lock
naming the process), a manifest that ties every file to its run, results kept part by part as each seed or sweep
point finishes, ``--resume`` and ``--overwrite``, and every path checked before the first step. :class:`Folder` is
the same interface without the lifecycle, for an experiment's pieces called from a lesson.
"""
from __future__ import annotations

import datetime
import hashlib
import json
from pathlib import Path, PurePosixPath
from typing import Callable

from tinyld.checkpoints import FolderLock
from tinyld.distributed import from_rank0, is_main
from tinyld.runtime import TinyldError, TrainingInterrupted, versions, writable_dir, write_text_atomic

MANIFEST = "manifest.json"  # in the output folder: which run wrote which file
MARK = "run manifest"  # its "tinyld" field: a manifest.json without it is someone else's, and never acted on
PARTS = "parts"  # the sub-folder where each finished part (a seed, a sweep point) is kept as JSON
NOT_HASHED = ("out",)  # config fields that do not change what a run computes (the thread count does)


def config_hash(config: dict) -> str:
    """A short hash of a config (JSON with sorted keys), without the fields in :data:`NOT_HASHED`."""
    kept = {k: v for k, v in config.items() if k not in NOT_HASHED}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:16]


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def now() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


class Folder:
    """Where an experiment's pieces write, when they are called on their own (from a lesson, a notebook): a plain
    folder, created if needed, with no lock and no manifest; a part is computed each time (and, as in a
    :class:`RunFolder`, goes through JSON)."""

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


def as_folder(folder) -> Folder:
    """A :class:`Folder` (or :class:`RunFolder`) as it is, or a plain Folder at a path."""
    return folder if isinstance(folder, Folder) else Folder(folder)


def check_manifest(old, path: Path) -> dict:
    """A manifest as tinyld writes it, or one error: anything else is someone else's file and is never acted on."""
    strings = lambda xs: isinstance(xs, list) and all(isinstance(x, str) and x for x in xs)  # noqa: E731
    ok = (isinstance(old, dict) and old.get("tinyld") == MARK and isinstance(old.get("command"), str)
          and isinstance(old.get("config"), dict) and strings(old.get("files")) and strings(old.get("parts"))
          and isinstance(old.get("part_hashes", {}), dict))
    if not ok:
        raise TinyldError(f"{path} is not a tinyld run manifest (or it was edited): this folder holds files that "
                          "are not a tinyld run's; choose another --out, or move them away")
    return old


def inside(out: Path, name: str) -> Path:
    """``out / name`` for a manifest entry that names a file inside ``out`` (relative, no "..", no symlinked folder
    on the way), else one error. A symlink entry itself is fine: removing it removes the link, not its target."""
    p = PurePosixPath(name)
    path = out / name
    parent = path.parent.resolve()
    if p.is_absolute() or ".." in p.parts or not p.parts or str(p) != name or \
            (parent != out.resolve() and out.resolve() not in parent.parents):
        raise TinyldError(f"{out / MANIFEST} lists {name!r}, which is not a file inside {out}: nothing was removed; "
                          f"fix or remove {out / MANIFEST} by hand")
    if path.is_dir() and not path.is_symlink():
        raise TinyldError(f"{out / MANIFEST} lists {name!r}, which is a folder: nothing was removed; remove it by "
                          "hand")
    return path


class RunFolder(Folder):
    """One run of an experiment in its output folder ``out``: :class:`Folder` with a lifecycle.

    ``command``: the experiment's name; ``config``: its resolved config (a dict, as the JSON records it);
    ``outputs``: every file the run may write there, checked before any work; ``overwrite``: replace the run the
    folder holds (exactly the files its manifest lists are removed); ``resume``: continue it (its finished parts are
    read back, not computed again); ``again``: the command line that continues this run, said when it stops early
    (None: the Python call).

    Use it as a context manager. Under torchrun rank 0 alone reads and writes the folder and the others are told its
    decisions, so that every rank skips a finished part together."""

    def __init__(self, out, command: str, config: dict, outputs: list[str], overwrite: bool = False,
                 resume: bool = False, again: str | None = None):
        for name, value in (("overwrite", overwrite), ("resume", resume)):
            if not isinstance(value, bool):
                raise TinyldError(f"{command}: {name} must be True or False, got {value!r}")
        self.flags = ("--overwrite", "--resume", "--out") if again else ("overwrite=True", "resume=True", "out")
        if overwrite and resume:
            raise TinyldError(f"{command}: {self.flags[0]} starts the run in {out} again, {self.flags[1]} continues "
                              "it: give one of them")
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
        if isinstance(verdict, str):  # raises the same error, or goes on
            raise TinyldError(verdict)
        self.done = verdict
        return self

    def _open_checked(self):
        try:
            return self._open()
        except TinyldError as e:
            self.lock.__exit__(None, None, None)
            return str(e)
        except BaseException:  # Ctrl-C or a bug while opening: never leave the lock behind
            self.lock.__exit__(None, None, None)
            raise

    def _open(self) -> list[str]:
        out = writable_dir(self.out, f"{self.command} output folder")
        self.lock = FolderLock(out, f"tinyld {self.command}").__enter__()
        self._check_paths(out)
        old = self._old_manifest(out)
        if old is None:
            return self._fresh(out)
        left = [name for name in old["files"] if (out / name).exists()]
        unfinished = old.get("status") != "finished"
        if self.overwrite or (unfinished and not old["parts"] and not left):
            self._remove(out, old)  # (a run that stopped before writing anything left nothing to keep)
            return self._fresh(out)
        if old["command"] != self.command:
            raise TinyldError(f"{out} holds a{'n unfinished' if unfinished else ' finished'} run of "
                              f"{old['command']}, not {self.command}: choose another {self.flags[2]}, or replace "
                              f"it with {self.flags[0]}")
        if not unfinished or not self.resume:
            state = "a finished run" if not unfinished else f"an unfinished run ({plural(len(old['parts']), 'part')}"\
                " done)"
            what = (f"give {self.flags[0]} to replace it, or choose another {self.flags[2]}" if not unfinished else
                    f"continue it with {self.flags[1]}, or start again with {self.flags[0]}")
            raise TinyldError(f"{out} holds {state} of {old['command']}, started {old.get('started', '?')}: {what}")
        return self._continue(out, old)

    def _check_paths(self, out: Path) -> None:
        """Every path the run writes, before the first step: no output is a folder, the parts folder is a folder
        that can be written, and no part file is a folder."""
        for name in self.outputs:
            if (out / name).is_dir():
                raise TinyldError(f"{out / name} is a folder: {self.command} writes a file there; remove or rename "
                                  f"it, or choose another {self.flags[2]}")
        if (out / PARTS).is_symlink():
            raise TinyldError(f"{out / PARTS} is a symlink: {self.command} keeps its finished parts in a folder of its "
                              f"own there; remove the link, or choose another {self.flags[2]}")
        if (out / PARTS).exists() and not (out / PARTS).is_dir():
            raise TinyldError(f"{out / PARTS} is a file: {self.command} keeps its finished parts in a folder there; "
                              f"remove or rename it, or choose another {self.flags[2]}")
        parts = writable_dir(out / PARTS, f"{self.command} parts folder")
        folders = [p.name for p in parts.iterdir() if p.suffix == ".json" and p.is_dir()]
        if folders:
            raise TinyldError(f"{parts / folders[0]} is a folder: {self.command} keeps a part there; remove it")

    def _old_manifest(self, out: Path) -> dict | None:
        path = out / MANIFEST
        if not path.exists():
            if self.resume:
                raise TinyldError(f"{out} holds no run to resume (no {MANIFEST}): run without {self.flags[1]}")
            mine = [n for n in self.outputs if (out / n).exists()]
            if mine and not self.overwrite:
                raise TinyldError(f"{out} already holds {', '.join(mine[:3])}{' …' if len(mine) > 3 else ''}, which "
                                  f"no tinyld run there claims: give {self.flags[0]} to replace "
                                  f"{'it' if len(mine) == 1 else 'them'}, or choose another {self.flags[2]}")
            return None
        try:
            old = json.loads(path.read_text())
        except (OSError, ValueError):
            old = None
        return check_manifest(old, path)

    def _fresh(self, out: Path) -> list[str]:
        self.manifest = {"tinyld": MARK, "command": self.command, "config": self.config,
                         "config_hash": config_hash(self.config), "versions": versions(), "started": now(),
                         "status": "running", "parts": [], "part_hashes": {}, "files": [], "continue": self.again}
        self._save()
        return []

    def _continue(self, out: Path, old: dict) -> list[str]:
        if old.get("config_hash") != config_hash(self.config):
            was = old["config"]
            diff = [k for k in sorted(set(was) | set(self.config)) if k not in NOT_HASHED
                    and was.get(k) != self.config.get(k)]
            shown = ", ".join(f"{k} {was.get(k)!r} → {self.config.get(k)!r}" for k in diff[:4]) or "its hash"
            raise TinyldError(f"{out} holds a run of {old['command']} with another config ({shown}): resume it "
                              f"with the config it was started with, or start again with {self.flags[0]}")
        if old.get("versions") != versions():
            print(f"  note: the run was started with versions {json.dumps(old.get('versions'))}")
        hashes = old.get("part_hashes", {})
        done = [k for k in old["parts"] if self._intact(out, k, hashes.get(k))]
        self.manifest = {**old, "status": "running", "parts": done, "part_hashes": {k: hashes[k] for k in done},
                         "resumed": old.get("resumed", []) + [now()], "continue": self.again}
        self._save()
        print(f"  resuming: {plural(len(done), 'finished part')} read back from {out / PARTS}")
        return done

    def _intact(self, out: Path, key: str, digest: str | None) -> bool:
        """Whether part ``key`` is on disk as it was written (else it is computed again, and said so)."""
        try:
            ok = text_hash((out / self.part_file(key)).read_text()) == digest
        except (OSError, UnicodeDecodeError):
            ok = False
        if not ok:
            print(f"  note: {self.part_file(key)} is missing or was changed since it was written: computing it again")
        return ok

    def _remove(self, out: Path, old: dict) -> None:
        """Remove exactly the files the old manifest lists (all checked first), then the manifest and the folders
        the removal left empty."""
        paths = [inside(out, name) for name in old["files"]]  # every entry checked before anything is removed
        for path in [*paths, out / MANIFEST]:
            path.unlink(missing_ok=True)  # a symlink: the link, never its target
        for folder in sorted({p.parent for p in paths}, key=lambda p: -len(p.parts)):
            if folder != out and folder.is_dir() and not folder.is_symlink() and not any(folder.iterdir()):
                folder.rmdir()

    # -------------------------------------------------------------------------------------------------- writing
    def _save(self) -> None:
        write_text_atomic(self.out / MANIFEST, json.dumps(self.manifest, indent=1, default=str) + "\n")

    def path(self, name: str) -> Path:
        """The path of output ``name`` (one of ``outputs``), listed in the manifest before it is written. An old
        symlink there is removed first, so that nothing is written through it."""
        if name not in self.outputs and not name.startswith(PARTS + "/"):
            raise TinyldError(f"{self.command} writes {name!r}, which its outputs did not list: list it in outputs()")
        if is_main():
            if name not in self.manifest["files"]:
                self.manifest["files"].append(name)
                self._save()
            if (self.out / name).is_symlink():
                (self.out / name).unlink()
            if name.startswith(PARTS + "/"):
                (self.out / PARTS).mkdir(exist_ok=True)
        return self.out / name

    @staticmethod
    def part_file(key: str) -> str:
        return f"{PARTS}/{key.replace('/', '__')}.json"

    def part(self, key: str, compute: Callable[[], dict]) -> dict:
        """The result of part ``key`` (a seed, a sweep point): read back if a resumed run finished it, else
        ``compute()``, kept at once in ``parts/`` (atomically) and in the manifest with its hash. Either way the
        result has been through JSON, so a resumed run and an uninterrupted one go on from identical objects. Every
        rank computes (training is shared); rank 0's result is kept, the others' (``{}``) returned to them."""
        if from_rank0(lambda: key in self.done):
            return json.loads((self.out / self.part_file(key)).read_text()) if is_main() else {}
        value = compute()
        if not is_main():
            return value
        text = json.dumps(value)  # NaN allowed here: parts are read back by tinyld alone
        self.write(self.part_file(key), text)
        self.done.append(key)
        self.manifest["parts"] = self.done
        self.manifest["part_hashes"][key] = text_hash(text)
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
            try:
                self._save()
            except TinyldError:
                pass
        self.lock.__exit__(None, None, None)
        if not self.manifest or self.finished or kind is None:
            return False
        n = len(self.done)
        kept = (f"{plural(n, 'finished part')} {'is' if n == 1 else 'are'} kept in {self.out}" if n else
                f"no part had finished; {self.out} keeps the run's manifest")
        if issubclass(kind, KeyboardInterrupt):
            raise TrainingInterrupted(f"stopped: {kept}. Continue with: {self.again}", None) from None
        if n and is_main():
            print(f"  {kept}: the same command with {self.flags[1]} continues from {'it' if n == 1 else 'them'} "
                  f"({self.again}), or with {self.flags[0]} starts again")
        return False
