# %% [markdown]
# # Lesson 10 — The extend fix, and its honest effect size
#
# *Paper: the extend method (§4) and its table of win rates.*
#
# This lesson reproduces the paper's fix for the squeezing effect, the **extend** method, and its table of win
# rates of extend against the standard pipeline. Lesson 8 gave the paper's account of squeezing in one softmax:
# off-policy y⁻ sits in a valley of the model's distribution, the negative gradient on a valley token does not
# fade, and the mass it removes goes to the peak. Lesson 9 measured it in the world model. Extend lifts y⁻ out of
# the valley before DPO starts: SFT on (x, y⁺) *and* (x, y⁻), each prompt twice, then DPO from that model, with it
# as the reference. The baseline spends the same number of SFT steps on y⁺ alone.
#
# The paper's table (Qwen1.5-1.8B on Anthropic-HH, 500 test prompts, one sampled answer each, judged by another
# LLM) gives the win rate of extend over the baseline after 0, 2, 4 and 6 DPO epochs, for two judges:
# 0.47, 0.65, 0.69, 0.67 with ChatGPT as the judge, and 0.47, 0.52, 0.60, 0.54 with Claude 3 Haiku. Its win rate
# is wins / (wins + losses): ties are left out. The cells below print that rate beside the whole count.
#
# Here the judge is the world's oracle, which knows every fact: after k DPO epochs both models answer each
# held-out prompt a few times (sampled at temperature 1), and a **win** is an answer of extend that is correct where
# the baseline's answer with the same index is not; a **loss** the reverse; everything else is a **tie**. We also
# measure the mechanism: log π(y⁻) after SFT (is it still in a valley?) and the squeezing during DPO (how much y*
# rises, how much y⁺ falls).
#
# Fast mode (`TINYLD_FAST=1`) uses two seeds with 400-step base models, 2 SFT epochs and 4 DPO epochs; full mode
# three seeds with 3000-step base models, 4 SFT and 8 DPO epochs, as `python -m tinyld dpo-dynamics --experiment
# extend` does. The figure needs matplotlib, which `pip install ".[lessons]"` (or `".[plots]"`) provides; without it the
# lesson still runs and says that the figure is skipped.

# %%
import os
import statistics
from pathlib import Path

import torch
import torch.nn.functional as F

from tinyld.data import Example, make_batch
from tinyld.evaluate import response_logprobs
from tinyld.experiments.dpo_dynamics import (DPODynamicsConfig, base, claims_table, run_extend, sampled_correct, sft,
                                             sft_steps, win_epochs, win_rates)

# ---- knobs -------------------------------------------------------------------------------------------
FAST = os.environ.get("TINYLD_FAST", "") not in ("", "0")
OUT = Path(os.environ.get("TINYLD_OUT", "tinyld_out/lessons"))
SEEDS = [0, 1] if FAST else [0, 1, 2]  # fast mode: two seeds, to keep the test suite short
MODE = "hard"
PAPER = {0: (0.47, 0.47), 2: (0.65, 0.52), 4: (0.69, 0.60), 6: (0.67, 0.54)}  # DPO epochs: (ChatGPT, Claude 3 Haiku)
cfg = DPODynamicsConfig(seeds=SEEDS, modes=[MODE], fast=FAST)
print(f"{cfg.optimizer}, lr {cfg.lr:g}, {cfg.loss} β {cfg.beta:g}; {cfg.sft_epochs} SFT epochs (baseline: y⁺; extend: "
      f"y⁺ and y⁻, the same number of steps) + {cfg.dpo_epochs} DPO epochs; {cfg.samples} samples per held-out "
      f"prompt; {len(cfg.seeds)} seeds; compared after {', '.join(map(str, win_epochs(cfg)))} DPO epochs")

# %% [markdown]
# ## The two SFT stages by hand, for one seed
# Before the library runs everything, build the two SFT models of seed 0 ourselves: the baseline's examples are
# (x, y⁺) for every training prompt; extend's are (x, y⁺) and (x, y⁻), each prompt twice, and it takes the same
# number of steps. Then log π(y⁻|x) of one training prompt by hand, under the base model and under each SFT model:
# the log-softmax at each position of y⁻, gathered at y⁻'s token and summed. Is y⁻ still deep in its valley?
#
# Then the win/tie/loss count by hand for these two models, after SFT and before any DPO (the paper's column at 0
# epochs): the oracle judges `cfg.samples` sampled answers per held-out prompt of each model, and answer i of extend
# is compared with answer i of the baseline. The count has to agree with the library's `win_rates`, and since a win
# adds one correct answer to extend and a loss one to the baseline, wins − losses is exactly the difference of their
# numbers of correct answers.

