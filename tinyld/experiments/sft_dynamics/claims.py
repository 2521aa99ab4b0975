"""The paper's SFT claims (paper §4, lessons/NOTES.md §4), judged per seed by rules fixed before looking; each claim
formats its own measurement for the claims table."""
from __future__ import annotations

from tinyld.experiments.kit import add_claim, change_fmt
from tinyld.probes import FAMILIES

SIMILAR = ("rejected", "gpts_chosen", "gpts_rejected", "init", "test_chosen")  # "rise first, then fall"
NON_HUMAN = ("urnd_chosen", "rnd", "random_tokens")  # "fall"


def bell_shape(ys: list[float]) -> dict:
    k = max(range(len(ys)), key=lambda i: ys[i])
    return {"peak_index": k, "rise": ys[k] - ys[0], "drop": ys[k] - ys[-1],
            "held": 0 < k < len(ys) - 1 and ys[k] > ys[0] and ys[k] > ys[-1]}


def judge(runs: list[dict]) -> list[dict]:
    """The paper's SFT claims (paper §4, lessons/NOTES.md §4), measured per seed on the training prompts' mean
    curves (D_prob). Fixed rules, written before looking: *rises* = ends above its start; *falls* = ends below;
    *rise then fall* = its highest point is strictly inside the run and above both ends."""
    out = []

    def claim(key, paper, measure, fmt=change_fmt):
        add_claim(out, key, paper, [measure(r) for r in runs], fmt)

    def change(fam):
        def m(r):
            ys = r["curves"]["train"][fam]
            return {"change": ys[-1] - ys[0], "held": ys[-1] > ys[0]}
        return m

    def fall(fam):
        def m(r):
            ys = r["curves"]["train"][fam]
            return {"change": ys[-1] - ys[0], "held": ys[-1] < ys[0]}
        return m

    def bell(fam):
        def m(r):
            b = bell_shape(r["curves"]["train"][fam])
            b["peak_epoch"] = r["measured_steps"][b.pop("peak_index")] / r["steps_per_epoch"]
            return b
        return m

    fams = {f for f in runs[0]["curves"]["train"] if all(len(r["curves"]["train"].get(f, [])) > 1 for r in runs)}
    if "chosen" in fams:
        claim("chosen rises", "y_u⁺ rises steadily", change("chosen"))
    for f in SIMILAR:  # a rise and a fall need at least three measurements
        if f in fams and all(len(r["curves"]["train"][f]) >= 3 for r in runs):
            claim(f"{f} rises then falls", f"{FAMILIES[f]} (similar to y_u⁺) first rises, then falls", bell(f),
                  bell_fmt)
    if "other_chosen" in fams:
        claim("other_chosen rises", "y_{j≠u}⁺ keeps rising", change("other_chosen"))
    if {"other_chosen", "test_chosen"} <= fams:
        def above(r):
            o, t = r["curves"]["train"]["other_chosen"], r["curves"]["train"]["test_chosen"]
            return {"other_change": o[-1] - o[0], "test_change": t[-1] - t[0], "held": o[-1] - o[0] > t[-1] - t[0]}
        claim("other_chosen ends above test_chosen", "y_{j≠u}⁺ ends above y_test⁺ (change since the start: the "
              "two families differ in length)", above,
              lambda m: f"{m['other_change']:+.1f} vs {m['test_change']:+.1f}")
    for f in NON_HUMAN:
        if f in fams:
            claim(f"{f} falls", f"non-human {FAMILIES[f]} falls", fall(f))
    if "star" in fams:
        claim("star rises", "y* (teacher-forced argmax) rises", change("star"))
    return out


def bell_fmt(m: dict) -> str:
    return f"peak {m['rise']:+.1f} @ep{m['peak_epoch']:g}, drop {m['drop']:.1f}"
