# %% [markdown]
# # Lesson 15 — Why did my chosen log-prob fall?
#
# *Paper: the DPO residual (lessons/NOTES.md §2), the squeezing effect (§3, Fig. 4), CHES and the one-step
# forecast (§7); the decomposition of §1 behind all of them.*
#
# The question comes up again and again in the issue trackers of TRL, LlamaFactory and the DPO authors' own code:
# *"During DPO, `rewards/chosen` and `logps/chosen` go **down**. The margin grows, but the chosen answer becomes
# less likely. Is my run broken?"* The usual answer is "DPO only optimises the margin; add an NLL term". That is
# true and says nothing about **where** the probability of y⁺ went, or which of your pairs it will happen to.
#
# This lesson answers it for a handful of pairs on a real instruct model (SmolLM2-135M-Instruct, lesson 14):
# first with `explain`, the command built for the question, then by hand for one pair, number for number. You
# will see that one DPO step changes log π(y⁺) by (β/2)(‖g⁺‖² − ⟨g⁺, g⁻⟩) per unit learning rate (plain SGD, from
# the reference), where g± = ∇_θ log π(y±|x): the pull of y⁺'s own gradient against the push on y⁻, felt by y⁺
# through how alike the two gradients are. When ⟨g⁺, g⁻⟩ > ‖g⁺‖², y⁺ falls.
#
# Fast mode (`TINYLD_FAST=1`) explains three pairs over 3 DPO steps; full mode six pairs over 10 steps. Every number
# printed is this run's.

# %%
import json
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from tinyld.data import make_batch
from tinyld.experiments.explain import ExplainConfig, run
from tinyld.explain import fixes
from tinyld.gguf import load
from tinyld.runtime import fast_mode

t0 = time.time()
FAST = fast_mode()
OUT = Path(os.environ.get("TINYLD_OUT", "tinyld_out/lessons"))
BETA = 0.1
PAIRS = [  # prompt, chosen y⁺, rejected y⁻: your own pairs would go here (a JSONL file, one object per line)
    ("What is the capital of France?", "The capital of France is Paris.", "The capital of France is Lyon."),
    ("How many legs does a spider have?", "A spider has eight legs.", "A spider has six legs."),
    ("What colour is the sky on a clear day?", "It is blue.", "The sky is green on a clear day."),
    ("Name a planet in our solar system.", "Mars is a planet in our solar system.", "The Moon is a planet."),
    ("What do bees make?", "Bees make honey.", "Bees make milk."),
    ("Translate 'gracias' to English.", "Thank you.", "Goodbye."),
][:3 if FAST else 6]

# %% [markdown]
# ## 1. `explain` on your pairs
# A pair file is JSON lines with `prompt`, `chosen` and `rejected`. With a chat model the prompt becomes the user
# turn of its chat template. From a shell the same run is
#
# ```bash
# python -m tinyld explain --pairs my_pairs.jsonl --model smollm2
# ```
#
# which writes `explain.json` and `report.html` (open it in a browser). Here we call the same command from Python.
# It measures every pair **before** training (its log-probs, CHES, and the one-step forecast of a DPO step on that
# pair alone, split into the pull of y⁺'s half and the push of y⁻'s half), then runs a short DPO on all pairs and
# watches each one.

# %%
OUT.mkdir(parents=True, exist_ok=True)
pairs_file = OUT / "lesson15_pairs.jsonl"
pairs_file.write_text("".join(json.dumps({"prompt": p, "chosen": c, "rejected": r}) + "\n" for p, c, r in PAIRS))
cfg = ExplainConfig(pairs=str(pairs_file), model="smollm2", steps=3 if FAST else 10, batch_size=len(PAIRS),
                    beta=BETA, out=str(OUT / "explain15"))
res = run(cfg, overwrite=True)
fc, watched = res["forecasts"], res["run"]

# %% [markdown]
# Read the table row by row: log π(y⁺) before → after the run, the change of log π(y⁻), CHES, and the forecast of
# Δ log π(y⁺) for one plain-SGD step per unit learning rate, as pull + push. The run itself takes AdamW steps (not
# −η∇L) on batches of pairs, several of them, so even the forecast's sign carries over to the run only partly (the
# lab report measures how far). The last rows are what the same forecast predicts for each fix people suggest; a
# forecast of one step, not advice.
#
# ## 2. The same numbers by hand, for one pair
# Take the pair whose y⁺ the forecast gives the lowest change. First its log-probabilities: the
# prompt is the chat template around the question; the response's tokens and the end-of-turn token are scored.

# %%
model, tok = load("smollm2")
k = min(range(len(PAIRS)), key=lambda i: fc[i]["step_chosen"]["total"])
question, y_plus, y_minus = PAIRS[k]
prompt = tok.chat([{"role": "user", "content": question}])
b = make_batch(tok, [prompt] * 2, [y_plus, y_minus])  # row 0: y⁺, row 1: y⁻
params = [p for p in model.parameters() if p.requires_grad]


