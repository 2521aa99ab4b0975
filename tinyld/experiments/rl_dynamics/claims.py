"""rl-dynamics' claims, each judged per seed by a rule written down before the first full run (only claim 2's code
was corrected after it, where it did not do what its rule says: see there). Claims 1–4 are judged on the first loss
of ``--losses`` (GRPO by default); claim 5 compares the first two.

1. **Incorrect samples fall fastest, and their mass goes into the argmax** (in training, the incorrect samples of a
   group with a correct one get a negative advantage; the tracked ones are fixed, drawn at the start). Held when
   the mean change per token of the fixed incorrect samples' log π over the run is below that of the fixed correct
   samples, the reference solutions and their rewrites, and at the incorrect samples' positions the argmax's share
   of the probability rose while the samples' own tokens' share fell (squeezing, lessons/NOTES.md §3).
2. **Lazy likelihood displacement.** A fixed correct sample is *lazy* when its log π rose by less than 0.5 nats
   over the run (or fell). Held when at least 20% of the correct samples are lazy and, summed over the measured
   steps, the negative-advantage samples' predicted push on the lazy ones (how far their part is below 0) is larger
   relative to the positive samples' pull than on the other correct samples: the halves account for it. Where a
   ratio does not exist (no pull, or no other correct samples) the claim cannot be judged and is not held.
   (Corrected after the first full run: its code had taken |negative part| as the push, which counts a negative
   part above 0, a lift, as a push, and it had counted a missing comparison as held; the report gives both.)
3. **Entropy falls, and its first-order prediction tracks it.** Held when the mean entropy per token at the fixed
   samples' positions ends below its start, and at every checked update the predicted change (−Σ π log π Δlog π,
   Δlog π = A·J·Δθ) has the sign of the actual one with a median relative error under 0.5.
4. **pass@1 rises while pass@k at the largest k falls below the SFT model's.** Held when both hold on the
   held-out questions (the unbiased estimator, ``passk_n`` samples per question).
5. **GRPO vs Dr. GRPO: length.** GRPO's per-response token average weights each token of a long incorrect answer
   less, so its push on length is weaker (Liu et al., 2025). Held when incorrect answers' mean length (words, on
   the held-out samples) grew more, or fell less, under the first loss than under the second, relative to the SFT
   model's.
"""
from __future__ import annotations

import statistics

from tinyld.experiments.kit import add_claim, claims_table, dash

LAZY = 0.5  # nats: a correct sample that rose less than this over the run is lazy
MIN_LAZY = 0.2  # claim 2 needs at least this share of lazy correct samples


def _change(points: list[dict], family: str, key: str = "per_token") -> float | None:
    a, b = points[0][family], points[-1][family]
    if a is None:
        return None
    return statistics.fmean(y - x for x, y in zip(a[key], b[key]))


def falls_fastest(run: dict) -> dict:
    ch = {k: _change(run["points"], k) for k in ("correct", "incorrect", "reference", "rewrite")}
    m0, m1 = run["points"][0]["incorrect"], run["points"][-1]["incorrect"]
    mass = None if m0 is None else {k: m1["mass"][k] - m0["mass"][k] for k in m0["mass"]}
    fastest = ch["incorrect"] is not None and all(ch["incorrect"] < v for k, v in ch.items()
                                                   if k != "incorrect" and v is not None)
    squeezed = mass is not None and mass["argmax"] > 0 > mass["own"]
    return {"changes": ch, "mass_change": mass, "held": bool(fastest and squeezed)}


def lazy(run: dict) -> dict:
    pts = run["points"]
    if pts[0]["correct"] is None:
        return {"lazy": None, "of": 0, "ratio_lazy": None, "ratio_other": None, "held": False}
    d = [y - x for x, y in zip(pts[0]["correct"]["logp"], pts[-1]["correct"]["logp"])]
    is_lazy = [x < LAZY for x in d]
    halves = [p["halves"] for p in pts if p.get("halves")]

    def ratio(sel):
        pos = [sum(h["positive"][i] for i in range(len(d)) if sel[i]) for h in halves]
        neg = [sum(h["negative"][i] for i in range(len(d)) if sel[i]) for h in halves]
        p, n = sum(pos), sum(neg)
        return None if not any(sel) or p <= 0 else max(-n, 0.0) / p  # the push: how far the negative part is below 0
    r_lazy, r_other = ratio(is_lazy), ratio([not x for x in is_lazy])
    share = sum(is_lazy) / len(d)
    held = share >= MIN_LAZY and r_lazy is not None and r_other is not None and r_lazy > r_other
    return {"lazy": sum(is_lazy), "of": len(d), "ratio_lazy": r_lazy, "ratio_other": r_other, "held": bool(held)}


