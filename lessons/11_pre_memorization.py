# %% [markdown]
# # Lesson 11 — Forecasting test accuracy from training: pre-memorization accuracy
#
# *Paper: a neighbouring result, pre-memorization train accuracy (Kang et al.).*
#
# Finetune a model on worked solutions and its train accuracy climbs to 1. That says little about test accuracy:
# a model can reach it by copying the training solutions. Kang et al. (lessons/NOTES.md §7) proposed a training
# metric that tracks test accuracy much better. Count an example as *memorized* at a checkpoint when the
# teacher-forced perplexity of its reference solution falls below exp(e^τ). An example's score at checkpoint t is
# the best sampled accuracy it reached at checkpoints where it was *not* memorized, capped by its accuracy now:
#
#     PM_t(i) = min( max_{k ≤ t} acc_k(i)·[i not memorized at k],  acc_t(i) )
#
# Averaged over the training set, PM_t is the **pre-memorization train accuracy**. Across learning rates, epochs
# and data sizes it predicted test accuracy with R² ≥ 0.9 in their experiments.
#
# For this we need a task where *copying the trace* and *answering correctly* differ. `tinyld.reasoning` gives
# two-step word problems with 16 valid ways to write each solution. Every training example carries one of them,
# drawn at random. We finetune twice, with checkpoints every epoch: one run on many questions, one on few
# questions with a hot learning rate. We compute PM by hand for one example and watch it against train and test
# accuracy.
#
# Fast mode (`TINYLD_FAST=1`) is a smoke test: a 200-step base model that has learned little, short runs, 2
# samples per question and 20 test questions. Full mode uses the 1500-step base model of
# `python -m tinyld forecast`, 5 samples and all 40 test questions; its numbers are the ones worth reading.

# %%
import os
import statistics

import torch

from tinyld.data import make_batch
from tinyld.experiments.forecasting import ForecastConfig, accuracy, finetune, ols, pm_curve
from tinyld.forecast import memorization_threshold, memorized, pre_memorization_accuracy, solution_perplexity
from tinyld.losses import token_logprobs
from tinyld.pretrained import pretrained
from tinyld.reasoning import N_FORMS, Arithmetic

# ---- knobs -------------------------------------------------------------------------------------------
FAST = os.environ.get("TINYLD_FAST", "") not in ("", "0")
OUT = os.environ.get("TINYLD_OUT", "tinyld_out/lessons")
SEED = 0  # the world and its base model: change both together
PRETRAIN_STEPS = 200 if FAST else 1500
N_TEST = 20 if FAST else 40  # test questions
TAU = -2.3  # memorized ⇔ perplexity < exp(e^τ): the published GSM8k value
cfg = ForecastConfig(samples=2 if FAST else 5, temperature=0.8, measured=16 if FAST else 64)
RUNS = {  # name: (training questions, AdamW lr, epochs)
    "many questions": (32, 3e-3, 2) if FAST else (256, 3e-3, 10),
    "few questions, hot": (16, 1e-2, 6) if FAST else (32, 1e-2, 10),
}

# %% [markdown]
# ## The task: one answer, many written forms
# A question about three numbers a, b, c; the answer is a + b − c. The solution adds first or subtracts first,
# and each step and the last sentence have two phrasings. The world's grader reads only the final answer.

# %%
world = Arithmetic(seed=SEED)
p = world.pool()[0]
print(p.prompt())
for form in (0, 6, 9, 15):
    print(f"  form {form:2d}: {p.solution(form)}")
print(f"{N_FORMS} forms, all graded correct:", all(world.grade(p, p.solution(f)) for f in range(N_FORMS)))
wrong = " ".join(p.steps(0)[:2] + [f"the answer is {p.answer + 1} ."])  # right steps, wrong final answer
print("a wrong final answer:", wrong, "→", world.grade(p, wrong))
assert all(world.grade(p, p.solution(f)) for f in range(N_FORMS)) and not world.grade(p, wrong)

# %% [markdown]
# The base model is pretrained on every addition and subtraction fact up to 10 and on worked problems about
# *other* number triples. Training and test questions use triples it never saw, so partial skill is all it has.

# %%
_, tok, base = pretrained(seed=SEED, steps=PRETRAIN_STEPS, task="arithmetic")
test = world.test_problems()[:N_TEST]
print(f"base model, test accuracy of {cfg.samples} samples at T=0.8 per question: "
      f"{accuracy(cfg, base, tok, world, test, seed=1).mean().item():.2f}")

# %% [markdown]
# ## Memorized: the perplexity of the reference solution
# Perplexity is exp of the mean negative log-probability per token of the reference solution (EOS included),
# with the model reading the reference tokens (teacher forcing). We compute it by hand for one training example
# and compare with the library.

# %%
ex = world.train_examples([p])[0]
b = make_batch(tok, [ex.prompt], [ex.chosen], base.config.block_size)
with torch.no_grad():
    lp = token_logprobs(base(b.idx), b.targets)[0]  # (T,): 0 off the response
n = int(b.mask[0].sum())
by_hand = torch.exp(-lp.sum() / n).item()
lib = solution_perplexity(base, tok, [ex.prompt], [ex.chosen]).item()
print(f"{n} response tokens, perplexity by hand {by_hand:.4f}, library {lib:.4f}; "
      f"memorized below {memorization_threshold(TAU):.4f}")
assert abs(by_hand - lib) < 1e-4 * lib

