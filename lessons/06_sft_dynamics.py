# %% [markdown]
# # Lesson 6 — What SFT does to every other answer
#
# Finetune a model on (x_u, y_u⁺) and y_u⁺ becomes more likely. What happens to every *other* response? This
# lesson reproduces the paper's **Fig. 3 (§4)**: log π(y|x_u) of a family of responses (lessons/NOTES.md §4),
# tracked through SFT. The paper describes it this way:
#
# - the chosen answer y_u⁺ rises;
# - responses **similar** to it (the rejected answer y_u⁻, rephrases, y_test⁺: a held-out prompt's answer, and
#   y_init: the model's own first answer) first rise, then fall;
# - y_{j≠u}⁺, the answer of *another training prompt* read under x_u, keeps rising (we also test whether it rises
#   more than y_test⁺, comparing how far each rose since the start: the two families have different lengths);
# - **non-human** text (shuffled words, random words) falls;
# - y*, the teacher-forced argmax along y⁺, rises.
#
# Here you watch Fig. 3 appear for your own tiny model, over three seeds (two in fast mode), and read the claims
# table: for each claim, what was measured per seed and whether it held. The rules are fixed and simple. *Rises* and
# *falls* compare the last measurement with the first; *rises, then falls* means the highest point lies strictly
# inside the run and above both ends (a plateau with a tiny final dip passes, so read the drop beside the verdict).
# Then each curve gets a first-order reading in terms of A, K and G (lessons/NOTES.md §1). The world has two modes.
# In **easy** mode an answer is one fact sentence that the pretrained model mostly knows already. In **hard** mode
# every answer also carries a random story sentence, so there is content no model can predict, as in the paper's
# long answers. The contrast is the first lesson.
#
# Fast mode (`TINYLD_FAST=1`) uses two seeds with 400-step base models and 8 epochs; full mode 3000-step models and 20
# epochs, as `python -m tinyld sft-dynamics` does. The asserts check only what held in both. The figures need
# matplotlib: `pip install ".[lessons]"` (or ".[plots]"); without it the lesson runs and says that it skips them.

# %%
import os

from tinyld.experiments.sft_dynamics import SFTDynamicsConfig, claims_table, figure, judge, regime, setup, sft_run

# ---- knobs -------------------------------------------------------------------------------------------
FAST = os.environ.get("TINYLD_FAST", "") not in ("", "0")
OUT = os.environ.get("TINYLD_OUT", "tinyld_out/lessons")
SEEDS = [0, 1] if FAST else [0, 1, 2]  # fast mode: two seeds, to keep the test suite short
cfg = SFTDynamicsConfig(seeds=SEEDS, epochs=20, pretrain_steps=3000, fast=FAST, attribution=False)
print(f"SFT with {cfg.optimizer}, lr {cfg.lr:g}, batch {cfg.batch_size}, {cfg.epochs} epochs, base models pretrained "
      f"for {cfg.pretrain_steps} steps, seeds {SEEDS}")

# %% [markdown]
# ## One probe, and what the tracker measures, by hand
# `setup` loads (or pretrains and caches) the base model of a seed, builds the probe set of the 40 training prompts
# and 40 held-out prompts, and freezes y_init (the model's greedy answer before SFT). Here is one hard-mode probe:

# %%
model, tok, probes, world = setup(cfg, SEEDS[0], "hard")
example = probes.probes[0]
print(f"a hard-mode probe: {example.prompt!r}")
for fam in ("chosen", "rejected", "other_chosen", "random_tokens", "init"):
    print(f"  {fam:14s} {example.responses.get(fam, '(none)')}")

# %% [markdown]
# Every point of Fig. 3 is a mean of numbers like these. For one prompt: log π(y⁺|x) = Σ_m log π(y⁺_m | x, y⁺_<m):
# logits → log_softmax → pick y⁺'s token at each response position → sum. And y*'s log-prob along the same
# positions, Σ_m log max_v π(v | x, y⁺_<m) (teacher-forced: the prefix is always y⁺). Then the same numbers from
# `Tracker`, which `sft_run` calls once per epoch for every prompt and family, and from `response_logprobs`.

