"""dpo-dynamics ``--experiment extend``: the baseline spends its SFT steps on y⁺ alone, extend spends the same number
on y⁺ and y⁻; then DPO from each. Reported: log π(y⁻) during SFT, squeezing during DPO, and a win rate judged by
the world's oracle on sampled answers to held-out prompts. Each seed is one part of the run."""
from __future__ import annotations

import statistics
from pathlib import Path

from tinyld.data import Example
from tinyld.distributed import is_main
from tinyld.evaluate import valley_depth
from tinyld.experiments.dpo_dynamics.claims import dpo_change_fmt, squeeze_summary
from tinyld.experiments.dpo_dynamics.config import DPODynamicsConfig
from tinyld.experiments.dpo_dynamics.stages import base, dpo, probes_for, sampled_correct, sft, sft_steps
from tinyld.experiments.kit import Folder, add_claim, as_folder
from tinyld.probes import Tracker
from tinyld.world import World


def run_extend(cfg: DPODynamicsConfig, mode: str, folder: Folder | Path) -> dict:
    """Extend against the baseline in every seed (:func:`extend_seed`, one part each), the claims
    (:func:`judge_extend`) and the figure. Under torchrun the ranks other than 0 only train (and return ``{}``)."""
    folder = as_folder(folder)
    per_seed = []
    for seed in cfg.seeds:
        per_seed.append(folder.part(f"{mode}/extend/seed{seed}", lambda: extend_seed(cfg, seed, mode)))
        if is_main():
            print_extend_seed(per_seed[-1])
    if not is_main():
        return {}
    res = {"claims": judge_extend(per_seed), "per_seed": per_seed}
    try:
        res["figure"] = str(extend_figure(per_seed, folder.path(f"extend_{mode}.png"), f"extend vs baseline, {mode} "
                                          f"world (mean of {len(per_seed)} seeds)"))
    except ImportError as e:
        print(f"  (no figure: {e})")
    return res


