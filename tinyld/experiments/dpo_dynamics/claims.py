"""The paper's off-policy DPO claims (paper §3–§4), judged per seed by rules fixed before looking, each formatting
its own measurement; and how much a DPO run squeezed."""
from __future__ import annotations

from tinyld.experiments.kit import add_claim
from tinyld.experiments.kit import claims_table as kit_claims_table

FALLERS = ("chosen", "rejected", "gpts_chosen", "gpts_rejected", "gptf_chosen", "gptf_rejected", "init",
           "other_chosen", "test_chosen", "hum", "urnd_chosen", "rnd", "random_tokens")  # "almost everything falls"


def dpo_change_fmt(m: dict) -> str:
    """A change in nats, with two decimals when it is under one nat."""
    return f"{m['change']:+.2f}" if abs(m["change"]) < 1 else f"{m['change']:+.1f}"


def claims_table(claims: list[dict], title: str) -> str:
    """The claims table of dpo-dynamics (:func:`tinyld.experiments.kit.claims_table`, narrower)."""
    return kit_claims_table(claims, title, width=34, unit="")


def judge_dpo(runs: list[dict]) -> list[dict]:
    """The paper's off-policy DPO claims, per seed, on the training prompts' mean curves. *Falls* = ends below its
    start; *falls fastest* = the largest drop of every tracked family; *bump* = its highest point comes after the
    start and before the end; *most families fall* = more than half of the families in FALLERS end below their
    start; *squeezed into the argmax* = at the positions of y⁻ and of y⁺, the argmax token's mass ends above its
    start."""
    out = []
    c = lambda r, f: r["curves"]["train"][f]  # noqa: E731
    fams = [f for f in FALLERS if f in runs[0]["curves"]["train"]]
    add_claim(out, "rejected falls", "y_u⁻ falls", [{"change": c(r, "rejected")[-1] - c(r, "rejected")[0],
                                                     "held": c(r, "rejected")[-1] < c(r, "rejected")[0]} for r in runs],
              dpo_change_fmt)

    def fastest(r):
        drops = {f: c(r, f)[0] - c(r, f)[-1] for f in fams}
        top = max(drops, key=drops.get)
        return {"change": -drops["rejected"], "largest": top, "held": top == "rejected"}
    add_claim(out, "rejected falls fastest", "y_u⁻ falls fastest of all families", [fastest(r) for r in runs],
              lambda m: f"{m['change']:+.1f} (largest: {m['largest']})")

    def bump(r):
        ys = c(r, "chosen")
        k = max(range(len(ys)), key=ys.__getitem__)
        return {"change": ys[-1] - ys[0], "peak": ys[k] - ys[0], "peak_epoch": r["measured_steps"][k] /
                r["steps_per_epoch"], "held": 0 < k < len(ys) - 1}
    add_claim(out, "chosen bumps, then declines", "y_u⁺ rises briefly, then declines", [bump(r) for r in runs],
              lambda m: f"peak {m['peak']:+.1f} @ep{m['peak_epoch']:g}, end {m['change']:+.1f}")
    add_claim(out, "chosen ends below its start", "y_u⁺ falls (squeezing reaches the chosen answer)",
              [{"change": c(r, "chosen")[-1] - c(r, "chosen")[0], "held": c(r, "chosen")[-1] < c(r, "chosen")[0]}
               for r in runs], dpo_change_fmt)
    add_claim(out, "most families fall", "almost every response loses probability",
              [{"falling": sum(c(r, f)[-1] < c(r, f)[0] for f in fams), "of": len(fams),
                "held": sum(c(r, f)[-1] < c(r, f)[0] for f in fams) > len(fams) / 2} for r in runs],
              lambda m: f"{m['falling']}/{m['of']}")
    if "star" in runs[0]["curves"]["train"]:
        add_claim(out, "star rises", "y* (teacher-forced argmax) rises", [
            {"change": c(r, "star")[-1] - c(r, "star")[0], "held": c(r, "star")[-1] > c(r, "star")[0]} for r in runs],
            dpo_change_fmt)
    add_claim(out, "mass squeezed into the argmax", "the mass goes to the argmax token, at y⁺ and y⁻ positions", [
        {"argmax_gain_rejected": r["mass"][-1]["rejected"]["argmax"] - r["mass"][0]["rejected"]["argmax"],
         "argmax_gain_chosen": r["mass"][-1]["chosen"]["argmax"] - r["mass"][0]["chosen"]["argmax"],
         "held": r["mass"][-1]["rejected"]["argmax"] > r["mass"][0]["rejected"]["argmax"]
         and r["mass"][-1]["chosen"]["argmax"] > r["mass"][0]["chosen"]["argmax"]} for r in runs],
        lambda m: f"y⁻ pos {m['argmax_gain_rejected']:+.3f}, y⁺ pos {m['argmax_gain_chosen']:+.3f}")
    add_claim(out, "repetition grows", "long DPO makes greedy answers repeat themselves (the repeater)", [
        {"change": r["repetition"][-1] - r["repetition"][0], "held": r["repetition"][-1] > r["repetition"][0]}
        for r in runs], dpo_change_fmt)
    return out



def squeeze_summary(r: dict) -> dict:
    """How much a DPO run squeezed (training prompts): change of y*, y⁺, y⁻, how many families fell, and the
    argmax mass gained at y⁻ and y⁺ positions."""
    c = r["curves"]["train"]
    fams = [f for f in FALLERS if f in c]
    return {"star": c["star"][-1] - c["star"][0] if "star" in c else None,
            "chosen": c["chosen"][-1] - c["chosen"][0], "rejected": c["rejected"][-1] - c["rejected"][0],
            "falling": sum(c[f][-1] < c[f][0] for f in fams), "families": len(fams),
            "argmax_gain_rejected": r["mass"][-1]["rejected"]["argmax"] - r["mass"][0]["rejected"]["argmax"],
            "argmax_gain_chosen": r["mass"][-1]["chosen"]["argmax"] - r["mass"][0]["chosen"]["argmax"]}