# %%
import torch  # noqa: E402

from tinyld.data import make_batch  # noqa: E402
from tinyld.evaluate import response_logprobs  # noqa: E402
from tinyld.probes import ProbeSet, Tracker  # noqa: E402

b = make_batch(tok, [example.prompt], [example.responses["chosen"]])
with torch.no_grad():
    logp = torch.log_softmax(model.eval()(b.idx), -1)[0]  # (T, V) log π at every position
y = b.targets[0][b.mask[0]]  # (M,) the tokens of y⁺ and EOS
at_y = logp[b.mask[0]].gather(-1, y[:, None])[:, 0]  # (M,) log π(y⁺_m)
by_hand = {"chosen": at_y.sum().item(), "star": logp[b.mask[0]].amax(-1).sum().item()}
tracked = {r["family"]: r["logp"] for r in Tracker(tok, ProbeSet([example]), valley=False).measure(model, 0)}
library = response_logprobs(model, tok, [example.prompt], [example.responses["chosen"]])[0].item()
print(f"{'':18s}{'by hand':>10s}{'Tracker':>10s}{'response_logprobs':>19s}")
print(f"{'log π(y⁺|x)':18s}{by_hand['chosen']:10.4f}{tracked['chosen']:10.4f}{library:19.4f}")
print(f"{'log π(y*|x)':18s}{by_hand['star']:10.4f}{tracked['star']:10.4f}{'':>19s}")
assert all(abs(by_hand[f] - tracked[f]) < 1e-4 for f in by_hand) and abs(by_hand["chosen"] - library) < 1e-4
assert by_hand["star"] >= by_hand["chosen"]  # the argmax is at least as likely as y⁺ at every position

# %% [markdown]
# ## The regime: where does log π(y⁺) start?
# For every seed and mode, `regime` reports where SFT starts: log π(y⁺|x) per response and per token, the share of
# training prompts whose greedy answer states the right fact, how often y* ≠ y⁺ along y⁺, and the valley depth. Then
# `sft_run` finetunes a copy of the model and tracks every family once per epoch.

# %%
bases = {("hard", SEEDS[0]): (model, tok, probes, world)}  # made above; the rest come from the cache
runs, regimes = {}, {}
print(f"{'mode':5s}{'seed':>5s}{'log π(y⁺)':>11s}{'per token':>11s}{'fact right':>12s}{'y* ≠ y⁺':>9s}"
      f"{'valley depth':>14s}")
for mode in ("easy", "hard"):
    runs[mode], regimes[mode] = [], []
    for seed in SEEDS:
        model, tok, probes, world = bases.get((mode, seed)) or setup(cfg, seed, mode)
        r = regime(model, tok, probes, world)
        regimes[mode].append(r)
        print(f"{mode:5s}{seed:5d}{r['logp_chosen']:11.1f}{r['logp_chosen_per_token']:11.2f}"
              f"{r['answered_fact_correctly']:12.0%}{r['ystar_differs']:9.0%}{r['valley_depth']:14.1f}")
        runs[mode].append(sft_run(cfg, seed, mode, model, tok, probes, None))  # no world: no answer grading here
print("(log π in nats summed over the response; valley depth in nats/token)")

# %% [markdown]
# Compare the two modes row by row. In easy mode log π(y⁺) starts a few nats below 0 and y* differs from y⁺ at
# few positions: SFT has little left to do, and it is done within an epoch or two. In hard mode log π(y⁺) starts far
# lower (the story tail; the asserts at the end check that it is at least 10 nats lower in every seed), and y*
# differs from y⁺ at a large share of the positions. That is the paper's regime, where the curves have room to move.

# %% [markdown]
# ## Fig. 3 for your model, and the claims table
# One panel per family: the mean over the 40 training prompts (solid) and the 40 held-out prompts (dashed); the
# line is the mean over seeds, the band spans the seeds.