# %%
base0, tok, world = base(cfg, 0, MODE)
items = world.train_items()
steps = sft_steps(cfg, len(items))
arms = {"baseline": [it.example() for it in items],
        "extend": [e for it in items for e in (it.example(), Example(it.prompt, it.rejected))]}
arms = {arm: sft(cfg, 0, base0, tok, examples, steps) for arm, examples in arms.items()}  # same seed, same steps
it = items[0]
b = make_batch(tok, [it.prompt], [it.rejected], base0.config.block_size)


def logp_rejected(m) -> float:  # log π(y⁻|x): the log-prob of y⁻'s token at each response position, summed
    with torch.no_grad():
        lp = F.log_softmax(m.eval()(b.idx).double(), -1)  # (1, T, V)
    return (lp.gather(-1, b.targets.clamp(min=0)[..., None])[..., 0] * b.mask).sum().item()


print(f"x = {it.prompt!r}, y⁻ = {it.rejected!r}")
print(f"{'model':22s} {'log π(y⁻|x) by hand':>20s} {'response_logprobs':>18s}")
for name, m in (("base (before SFT)", base0), ("baseline SFT (y⁺)", arms["baseline"]),
                ("extend SFT (y⁺ and y⁻)", arms["extend"])):
    lib = response_logprobs(m, tok, [it.prompt], [it.rejected])[0].item()
    print(f"{name:22s} {logp_rejected(m):20.3f} {lib:18.3f}")
    assert abs(logp_rejected(m) - lib) < 1e-3

ca, cb = (sampled_correct(arms[a], tok, world, world.test_items(), cfg.samples, 0) for a in ("extend", "baseline"))
wins = sum(x and not y for ra, rb in zip(ca, cb) for x, y in zip(ra, rb))  # extend correct, baseline not
losses = sum(y and not x for ra, rb in zip(ca, cb) for x, y in zip(ra, rb))
n = sum(map(len, ca))
rate = f"{wins / (wins + losses):.2f}" if wins + losses else "—"
print(f"after SFT, 0 DPO epochs, by hand: extend wins {wins}, ties {n - wins - losses}, loses {losses} of {n}; "
      f"wins/(wins + losses) = {rate} (the paper's, at 0 epochs: {PAPER[0][0]:.2f} and {PAPER[0][1]:.2f})")
lib = win_rates(cfg, {a: {"models": dict.fromkeys(win_epochs(cfg), m)} for a, m in arms.items()}, tok, world, 0)[0]
assert (lib["wins"], lib["losses"], lib["n"]) == (wins, losses, n)  # the library's judge counts the same
assert wins - losses == sum(map(sum, ca)) - sum(map(sum, cb))  # the win count is the difference in correct answers

# %% [markdown]
# ## Both pipelines, every seed
# `run_extend` does, for each seed: the two SFT stages from the same base model (tracking log π(y⁻) as it goes),
# a DPO run from each with the tracker, and the oracle's verdicts on sampled answers after 2, 4 (and 6) DPO epochs
# (capped at the run's length: `win_epochs`).

# %%
OUT.mkdir(parents=True, exist_ok=True)
res = run_extend(cfg, MODE, OUT)
if res.get("figure"):  # without matplotlib, run_extend leaves the figure out and says so in one line
    print("figure:", res["figure"])
print(claims_table(res["claims"], f"extend vs baseline, {MODE} world"))

# %% [markdown]
# ## The effect size
# A win rate alone hides how often the two pipelines agree. The table has the whole count, the paper's rate
# wins/(wins + losses) (ties left out), the paper's rate after as many DPO epochs with each of its two judges, and
# the fraction of correct answers of each model: the difference of those two fractions is the effect, in answers,
# and it equals (wins − losses)/n. The paper's model, data and judges differ from ours: compare which side of 0.5
# the rates fall on, not their digits, and read the rate beside n and the ties.

# %%
heads = ["seed", "DPO epochs", "wins", "ties", "losses", "    n", "wins/(w+l)", "paper: ChatGPT", "Claude",
         "correct: extend", "baseline", "difference"]
print("  ".join(heads))
for r in res["per_seed"]:
    for x in r["win"]:
        decided = x["wins"] + x["losses"]
        rate = x["wins"] / decided if decided else None
        assert rate == x["win_rate_of_decided"]
        diff = x["extend_correct"] - x["baseline_correct"]
        assert abs(diff - (x["wins"] - x["losses"]) / x["n"]) < 1e-9
        paper = [f"{v:.2f}" for v in PAPER[x["dpo_epochs"]]] if x["dpo_epochs"] in PAPER else ["—", "—"]
        row = [r["seed"], x["dpo_epochs"], x["wins"], x["ties"], x["losses"], x["n"],
               "—" if rate is None else f"{rate:.2f}", *paper, f"{x['extend_correct']:.3f}",
               f"{x['baseline_correct']:.3f}", f"{diff:+.3f}"]
        print("  ".join(str(v).rjust(len(h)) for v, h in zip(row, heads)))