# %% [markdown]
# A model that has learned the arithmetic but not which form a question was written in still pays for the
# choice of form. Each training example's form was drawn at random from 16, so such a model gives the reference
# form about 1/16: a cost of ln 16 = 2.77 nats. Spread over the 16–19 tokens of a solution (EOS included) that is
# about 0.16 nats a token, a perplexity near 1.17. So a perplexity below ~1.1 means the model has learned the
# form of *this* question's reference solution, which it can only get by copying.
#
# ## Two finetuning runs, a checkpoint every epoch
# At the end of every epoch, `finetune` samples solutions to each measured training question at T=0.8 (5 each;
# 2 in fast mode), grades them, and measures each reference solution's perplexity and the test accuracy.

# %%
results = {}
for name, (n_q, lr, epochs) in RUNS.items():
    train = world.pool()[:n_q]
    _, points = finetune(cfg, 0, base, tok, world, train, lr, epochs, measured=train[:cfg.measured], test=test)
    results[name] = points
    print(f"{name}: {n_q} questions, AdamW lr {lr:g} (cosine), {epochs} epochs")
    print("  epoch   train acc   memorized   PM train acc   test acc")
    for pt, pm in zip(points, pm_curve(points, TAU)):
        mem = memorized(torch.tensor(pt["ppl"]), TAU).double().mean().item()
        print(f"  {pt['epoch']:5d}   {statistics.fmean(pt['acc']):9.2f}   {mem:9.2f}   {pm:12.2f}   "
              f"{pt['test_acc']:8.2f}")

# %% [markdown]
# ## PM by hand, for one example
# Walk through the checkpoints of the hot run for one training question: keep the best accuracy seen while it
# was not memorized, and cap it by the accuracy now.

# %%
points = results["few questions, hot"]
i = max(range(len(points[0]["acc"])), key=lambda j: sum(pt["acc"][j] for pt in points))  # a well-learned one
best, mine = 0.0, []
for pt in points:
    is_mem = pt["ppl"][i] < memorization_threshold(TAU)
    best = max(best, 0.0 if is_mem else pt["acc"][i])
    mine.append(min(best, pt["acc"][i]))
    print(f"  epoch {pt['epoch']}: acc {pt['acc'][i]:.1f}, perplexity {pt['ppl'][i]:.3f} "
          f"({'memorized' if is_mem else 'not memorized'}) → PM {mine[-1]:.1f}")
acc = torch.tensor([pt["acc"] for pt in points], dtype=torch.float64)
mem = memorized(torch.tensor([pt["ppl"] for pt in points], dtype=torch.float64), TAU)
lib = pre_memorization_accuracy(acc, mem)[:, i].tolist()
assert max(abs(a - b) for a, b in zip(mine, lib)) < 1e-12
assert all(pm <= statistics.fmean(pt["acc"]) + 1e-12 for pt, pm in zip(points, pm_curve(points, TAU)))

# %% [markdown]
# ## Which training number tracks test accuracy?
# Pool the checkpoints of both runs and fit test accuracy on each training number with least squares. (Two runs
# are far too few for a verdict; `python -m tinyld forecast` sweeps 12 configurations over 3 seeds, and the
# lab report (`tinyld/experiments/README.md`) says what it found.)

# %%
xs_pm = [v for pts in results.values() for v in pm_curve(pts, TAU)]
xs_tr = [statistics.fmean(pt["acc"]) for pts in results.values() for pt in pts]
ys = [pt["test_acc"] for pts in results.values() for pt in pts]
fit_pm, fit_tr = ols(xs_pm, ys), ols(xs_tr, ys)
print(f"R² of test accuracy on PM train accuracy {fit_pm['r2']:.2f}, on plain train accuracy {fit_tr['r2']:.2f} "
      f"({len(ys)} checkpoints)")
try:
    from tinyld.plots import fit_panels

    os.makedirs(OUT, exist_ok=True)
    groups = [name for name, pts in results.items() for _ in pts]
    print("figure:", fit_panels({"PM train accuracy": (xs_pm, ys, fit_pm), "train accuracy": (xs_tr, ys, fit_tr)},
                                f"{OUT}/11_pm.png", "test accuracy at every checkpoint", "test accuracy", groups))
except ImportError as e:
    print(f"(no figure: {e})")

# %% [markdown]
# In full mode the hot run on few questions is where train accuracy runs ahead of test accuracy: it climbs to
# about 0.3 while test accuracy stays where the base model was (about 0.1). Once an example is memorized, its
# best score stops growing (and is still capped by its accuracy now). But at the published τ only a few of this
# model's examples ever get there: sixteen forms keep a perplexity near 1.17 even for a model that knows the
# arithmetic. So PM stays close to train
# accuracy. The lab report's sweep (12 configurations, 3 seeds) found the same; exercise 1 shows what a looser
# threshold does.
#
# ## Exercises
# 1. Change `TAU` to −1.7 (the MATH value, perplexity 1.20) and to −3.0. Which examples count as memorized now,
#    and how does R² change? (`pm_curve(points, tau)` recomputes PM for another τ without training again; the
#    forecast command prints R² for a whole range of τ.)
# 2. Add a third run to `RUNS`: `"middle": (128, 1e-3, 10)` (questions, lr, epochs). Where do its points fall:
#    on the line fitted to the other two runs, above it or below it?
# 3. Grade the samples by the *reference form* instead: count a sample correct only if it equals the reference
#    solution word for word. (`tinyld.evaluate.sampled_answers(model, tok, prompts, 5, seed, 0.8, 26)` gives the
#    samples; `world.train_examples(problems)` the references.) How does that "trace accuracy" compare with PM?
#
# Check your answers with `python lessons/exercises/11_pre_memorization.py`: it asks for the quantities behind
# these questions (PM train accuracy at any τ, each new point's distance from the fitted line, the trace accuracy),
# checks each on small made-up tables against an independent computation, and prints a hint on a miss. Worked
# solutions: `lessons/solutions/11_pre_memorization.py`.

# %%
print("lesson 11 OK")