# %%
os.makedirs(OUT, exist_ok=True)
try:
    for mode in ("hard", "easy"):
        path = figure(runs[mode], f"{OUT}/06_fig3_{mode}.png", f"SFT, {mode} mode ({cfg.optimizer}, lr {cfg.lr:g})")
        print(f"figure: {path}")
except ImportError as e:
    print(f"(figures skipped: {e})")
claims = {mode: {c["claim"]: c for c in judge(runs[mode])} for mode in runs}
for mode in ("hard", "easy"):
    print(claims_table(list(claims[mode].values()), f"\nclaims, {mode} mode"))

# %% [markdown]
# ## Why each curve moves: a first-order reading with A, K and G
# For one step of **plain SGD**, the change of log π(y|x_o) is −η Σ A·K·G over the positions of y, exact to first
# order in η (lessons/NOTES.md §1; lesson 4 checks it). G = (π − e_{y⁺})/B at each position of y_u⁺: it pushes the
# logit of y⁺'s token up and every other logit down, in proportion to π. K(χ_o, χ_u) says how much a push at
# χ_u = [x_u; y_u⁺] moves the logits at χ_o. A = I − 1πᵀ turns logit changes into log-prob changes, and conserves
# probability: what one token gains, the others lose.
#
# The runs above use **AdamW**, and that changes more than the size of the step. Adam divides each parameter's
# gradient by a running estimate of its scale (a diagonal preconditioner P) and mixes in the gradients of earlier
# batches (momentum). To first order the logits then move by J_o·Δθ ≈ −η·J_o·P·J_uᵀ·G: **J_o·P·J_uᵀ replaces K**,
# and P changes from step to step. The direction of each push differs from the one A·K·G gives (lesson 4 checks
# Adam's step along the update it actually takes; lessons/NOTES.md §1, "Other optimizers"). So the bullets below are
# a first-order picture of plain SGD, offered as an explanation of the AdamW curves; they are not a measurement of
# them. Where a bullet is measured, here or in lesson 7, it says so; the rest is our reading, not measured here.
#
# First one measurement, on the base model of the probe above: one plain-SGD step on the first batch of 8 training
# examples, with the predicted change of each example's own y_u⁺ split by `contributions` into what its own example
# gives and what the rest of the batch gives.

# %%
import copy  # noqa: E402

from tinyld.data import PairData  # noqa: E402
from tinyld.dynamics import contributions  # noqa: E402
from tinyld.updates import SFTUpdate, lm_rows  # noqa: E402

model, tok, probes, world = bases[("hard", SEEDS[0])]
sgd_model = copy.deepcopy(model).use_fast(False)  # the explicit attention: forward-mode AD runs through it
examples = probes.examples("train")
data = PairData(tok, examples, cfg.batch_size, seed=SEEDS[0])
rows = lm_rows(data.batch(0))  # the first batch of the SFT runs of this seed
c = contributions(sgd_model, SFTUpdate(rows), rows, 1e-4)  # (B, B): row = updating example, column = observed y⁺
own, rest = c.diagonal(), c.sum(0) - c.diagonal()  # (B,) each
print(f"one SGD step (lr 1e-4), hard mode, seed {SEEDS[0]}: predicted Δ log π(y_u⁺|x_u) in nats")
print(f"{'x_u (question)':34s}{'own example':>12s}{f'other {len(own) - 1}':>10s}")
for k, i in enumerate(data.indices(0)):
    print(f"{examples[i].prompt[11:-9]:34s}{own[k].item():12.4f}{rest[k].item():10.4f}")
assert (own > 0).all()  # η·B·GᵀKG ≥ 0: an example never lowers its own answer to first order