def entropy(run: dict) -> dict:
    h0, h1 = run["points"][0]["entropy"], run["points"][-1]["entropy"]
    checks = run["entropy_checks"]
    signs = all((c["predicted"] > 0) == (c["actual"] > 0) for c in checks)
    errs = [abs(c["predicted"] - c["actual"]) / max(abs(c["actual"]), 1e-12) for c in checks]
    err = statistics.median(errs) if errs else None
    return {"start": h0, "end": h1, "sign_agrees": signs, "median_rel_err": err,
            "held": bool(h1 < h0 and signs and err is not None and err < 0.5)}


def pass_k(run: dict, sft: dict) -> dict:
    p1, pk = run["pass_at_k"]["pass"][0], run["pass_at_k"]["pass"][-1]
    s1, sk = sft["pass"][0], sft["pass"][-1]
    return {"pass1": (s1, p1), "passk": (sk, pk), "k": sft["k"][-1], "held": bool(p1 > s1 and pk < sk)}


def lengths(first: dict, second: dict, sft: dict) -> dict:
    base = sft["length_incorrect"]
    a, b = first["pass_at_k"]["length_incorrect"], second["pass_at_k"]["length_incorrect"]
    held = None not in (a, b, base) and (a - base) > (b - base)
    return {"sft": base, "first": a, "second": b, "held": bool(held)}


def judge(seeds: list[dict], losses: list[str]) -> list:
    """The claims table's rows, one per claim, judged per seed (``seeds``: each seed's result)."""
    first = [s["runs"][losses[0]] for s in seeds]
    out: list = []
    add_claim(out, "incorrect samples fall fastest, mass → argmax", "lazy LD / squeezing",
              [falls_fastest(r) for r in first], lambda m: f"{dash(m['changes']['incorrect'], '+.2f')}/tok, "
              f"argmax {dash((m['mass_change'] or {}).get('argmax'), '+.3f')}",
              ("Δ incorrect/tok", lambda m: m["changes"]["incorrect"]))
    add_claim(out, "lazy likelihood displacement", "the authors' follow-up (lazy LD)", [lazy(r) for r in first],
              lambda m: f"{m['lazy']}/{m['of']} lazy, push/pull {dash(m['ratio_lazy'], '.2f')} vs "
              f"{dash(m['ratio_other'], '.2f')}", ("lazy share", lambda m: m["lazy"] / m["of"] if m["of"] else None,
                                                  ".2f"))
    add_claim(out, "entropy falls, first order tracks it", "entropy collapse", [entropy(r) for r in first],
              lambda m: f"{m['start']:.3f}→{m['end']:.3f}, err {dash(m['median_rel_err'], '.2f')}",
              ("Δ entropy", lambda m: m["end"] - m["start"], "+.3f"))
    add_claim(out, "pass@1 rises, pass@k(max) falls below SFT", "RL narrows (pass@k)",
              [pass_k(r, s["sft_pass_at_k"]) for r, s in zip(first, seeds)],
              lambda m: f"@1 {m['pass1'][0]:.2f}→{m['pass1'][1]:.2f}, @{m['k']} {m['passk'][0]:.2f}→"
              f"{m['passk'][1]:.2f}", ("Δ pass@1, Δ pass@max", lambda m: (m["pass1"][1] - m["pass1"][0],
                                                                         m["passk"][1] - m["passk"][0])))
    if len(losses) > 1:
        add_claim(out, f"incorrect longer: {losses[0]} vs {losses[1]}", "Dr. GRPO (length bias)",
                  [lengths(s["runs"][losses[0]], s["runs"][losses[1]], s["sft_pass_at_k"]) for s in seeds],
                  lambda m: f"{dash(m['sft'], '.1f')}→{dash(m['first'], '.1f')} vs {dash(m['second'], '.1f')}",
                  (f"words, {losses[0]} − {losses[1]}", lambda m: None if None in (m["first"], m["second"])
                   else m["first"] - m["second"], "+.1f"))
    return out


def table(claims: list) -> str:
    return claims_table(claims, "claims (judged per seed by the rules in tinyld/experiments/rl_dynamics/claims.py)",
                        width=46, unit="")
