"""The experiment kit: what every experiment does besides its science.

- :class:`~tinyld.experiments.runfolder.RunFolder` (from :mod:`tinyld.experiments.runfolder`, named here too) — the
  life of one run in its output folder: one run per folder at a time (a lock naming the process), a manifest that
  ties every file to its run, results kept part by part as each seed or sweep point finishes, ``--resume`` and
  ``--overwrite``, and every path checked before the first step.
- :func:`header` — the lines every run starts with: what it is, where it runs, the versions, the config, and the
  values the config changed from what was asked.
- :func:`add_claim` and :func:`claims_table` — one claim of the paper measured per seed, with its verdict; each
  claim formats its own measurement.
- :func:`conditions_table`, :func:`summary` (mean ± sd over seeds) and :func:`write_json` (strict JSON).

An experiment is its science plus calls into this module: ``run(cfg)`` opens a RunFolder, computes each seed as a
:meth:`RunFolder.part`, judges the claims and ends with :meth:`RunFolder.finish`.
"""
from __future__ import annotations

import json
import math
import statistics
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

from tinyld.experiments.runfolder import Folder, RunFolder, as_folder, config_hash
from tinyld.runtime import num_threads, pick_device, versions

__all__ = ["Folder", "RunFolder", "add_claim", "as_folder", "change_fmt", "claims_table", "conditions_table",
           "config_hash", "dash", "header", "held_counts", "honour_batch_size", "plain_json", "run_in_folder", "summary",
           "write_json", "write_results"]

# ------------------------------------------------------------------------------------------------------------------
# the header, claims, tables and JSON
# ------------------------------------------------------------------------------------------------------------------


def header(command: str, title: str, cfg, config: dict) -> None:
    """The first lines of a run: its title, device, threads, versions and config; then one line per value the config
    changed from what was asked (``cfg.changed``: e.g. fast mode's caps)."""
    print(f"tinyld {command} — {title}")
    print(f"  {pick_device(cfg.device)}, {cfg.threads} CPU threads · versions {json.dumps(versions())}\n"
          f"  config {json.dumps(config, default=str)}")
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


def add_claim(out: list, key: str, paper: str, per: list[dict], fmt: Callable[[dict], str],
              headline: tuple | None = None) -> None:
    """Append one claim, measured per seed (each with a ``held`` flag), with its verdict (held · not held ·
    mixed (n/seeds)) and ``fmt``, which writes one seed's measurement in the claims table. ``headline``: (label, f)
    or (label, f, format spec, default "+.2f"), where f gives one seed's headline number (or a tuple of them; None
    where it does not exist); the table and the JSON then carry their mean ± sd over the seeds that have it."""
    n = sum(m["held"] for m in per)
    verdict = "held" if n == len(per) else ("not held" if n == 0 else f"mixed ({n}/{len(per)})")
    c = Claim(claim=key, paper=paper, per_seed=per, held=n, of=len(per), verdict=verdict)
    if headline is not None:
        label, f, spec = (*headline, "+.2f")[:3]
        values = [v if isinstance(v, tuple) else (v,) for v in map(f, per)]
        values = [v for v in values if None not in v]  # a seed without the number (or one of them) is left out
        cols = list(zip(*values))
        c["mean_sd"] = {"label": label, "seeds": len(values), "spec": spec,
                        "mean": [statistics.fmean(x) for x in cols],
                        "sd": [statistics.stdev(x) if len(x) > 1 else 0.0 for x in cols]}
    c.fmt = fmt
    out.append(c)


def mean_sd_text(c: dict) -> str:
    """A claim's headline as the table shows it: "label mean ± sd" (one per number), or — where no seed has it."""
    m = c.get("mean_sd")
    if not m or not m["seeds"]:
        return "—"
    sd = m["spec"].lstrip("+")
    if m["seeds"] == 1:  # no spread from one seed
        return m["label"] + " " + ", ".join(f"{a:{m['spec']}}" for a in m["mean"]) + " (1 seed)"
    return m["label"] + " " + ", ".join(f"{a:{m['spec']}} ± {b:{sd}}" for a, b in zip(m["mean"], m["sd"]))


def claims_table(claims: list[Claim], title: str, width: int = 40,
                 unit: str = " (nats, summed over the response)") -> str:
    """One line per claim: its verdict, its headline's mean ± sd over the seeds (where the claims have one), then
    each seed's measurement as the claim formats it."""
    ms = [mean_sd_text(c) for c in claims] if any("mean_sd" in c for c in claims) else None
    mw = max(len("mean ± sd over seeds"), *(len(x) for x in ms)) if ms else 0
    head = f"{'mean ± sd over seeds':{mw}s} " if ms else ""
    lines = [title, f"  {'claim':{width}s} {'verdict':13s} {head}per seed{unit}"]
    for i, c in enumerate(claims):
        mid = f"{ms[i]:{mw}s} " if ms else ""
        lines.append(f"  {c['claim']:{width}s} {c['verdict']:13s} {mid}" + " | ".join(c.fmt(m) for m in c["per_seed"]))
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


def run_in_folder(cfg, command: str, outputs: list[str], body: Callable, overwrite: bool, resume: bool,
                  again: str | None) -> dict:
    """``body(cfg, folder)`` inside the run's :class:`RunFolder` at ``cfg.out``, with ``cfg.threads`` CPU threads;
    the folder is marked finished when it returns. Every experiment's ``run`` ends here."""
    with RunFolder(cfg.out, command, asdict(cfg), outputs, overwrite, resume, again) as folder, \
            num_threads(cfg.threads):
        result = body(cfg, folder)
        folder.finish()
        return result


def write_results(folder: RunFolder, name: str, result: dict, claims: str, t0: float, also: str = "figures") -> dict:
    """The end of a run (rank 0): its runtime since ``t0``, the JSON ``name``, claims.txt, and one line saying what
    was written."""
    result["runtime_s"] = round(time.perf_counter() - t0, 1)
    write_json(folder, name, result)
    folder.write("claims.txt", claims + "\n")
    print(f"\nwrote {folder.out / name}, {folder.out / 'claims.txt'} and {also} in {folder.out} · "
          f"{result['runtime_s']} s")
    return result


def write_json(folder: RunFolder, name: str, result: dict) -> Path:
    """The result as strict JSON (NaN and ±inf as null), written atomically into the run folder."""
    return folder.write(name, json.dumps(plain_json(result), indent=1, allow_nan=False))


def summary(per_seed: list[dict]) -> dict:
    """Mean and sd over seeds of every key of the per-seed dicts (sd 0 for one seed)."""
    return {k: {"mean": statistics.fmean(d[k] for d in per_seed),
                "sd": statistics.stdev([d[k] for d in per_seed]) if len(per_seed) > 1 else 0.0}
            for k in per_seed[0]}