# %% [markdown]
# - **y_u⁺ rises** (measured above, for one SGD step). Observed at its own sequence, the label's row of A is
#   e_y − π = −B·G, so its own contribution is η·B·GᵀKG ≥ 0 (K is a Gram matrix). The rest of the batch adds cross
#   terms of either sign. Compare the two columns: in hard mode the other examples push each y_u⁺ up too, since they
#   all share the answer format ("fact sentence, then a story sentence"), and together they can push more than the
#   example itself.
# - **Similar responses rise, then fall** (our reading, not measured here). Early on, K between y_u⁻ (or a rephrase,
#   or y_test⁺) and y_u⁺ is large: they share most tokens and the same kind of context, so they ride along. In hard
#   mode the story tail is learned as "a story follows the fact", which raises every story-like response. But the
#   gain at the shared tokens is capped (log π ≤ 0) and stops once they are learned, while at the positions where the
#   similar response differs from y_u⁺, every step pushes y_u⁺'s token up and, through A, the similar response's
#   token down. Once the gains saturate only the losses remain, and the curve turns down.
# - **y_{j≠u}⁺ keeps rising** (measured in lesson 7, under plain SGD). Training on (x_j, y_j⁺) raises y_j⁺ under x_j.
#   Read under x_u, the same response sees contexts [x_u; y_j⁺_<m] that differ from [x_j; y_j⁺_<m] only in the
#   prompt, so K between them is large and some of that rise lands under x_u. But lesson 7's attribution finds that
#   example j, though it is the top single contributor for some probes, gives the smaller part of the rise summed
#   over its probes (it prints j's share): the rest of the batch, which teaches the shared answer format, gives most.
# - **Non-human text** (our reading, not measured here; lesson 4 measures the rule at one position). Where y⁺'s token
#   is already the peak of π (easy mode), a step on it lowers every other token, so shuffled and random words fall.
#   Where y⁺'s token is unlikely and the mass sits elsewhere (hard mode's tail, where y* ≠ y⁺ often), a step on it
#   lowers the peak most, and to first order every token with π_i < ‖π‖² − π(y⁺) *rises* (lessons/NOTES.md §3). So
#   in hard mode even random words can rise for many epochs. They fall once y⁺'s tokens have become the peaks.
# - **y*** (our reading, not measured here) is the argmax at each position of y⁺. As y⁺'s tokens become the argmax,
#   y* and y⁺ coincide and log π(y*) approaches 0 from below. In hard mode, look for a *dip* first: the same
#   mechanism lowers the old peak before y⁺'s token takes its place. In the lab report's full-mode conditions, the
#   default run ends before y* is back above its start, and a larger learning rate or gradient clipping brings it
#   back.
# - **y_init falls from the start**, a verdict that comes from its definition. In tinyld, y_init is the base
#   model's *greedy* answer: each of its tokens is the argmax given the tokens before it, so it starts close to the
#   highest log π a response can have and has little room to rise (the cell below prints where it starts, beside
#   y⁺). The paper's y_init is a long *sampled* generation, whose log π starts far below 0. This row therefore says
#   nothing for or against the paper's bell.

# %%
print(f"{'mode':5s}{'log π(y_init) at the start':>28s}{'log π(y⁺) at the start':>25s}   (mean over seeds and prompts)")
for mode in ("hard", "easy"):
    start = {f: sum(r["curves"]["train"][f][0] for r in runs[mode]) / len(runs[mode]) for f in ("init", "chosen")}
    print(f"{mode:5s}{start['init']:28.2f}{start['chosen']:25.2f}")

# %% [markdown]
# Read the claims table with those readings in mind: which claims held in both modes, and which only in hard mode?

# %%
names = list(claims["hard"])
print(f"{'claim':40s}{'hard':>8s}{'easy':>8s}   (seeds where it held)")
for k in names:
    print(f"{k:40s}" + "".join(f"{claims[m][k]['held']}/{claims[m][k]['of']}".rjust(8) for m in ("hard", "easy")))

# %% [markdown]
# ## What held in every run we made
# The asserts below held for every seed in fast and full mode in our runs (2 threads). The other claims are measured,
# not asserted. In the lab report's claims table (full mode) some hold only in hard mode, and "non-human text falls"
# holds in no seed of the hard mode, while in fast mode it can hold in some. In easy mode shuffled y⁺ fell in every
# seed of our fast-mode runs and of the lab report's full run, but a full-mode rerun on another machine had it in
# 2 seeds of 3, so it is asserted in fast mode only; random words and a shuffled unrelated sentence did not fall in
# every seed of full mode. The bells of hard mode are asserted nowhere: read their drops in the table above, where
# several are a fraction of a nat.