def extend_seed(cfg: DPODynamicsConfig, seed: int, mode: str) -> dict:
    """One seed of extend against the baseline: each arm's SFT (log π during it), then DPO from it with snapshots
    after the :func:`win_epochs`, and the win rates of extend's sampled answers (:func:`win_rates`).
    Under torchrun the ranks other than 0 only train (and return ``{}``)."""
    main = is_main()
    model, tok, world = base(cfg, seed, mode)
    items = world.train_items()
    steps = sft_steps(cfg, len(items))
    probes = probes_for(model, tok, world)
    arms = {}
    for arm, examples in (("baseline", [it.example() for it in items]),
                          ("extend", [e for it in items for e in (it.example(), Example(it.prompt, it.rejected))])):
        tr = None
        if main:  # log π during SFT
            tr = Tracker(tok, probes, every=max(1, steps // max(1, cfg.sft_epochs)), valley=False)
            tr.measure(model, 0)
        m = sft(cfg, seed, model, tok, examples, steps, tracker=tr)
        run = dpo(cfg, seed, m, tok, probes_for(m, tok, world), world, snapshots=win_epochs(cfg))
        if not main:
            continue
        run["sft_rejected"] = tr.curve("rejected", "train")[1]
        run["sft_chosen"] = tr.curve("chosen", "train")[1]
        run["valley_before_dpo"] = valley_depth(m, tok)
        arms[arm] = run
    if not main:
        return {}
    win = win_rates(cfg, arms, tok, world, seed)
    for run in arms.values():
        run.pop("models")
    rec = {"seed": seed, "sft_steps": steps, "win": win,
           **{arm: {"squeeze": squeeze_summary(r), "sft_rejected": r["sft_rejected"],
                    "sft_chosen": r["sft_chosen"], "valley_before_dpo": r["valley_before_dpo"], "run": r}
              for arm, r in arms.items()}}
    return rec


def print_extend_seed(rec: dict) -> None:
    sb, se = rec["baseline"]["squeeze"], rec["extend"]["squeeze"]
    print(f"  seed {rec['seed']}: after SFT log π(y⁻) baseline {rec['baseline']['sft_rejected'][-1]:.1f}, extend "
          f"{rec['extend']['sft_rejected'][-1]:.1f} · during DPO y* {sb['star']:+.1f} vs {se['star']:+.1f}, y⁺ "
          f"{sb['chosen']:+.1f} vs {se['chosen']:+.1f} · win/tie/loss of extend " +
          ", ".join(f"ep{x['dpo_epochs']} {x['wins']}/{x['ties']}/{x['losses']}" for x in rec["win"]), flush=True)


def win_rates(cfg: DPODynamicsConfig, arms: dict, tok, world: World, seed: int) -> list[dict]:
    """After each of the :func:`win_epochs`, extend's snapshot against the baseline's on ``cfg.samples`` sampled
    answers per held-out prompt, judged by the oracle: wins (extend correct, baseline not), losses, ties."""
    win = []
    for k in win_epochs(cfg):
        ca = sampled_correct(arms["extend"]["models"][k], tok, world, world.test_items(), cfg.samples, seed)
        cb = sampled_correct(arms["baseline"]["models"][k], tok, world, world.test_items(), cfg.samples, seed)
        w = sum(x and not y for ra, rb in zip(ca, cb) for x, y in zip(ra, rb))
        lo = sum(y and not x for ra, rb in zip(ca, cb) for x, y in zip(ra, rb))
        n = sum(len(r) for r in ca)
        win.append({"dpo_epochs": k, "wins": w, "losses": lo, "ties": n - w - lo, "n": n,
                    "win_rate_of_decided": w / (w + lo) if w + lo else None,
                    "extend_correct": sum(map(sum, ca)) / n, "baseline_correct": sum(map(sum, cb)) / n})
    return win


def judge_extend(per_seed: list[dict]) -> list[dict]:
    """The paper's claims about extend, per seed: y⁻ higher after its SFT, less squeezing of y* and y⁺ during DPO,
    and more wins than losses after the last of the :func:`win_epochs`."""
    claims = []
    add_claim(claims, "extend: y⁻ higher after SFT",
              "after extend's SFT, log π(y⁻) is higher than after the baseline's (y⁻ is lifted out of its valley)",
              [{"change": r["extend"]["sft_rejected"][-1] - r["baseline"]["sft_rejected"][-1],
                "held": r["extend"]["sft_rejected"][-1] > r["baseline"]["sft_rejected"][-1]} for r in per_seed],
              dpo_change_fmt)
    add_claim(claims, "extend squeezes less (y*)", "y* rises less during DPO after extend",
              [{"change": r["extend"]["squeeze"]["star"] - r["baseline"]["squeeze"]["star"],
                "held": r["extend"]["squeeze"]["star"] < r["baseline"]["squeeze"]["star"]} for r in per_seed],
              dpo_change_fmt)
    add_claim(claims, "extend: y⁺ falls less in DPO", "y⁺ falls less (or rises more) during DPO after extend",
              [{"change": r["extend"]["squeeze"]["chosen"] - r["baseline"]["squeeze"]["chosen"],
                "held": r["extend"]["squeeze"]["chosen"] > r["baseline"]["squeeze"]["chosen"]} for r in per_seed],
              dpo_change_fmt)
    last = lambda r: r["win"][-1]  # noqa: E731
    add_claim(claims, f"extend wins (after {per_seed[0]['win'][-1]['dpo_epochs']} DPO epochs)",
              "extend's sampled answers win more often than they lose (paper: wins/(wins + losses) 0.65–0.69 by "
              "one judge, 0.52–0.60 by the other, after 2–6 DPO epochs)",
              [{"wins": last(r)["wins"], "ties": last(r)["ties"], "losses": last(r)["losses"],
                "held": last(r)["wins"] > last(r)["losses"]} for r in per_seed],
              lambda m: f"{m['wins']}-{m['ties']}-{m['losses']}")
    return claims


def extend_figure(per_seed: list[dict], path: Path, title: str) -> Path:
    """Mean over seeds, extend against the baseline: log π(y⁻) during SFT, and y*, y⁺, y⁻ during DPO."""
    from tinyld.plots import condition_lines

    series = {}
    for key, label in (("sft_rejected", "log π(y⁻) during SFT"), ("star", "y* during DPO"),
                       ("chosen", "y⁺ during DPO"), ("rejected", "y⁻ during DPO")):
        series[label] = {}
        for arm in ("baseline", "extend"):
            ys = [r[arm][key] if key.startswith("sft") else r[arm]["run"]["curves"]["train"][key] for r in per_seed]
            n = len(ys[0])
            series[label][arm] = (list(range(n)), [statistics.fmean(y[i] for y in ys) for i in range(n)])
    return condition_lines(series, path, title, xlabel="measurement (once per epoch)")


def win_epochs(cfg: DPODynamicsConfig) -> tuple[int, ...]:
    """The DPO epochs after which extend and the baseline are compared on sampled answers: 2, 4, 6 (as the paper's
    Table 1), capped at the run's length."""
    return tuple(sorted({min(k, cfg.dpo_epochs) for k in (2, 4, 6)}))