def logp_and_grad(row: int) -> tuple[float, torch.Tensor]:
    """log π(y|x) of one row of b, and its gradient g = ∇_θ log π(y|x) flattened into one vector (P,)."""
    logp = F.log_softmax(model(b.idx[row:row + 1]), -1)  # (1, T, V)
    lp = logp.gather(-1, b.targets[row:row + 1].clamp(min=0)[..., None])[..., 0][b.mask[row:row + 1]].sum()
    return lp.item(), torch.cat([g.flatten() for g in torch.autograd.grad(lp, params)])


lp_plus, g_plus = logp_and_grad(0)
lp_minus, g_minus = logp_and_grad(1)
print(f"pair {k}: {question!r}\n  y⁺ {y_plus!r}: log π = {lp_plus:.3f} (explain: {fc[k]['logp_chosen']:.3f})")
print(f"  y⁻ {y_minus!r}: log π = {lp_minus:.3f} (explain: {fc[k]['logp_rejected']:.3f})")
assert abs(lp_plus - fc[k]["logp_chosen"]) < 1e-3 and abs(lp_minus - fc[k]["logp_rejected"]) < 1e-3

# %% [markdown]
# **The DPO step, by hand.** With the model as its own reference the margin is 0, so both halves carry the weight
# c = β·σ(−β·0) = β/2 (NOTES §2). The loss gradient is ∇L = −c(g⁺ − g⁻), so one SGD step of size η moves the
# weights by Δθ = η·c(g⁺ − g⁻), and to first order log π(y⁺) moves by ⟨g⁺, Δθ⟩:
#
#     Δ log π(y⁺) / η = c‖g⁺‖²  −  c⟨g⁺, g⁻⟩
#                       (pull)      (push)
#
# The by-hand pull is never negative (`explain`'s can be: it leaves out the shared prefix, below). The push is as
# large as y⁺'s and y⁻'s gradients are alike: for a pair that differs in one word, ⟨g⁺, g⁻⟩ can exceed ‖g⁺‖², and
# then y⁺ falls.

# %%
c = BETA * torch.sigmoid(torch.tensor(0.0)).item()  # β σ(−β m) at m = 0: β/2
pull, push = c * (g_plus @ g_plus).item(), -c * (g_plus @ g_minus).item()
lib = fc[k]["step_chosen"]
print(f"by hand: Δ log π(y⁺)/η = pull {pull:+.4g} + push {push:+.4g} = {pull + push:+.4g}")
print(f"explain: Δ log π(y⁺)/η = pull {lib['pull']:+.4g} + push {lib['push']:+.4g} + shared {lib['shared']:+.4g} "
      f"= {lib['total']:+.4g}")
assert abs((pull + push) - lib["total"]) <= 2e-2 * abs(pull) + 1e-3  # float32 sums over 135M parameters
assert abs((pull - lib["pull"]) + (push - lib["push"])) <= 2e-2 * abs(pull) + 1e-3

# %% [markdown]
# The totals agree; the two splits differ whenever y⁺ and y⁻ begin with the same words ("The capital of France
# is"), and they should. On that shared prefix the two halves see the same context and the same token with
# opposite signs, so they cancel exactly (NOTES §2). `explain` takes that prefix out of both the pull and the push
# and reports it as `shared` (0 for DPO); the by-hand split leaves it in both. The difference is the same amount,
# once with each sign: that is what the second assert checks.
#
# **CHES** (Razin et al., NOTES §7) is the cheap stand-in: the same inner products with the summed last hidden
# states H± in place of the gradients, ⟨H⁺, H⁻⟩ − ‖H⁺‖². High CHES forecasts a falling y⁺.

# %%
with torch.no_grad():
    h = model.hidden(b.idx)  # (2, T, C): the rows that predict each response's tokens are where mask is True
H_plus, H_minus = h[0][b.mask[0]].sum(0), h[1][b.mask[1]].sum(0)
ches = (H_plus @ H_minus - H_plus @ H_plus).item()
print(f"CHES by hand {ches:.5g}, explain {fc[k]['ches']:.5g}")
assert abs(ches - fc[k]["ches"]) <= 1e-3 * abs(fc[k]["ches"]) + 1e-2

# %% [markdown]
# ## 3. Where did the probability go?
# `explain` watched the run: at every token of y⁺ and y⁻, how its log-probability changed and which tokens gained
# the most probability there. Squeezing (NOTES §3) predicts y⁻'s tokens losing and the mass going to the tokens the
# model already found likeliest at those positions: compare the `gained` column with the mass split below it. There
# `argmax` is the peak's share when the peak is neither response's token; when the peak is y⁺'s token (as it can be
# at y⁻'s positions), it is counted as `other`.