# %%
for mode in ("hard", "easy"):
    assert claims[mode]["chosen rises"]["held"] == len(SEEDS), mode
assert claims["easy"]["rejected rises then falls"]["held"] == len(SEEDS)  # the bell of y_u⁻ in easy mode
assert claims["hard"]["other_chosen rises"]["held"] == len(SEEDS)  # y_{j≠u}⁺ rises in hard mode …
assert claims["hard"]["other_chosen ends above test_chosen"]["held"] == len(SEEDS)  # … more than y_test⁺
assert not FAST or claims["easy"]["urnd_chosen falls"]["held"] == len(SEEDS)  # shuffled y⁺ falls (easy, fast)
assert claims["easy"]["star rises"]["held"] == len(SEEDS)  # y* rises in easy mode (in hard mode it dips first)
start = [x["logp_chosen"] for x in regimes["hard"]]
assert max(start) < min(x["logp_chosen"] for x in regimes["easy"]) - 10  # hard mode starts far lower

# %% [markdown]
# ## Exercises
# 1. **SGD or AdamW?** Write `family_means(model, tok, probes)`: the mean over the training prompts of log π(y|x_u)
#    for every family, y* included (the numbers the claims are judged on). Predict which families, if any, move the
#    other way in an epoch of plain SGD (lr 1e-4) than in an epoch of AdamW (lr 1e-3), then compare the means
#    before and after each: `m = copy.deepcopy(model)`, then `Trainer(m, data, TrainConfig(task="sft",
#    optimizer="sgd", lr=1e-4, steps=data.batches_per_epoch, grad_clip=0.0, progress=False), tok).run()` (from
#    `tinyld.train`; `data` as in the one-step SGD cell). Then run `python -m tinyld sft-dynamics --fast
#    --optimizer sgd --lr 1e-4` (or pass `optimizer="sgd", lr=1e-4` to `sft_run`). Which claims change? With plain
#    SGD, the A·K·G readings above describe the optimizer that ran. The lab report's conditions table shows the
#    sweep in full mode.
# 2. Track your own families, in the world's words: `probes.save("mine.jsonl")`, add a key (say `first`: a response
#    that shares only its first word with y⁺, such as y⁺'s first word followed by `hum`) to every line, then
#    `mine = ProbeSet.load("mine.jsonl")` and `sft_run(cfg, 0, "hard", model, tok, mine, None)` with the `model`,
#    `tok` of `setup`. (On the command line: `sft-dynamics --probes mine.jsonl`, the tiny world model.) Does `first`
#    rise? Then see where: write `token_changes(before, after, tok, prompt, response)`, the change of
#    log π(y_m | x, y_<m) at every token of y (EOS included) from one model to another. Predict whether the word
#    `first` shares with y⁺ or the rest of `first` gains more in an epoch of SFT, then compute it.
# 3. Make y_init the paper's way: sample one long answer per prompt with
#    `tinyld.evaluate.sampled_answers(model, tok, prompts, 1, seed=0, max_new_tokens=24)`, add it to every line of
#    the probe file as a family `sampled` (exercise 2), and track it. Where does it start, and does it rise first?
#    Then explain the greedy y_init's fall: what does SFT in hard mode teach about the token after "."? Write
#    `end_after_fact(model, tok, probes)`, log π(EOS | x_u, f_u) for each training prompt, where f_u is the first
#    sentence of y_u⁺ (its fact). Predict it before SFT and after an epoch of it, and use `token_changes` to see how
#    much of y_init's fall happens at its last token, the EOS.
#
# Check your answers with `python lessons/exercises/06_sft_dynamics.py`: fill in its three functions; each is
# compared, on the hard-mode base model of seed 0 before and after one SGD step, with an independent computation
# (the `Tracker`, a batch's token log-probs), and a miss prints a hint. Worked solutions:
# `lessons/solutions/06_sft_dynamics.py`.

# %%
print("lesson 6 OK")