last = [r["win"][-1] for r in res["per_seed"]]
diff = [x["extend_correct"] - x["baseline_correct"] for x in last]
print(f"after {last[0]['dpo_epochs']} DPO epochs, mean over {len(last)} seeds: correct(extend) − correct(baseline) = "
      f"{statistics.fmean(diff):+.3f}; extend won more than it lost in {sum(x['wins'] > x['losses'] for x in last)} "
      f"of {len(last)} seeds")

# %% [markdown]
# ## The mechanism, seed by seed
# Extend's SFT trains on y⁻, so log π(y⁻) ends higher than after the baseline's SFT: y⁻ starts DPO less deep in its
# valley. (SFT on y⁺ alone already lifts y⁻ a lot, since the two answers share their format; compare both with the
# base model's column.) Lesson 8's statement 5 then predicts less squeezing: fewer tokens lose, and y* should rise
# less. Whether that shows up, and whether it turns into better answers, is what the numbers say. The log-probs are
# means over the training prompts, in nats; seed 0's SFT columns must equal the two models built by hand above.

# %%
heads = ["seed", "log π(y⁻) base", "after SFT: baseline", "extend", "Δy* in DPO: baseline", "extend",
         "Δy⁺ in DPO: baseline", "extend"]
print("  ".join(heads))
for r in res["per_seed"]:
    bl, ex = r["baseline"], r["extend"]
    row = [f"{r['seed']}", f"{bl['sft_rejected'][0]:.1f}", f"{bl['sft_rejected'][-1]:.1f}",
           f"{ex['sft_rejected'][-1]:.1f}", f"{bl['squeeze']['star']:+.2f}", f"{ex['squeeze']['star']:+.2f}",
           f"{bl['squeeze']['chosen']:+.2f}", f"{ex['squeeze']['chosen']:+.2f}"]
    print("  ".join(v.rjust(len(h)) for v, h in zip(row, heads)))
rec0 = next(r for r in res["per_seed"] if r["seed"] == 0)
for arm, m in arms.items():  # the run's SFT stages are the ones built by hand: same examples, seed and steps
    mean = response_logprobs(m, tok, [i.prompt for i in items], [i.rejected for i in items]).mean().item()
    assert abs(mean - rec0[arm]["sft_rejected"][-1]) < 1e-3, (arm, mean, rec0[arm]["sft_rejected"][-1])
claims = {c["claim"]: c for c in res["claims"]}
held = claims["extend: y⁻ higher after SFT"]["held"]
print(f"y⁻ higher after extend's SFT in {held}/{len(SEEDS)} seeds")

# %% [markdown]
# ## What held, and what to look for
# The claims table above gives the verdicts of this run. Look at two kinds of claims separately. The mechanism:
# does training on y⁻ raise log π(y⁻), and does y⁺ fall less (or rise more) during DPO after extend? (That is a
# statement about its change: extend's y⁺ starts DPO lower, and can end lower too.) Does y* rise less, and by how
# much compared with the seeds' spread? The outcome: does the win count favour extend, in how many seeds, and is
# the difference in correct answers larger than its spread over seeds? The lab report's table records a full-mode run
# in both worlds to compare with. Asserted here are only the two links of the mechanism that held in every seed
# we ran, in fast and in full mode, in the hard world: y⁻ is higher after extend's SFT, and y⁺ falls less in DPO.

# %%
assert held == len(SEEDS)
assert claims["extend: y⁺ falls less in DPO"]["held"] == len(SEEDS)

# %% [markdown]
# ## Exercises
# 1. Set `cfg.samples = 16` and rerun: do the win counts keep their sign, or were they noise? Before you rerun, ask
#    how likely each count is if the two pipelines were equally good: the sign test's p-value (`sign_test`).
# 2. Try `MODE = "easy"`. There y⁻ is a short wrong fact, and the base model already knows most facts. Does
#    extend help there? (The asserts in the cell just above these exercises are for the hard world and may fail
#    there.) Predict first in which world extend's SFT lifts y⁻ more, per token, above the baseline's
#    (`rejected_lift`).
# 3. Pass `optimizer="sgd"` (and `lr=1e-2`) in a `DPODynamicsConfig`. Does the optimizer change the verdicts?
#    Predict first how far the first DPO step moves the weights under each optimizer, and how that distance changes
#    with β (`first_step_size`).
#
# Check your answers with `python lessons/exercises/10_extend.py`: fill in its three functions; exercises 2 and 3
# run on seed 0's SFT models (with `TINYLD_FAST=1`, the fast-mode ones), each answer is compared with an independent
# computation (a binomial distribution, the library's measurements, its Trainer), and a miss prints a hint. Worked
# solutions: `lessons/solutions/10_extend.py`.

# %%
print("lesson 10 OK")
