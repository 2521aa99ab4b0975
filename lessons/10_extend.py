# %% [markdown]
# # Lesson 10 — The extend fix, and its honest effect size
#
# Lesson 8 gave the paper's account of squeezing in one softmax: off-policy y⁻ sits in a valley of the model's
# distribution, the negative gradient on a valley token does not fade, and the mass it removes goes to the peak.
# Lesson 9 measured it in the world model. The paper's fix,
# **extend**, lifts y⁻ out of the valley before DPO starts: SFT on (x, y⁺) *and* (x, y⁻), each prompt twice, then
# DPO from that model, with it as the reference. The baseline spends the same number of SFT steps on y⁺ alone.
# The paper reports a win rate of extend over the baseline of 0.65–0.69 after 2–6 DPO epochs (a 1.8B model,
# judged by another LLM).
#
# Here the judge is the world's oracle, which knows every fact: after k DPO epochs both models answer each
# held-out prompt a few times (sampled at temperature 1), and a **win** is an answer of extend that is correct where
# the baseline's answer with the same index is not; a **loss** the reverse; everything else is a **tie**. We also
# measure the mechanism: log π(y⁻) after SFT (is it still in a valley?) and the squeezing during DPO (how much y*
# rises, how much y⁺ falls).
#
# Fast mode (`TINYLD_FAST=1`) uses two seeds with 400-step base models, 2 SFT epochs and 4 DPO epochs; full mode
# 3000-step base models, 4 SFT and 8 DPO epochs, as `python -m tinyld dpo-dynamics --experiment extend` does.

# %%
import os
import statistics
from pathlib import Path

from tinyld.experiments.dpo_dynamics import DPODynamicsConfig, claims_table, run_extend

# ---- knobs -------------------------------------------------------------------------------------------
FAST = os.environ.get("TINYLD_FAST", "") not in ("", "0")
OUT = Path(os.environ.get("TINYLD_OUT", "tinyld_out/lessons"))
SEEDS = [0, 1] if FAST else [0, 1, 2]  # fast mode: two seeds, to keep the test suite short
MODE = "hard"
cfg = DPODynamicsConfig(seeds=SEEDS, modes=[MODE], fast=FAST)
print(f"{cfg.optimizer}, lr {cfg.lr:g}, {cfg.loss} β {cfg.beta:g}; {cfg.sft_epochs} SFT epochs (baseline: y⁺; extend: "
      f"y⁺ and y⁻, the same number of steps) + {cfg.dpo_epochs} DPO epochs; {cfg.samples} samples per held-out prompt")

# %% [markdown]
# ## Both pipelines, three seeds (two in fast mode)
# `run_extend` does, for each seed: the two SFT stages from the same base model (tracking log π(y⁻) as it goes),
# a DPO run from each with the tracker, and the oracle's verdicts on sampled answers after 2, 4 (and 6) DPO epochs.

# %%
OUT.mkdir(parents=True, exist_ok=True)
res = run_extend(cfg, MODE, OUT)
print("figure:", res.get("figure"))
print(claims_table(res["claims"], f"extend vs baseline, {MODE} world"))

# %% [markdown]
# ## The effect size
# A win rate alone hides how often the two pipelines agree. Print the whole count, and the fraction of correct
# answers of each model: the difference between those two fractions is the effect, in answers.

# %%
for r in res["per_seed"]:
    for x in r["win"]:
        print(f"seed {r['seed']}, {x['dpo_epochs']} DPO epochs: extend wins {x['wins']}, loses {x['losses']}, ties "
              f"{x['ties']} of {x['n']};  correct: extend {x['extend_correct']:.2f}, "
              f"baseline {x['baseline_correct']:.2f}")
last = [r["win"][-1] for r in res["per_seed"]]
diff = [x["extend_correct"] - x["baseline_correct"] for x in last]
print(f"after {last[0]['dpo_epochs']} DPO epochs: correct(extend) − correct(baseline) = {statistics.fmean(diff):+.3f} "
      f"(seeds: {', '.join(f'{d:+.3f}' for d in diff)})")

# %% [markdown]
# ## The mechanism, seed by seed
# Extend's SFT trains on y⁻, so log π(y⁻) ends higher than after the baseline's SFT: y⁻ starts DPO less deep in its
# valley. (SFT on y⁺ alone already lifts y⁻ a lot, since the two answers share their format; compare the two
# numbers below with log π(y⁻) of the base model.) Lesson 8's statement 5 then predicts less squeezing: fewer
# tokens lose, and y* should rise less. Whether that shows up, and whether it turns into better answers, is what
# the numbers say.

# %%
for r in res["per_seed"]:
    b, e = r["baseline"], r["extend"]
    print(f"seed {r['seed']}: log π(y⁻) after SFT {b['sft_rejected'][-1]:.1f} (baseline) vs "
          f"{e['sft_rejected'][-1]:.1f} (extend); during DPO y* {b['squeeze']['star']:+.1f} vs "
          f"{e['squeeze']['star']:+.1f}, y⁺ "
          f"{b['squeeze']['chosen']:+.1f} vs {e['squeeze']['chosen']:+.1f} nats")
claims = {c["claim"]: c for c in res["claims"]}
held = claims["extend: y⁻ higher after SFT"]["held"]
first = res["per_seed"][0]["baseline"]["sft_rejected"][0]  # measured before SFT: the base model
print(f"y⁻ higher after extend's SFT in {held}/{len(SEEDS)} seeds; the base model's log π(y⁻), seed 0: {first:.1f}")

# %% [markdown]
# ## What held in every run we made
# Two links held in every seed, in fast and in full mode, in the hard world: training on y⁻ raises log π(y⁻), and
# y⁺ falls less (or rises more) during DPO after extend. (That is a statement about its change: extend's y⁺ starts
# DPO lower, and can end lower too.) Less squeezing in y* held in every seed of full mode but not of fast mode, and
# the differences are a fraction of a nat. The win count did not favour extend: in full mode (the README's table)
# extend lost more pairs than it won after 2, 4 and 6 DPO epochs in every seed; in fast mode one seed of three
# favoured extend, and the fractions of correct answers differed by less than 0.1 either way. The README's table
# has the numbers for both worlds.

# %%
assert held == len(SEEDS)
assert claims["extend: y⁺ falls less in DPO"]["held"] == len(SEEDS)

# %% [markdown]
# ## Exercises
# 1. Set `cfg.samples = 16` and rerun: do the win counts keep their sign, or were they noise?
# 2. Try `MODE = "easy"`. There y⁻ is a short wrong fact, and the base model already knows most facts. Does
#    extend help there? (The asserts below are for the hard world and may fail there.)
# 3. Pass `optimizer="sgd"` (and `lr=1e-2`) in a `DPODynamicsConfig`. Does the optimizer change the verdicts?

# %%
print("lesson 10 OK")