# %%
p = watched["pairs"][k]
print(f"pair {k} over {watched['steps'][-1]} AdamW steps (lr {cfg.lr:g}): log π(y⁺) {p['chosen'][0]:.2f} → "
      f"{p['chosen'][-1]:.2f}, log π(y⁻) {p['rejected'][0]:.2f} → {p['rejected'][-1]:.2f}, "
      f"log π(y*) {p['star'][0]:.2f} → {p['star'][-1]:.2f}")
for side in ("chosen", "rejected"):
    print(f"  {'y⁺' if side == 'chosen' else 'y⁻'} token  Δ log π   gained most there")
    for t in watched["tokens"][k][side]:
        gained = ", ".join(f"{g!r} {v:+.1e}" for g, v in t["gained"][:2])
        print(f"    {t['token']!r:12} {t['dlogp']:+8.3f}   {gained}")
m0, m1 = p["mass"][0]["rejected"], p["mass"][-1]["rejected"]
print("  mass at y⁻'s positions (mean), before → after: "
      + ", ".join(f"{c_} {m0[c_]:.3f} → {m1[c_]:.3f}" for c_ in m0))
assert abs(sum(t["dlogp"] for t in watched["tokens"][k]["chosen"]) - (p["chosen"][-1] - p["chosen"][0])) < 1e-3

# %% [markdown]
# ## 4. The fixes, as forecasts
# The mechanism suggests what would change the sign: a larger pull. An NLL term on y⁺ (RPO; in TRL 1.x
# `loss_type=["sigmoid", "sft"]` with `loss_weights=[1, α]`, whose SFT term is the mean NLL per chosen token) adds
# α·(SFT on y⁺)/n⁺ to the step, and one SFT step on y⁺ moves log π(y⁺) by ‖g⁺‖² per unit η (the SFT loss on one
# sequence is −log π(y⁺|x)). So the α at which the forecast stops falling is α* = −n⁺·(pull + push)/‖g⁺‖². A
# smaller step changes nothing at first order: every change scales with η, the sign stays.

# %%
sft_pull = (g_plus @ g_plus).item()
n_plus = fc[k]["tokens_chosen"]
mine = {x["fix"]: x for x in fixes([fc[k]])}
print(f"one SFT step on y⁺: Δ log π(y⁺)/η = {sft_pull:.4g} by hand, {fc[k]['sft_chosen'][0]:.4g} from explain")
assert abs(sft_pull - fc[k]["sft_chosen"][0]) <= 2e-2 * sft_pull
if pull + push < 0:
    alpha = -n_plus * (pull + push) / sft_pull
    print(f"y⁺ is forecast to fall; the NLL weight that holds it: α* = {alpha:.3g} by hand, "
          f"{mine['nll']['alpha_needed'][0]:.3g} from explain")
    assert abs(alpha - mine["nll"]["alpha_needed"][0]) <= 5e-2 * alpha
else:
    print("y⁺ is not forecast to fall for this pair: no NLL term is needed to hold it")

# %% [markdown]
# ## 5. Is the forecast any good?
# A forecast is worth what it ranks. `explain` prints the AUC of CHES and of the one-step forecast for "y⁺ falls"
# over your pairs (1: the pairs that fell were ranked first; 0.5: chance). On three or six pairs it means little.
# The lab report (`tinyld/experiments/README.md`, "explain", "Does the forecast rank the pairs?") gives the AUCs,
# with the counts, on 22 pairs written for SmolLM2 and on 120 pairs of the synthetic world over 3 seeds, and says
# how far each held.
#
# What to take away:
# - y⁺ falling under DPO is not a bug: its log-probability moves by the pull of its own gradient minus the push on
#   y⁻ felt through ⟨g⁺, g⁻⟩, and for similar pairs the push can win (the lab report counts how often it did).
# - Where the mass goes is the squeezing effect: y⁻'s tokens lose, and the likeliest tokens at those positions gain.
# - The fixes people try change the pull (NLL, more SFT on y⁺) or where y⁻ sits (extend, on-policy y⁻); a smaller
#   step only slows what happens.
#
# ## Exercises
# 1. **The DPO weight.** Write c = β·σ(−β·m), the weight of both halves, for a pair with policy and reference
#    log-probabilities. Check: it is −∂L/∂log π(y⁺) of the DPO loss.
# 2. **The forecast from two gradients.** Given g⁺, g⁻ and c, return the forecast Δ log π(y⁺) per unit η of a
#    plain-SGD DPO step. It is checked against the change a real, tiny step along η·c·(g⁺ − g⁻) makes on a small
#    model.
# 3. **The α that holds y⁺.** Given the forecast Δ log π(y⁺) of a DPO step, the one of an SFT step on y⁺ and n⁺,
#    return the RPO weight α at which y⁺ is forecast to stay where it is. It is checked against RPO's own residual.
#
# Check your answers with `python lessons/exercises/15_why_did_chosen_fall.py`: fill in its three functions; a miss
# prints a hint. Worked solutions: `lessons/solutions/15_why_did_chosen_fall.py`.

# %%
print(f"total {time.time() - t0:.0f} s")
print("lesson 15 OK")
