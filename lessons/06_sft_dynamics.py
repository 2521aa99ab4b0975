# %% [markdown]
# # Lesson 6 — What SFT does to every other answer
#
# Finetune a model on (x_u, y_u⁺) and y_u⁺ becomes more likely. What happens to every *other* response? The
# paper's Fig. 3 tracks log π(y|x_u) for a family of responses (lessons/NOTES.md §4) through SFT:
#
# - the chosen answer y_u⁺ rises;
# - responses **similar** to it (the rejected answer y_u⁻, rephrases, y_test⁺: a held-out prompt's answer, and
#   y_init: the model's own first answer) rise first, then fall;
# - y_{j≠u}⁺, the answer of *another training prompt* read under x_u, keeps rising and ends above y_test⁺;
# - **non-human** text (shuffled words, random words) falls;
# - y*, the teacher-forced argmax along y⁺, rises.
#
# Here you watch Fig. 3 appear for your own tiny model, over three seeds, and read the claims table: for each claim,
# what was measured per seed and whether it held. Each curve is then explained with A, K and G
# (lessons/NOTES.md §1). The world has two modes. In **easy** mode an answer is one fact sentence that the
# pretrained model mostly knows already. In **hard** mode every answer also carries a random story sentence, so
# there is content no model can predict, as in the paper's long answers. The contrast is the first lesson.
#
# Fast mode (`TINYLD_FAST=1`) uses 400-step base models and 8 epochs; full mode 3000-step models and 20 epochs, as
# `python -m tinyld sft-dynamics` does. The asserts check only what held in both.

# %%
import os

from tinyld.experiments.sft_dynamics import SFTDynamicsConfig, claims_table, figure, judge, regime, setup, sft_run

# ---- knobs -------------------------------------------------------------------------------------------
FAST = os.environ.get("TINYLD_FAST", "") not in ("", "0")
OUT = os.environ.get("TINYLD_OUT", "tinyld_out/lessons")
SEEDS = [0, 1, 2]
cfg = SFTDynamicsConfig(seeds=SEEDS, epochs=20, pretrain_steps=3000, fast=FAST, attribution=False)
print(f"SFT with {cfg.optimizer}, lr {cfg.lr:g}, batch {cfg.batch_size}, {cfg.epochs} epochs, base models pretrained "
      f"for {cfg.pretrain_steps} steps, seeds {SEEDS}")

# %% [markdown]
# ## The regime: where does log π(y⁺) start?
# `setup` loads (or pretrains and caches) the base model of each seed, builds the probe set of the 40 training
# prompts and 40 held-out prompts, and freezes y_init (the model's greedy answers). `regime` reports where SFT
# starts: log π(y⁺|x) per response and per token, how often y* ≠ y⁺ along y⁺, and the valley depth.

# %%
runs, regimes = {}, {}
for mode in ("easy", "hard"):
    runs[mode], regimes[mode] = [], []
    for seed in SEEDS:
        model, tok, probes, world = setup(cfg, seed, mode)
        regimes[mode].append(regime(model, tok, probes, world))
        runs[mode].append(sft_run(cfg, seed, mode, model, tok, probes, None))  # no world: no answer grading here
    r = regimes[mode]
    print(f"{mode:5s} log π(y⁺) at the start: " + ", ".join(f"{x['logp_chosen']:.1f}" for x in r) +
          " nats;  y* ≠ y⁺ at " + ", ".join(f"{x['ystar_differs']:.0%}" for x in r) + " of positions")
example = probes.probes[0]
print(f"\na hard-mode probe: {example.prompt!r}")
for fam in ("chosen", "rejected", "other_chosen", "random_tokens", "init"):
    print(f"  {fam:14s} {example.responses.get(fam, '(none)')}")

# %% [markdown]
# In easy mode log π(y⁺) starts a few nats below 0 and y* is already y⁺ at all but about one position in ten: SFT
# has little left to do, and within an epoch or two it is done. In hard mode log π(y⁺) starts tens of nats below 0
# (the tail), and y* differs from y⁺ at about half the positions. That is the paper's regime, where the curves
# have room to move.

# %% [markdown]
# ## Fig. 3 for your model, and the claims table
# One panel per family: the mean over the 40 training prompts (solid) and the 40 held-out prompts (dashed); the
# line is the mean over seeds, the band spans the seeds.

# %%
os.makedirs(OUT, exist_ok=True)
for mode in ("hard", "easy"):
    path = figure(runs[mode], f"{OUT}/06_fig3_{mode}.png", f"SFT, {mode} mode ({cfg.optimizer}, lr {cfg.lr:g})")
    print(f"figure: {path}")
claims = {mode: {c["claim"]: c for c in judge(runs[mode])} for mode in runs}
for mode in ("hard", "easy"):
    print(claims_table(list(claims[mode].values()), f"\nclaims, {mode} mode"))

# %% [markdown]
# ## Why each curve moves: A, K and G
# One step changes log π(y|x_o) by −η Σ A·K·G over the positions of y (lessons/NOTES.md §1). G = π − e_{y⁺} at each
# position of y_u⁺: it pushes the logit of y⁺'s token up and every other logit down, in proportion to π. K(χ_o, χ_u)
# says how much a push at χ_u = [x_u; y_u⁺] moves the logits at χ_o. A = I − 1πᵀ turns logit changes into
# log-prob changes, and conserves probability: what one token gains, the others lose.
#
# - **y_u⁺ rises**: at χ_o = χ_u, K is a Gram matrix (positive semi-definite), so −η·A·K·G raises the label.
# - **Similar responses rise, then fall.** Early on, K between y_u⁻ (or a rephrase, or y_test⁺) and y_u⁺ is large:
#   they share most tokens and the same kind of context, so they ride along. The story tail of hard mode is
#   learned as "a story follows the fact", which raises every story-like response. Later π becomes peaky on y_u⁺'s
#   own tokens. At the positions where the similar response differs from y_u⁺, the push goes to y_u⁺'s token,
#   and A takes that mass from everything else, including the similar response's token. The curve turns down.
# - **y_{j≠u}⁺ keeps rising**: training on (x_j, y_j⁺) raises y_j⁺ under x_j, and K between x_j and x_u is large
#   because the prompts share their template. So y_j⁺ also rises under x_u: the model learns to say B's answer to
#   question A. Lesson 7 attributes this rise to the training examples.
# - **Non-human text** shares little with y_u⁺: K is small. In easy mode it falls, as A moves mass to the peaks. In
#   hard mode it *rises* at first: shuffled story words are still story words, and SFT teaches "a story follows".
# - **y*** is the argmax at each position of y⁺. As y⁺'s tokens become the argmax, y* and y⁺ coincide and
#   log π(y*) approaches 0 from below. In hard mode it first *dips* for several epochs: at the tail's positions the
#   model's old confident guess loses mass to y⁺'s token before that token becomes the new peak, so max π falls
#   for a while. With these settings the run ends before y* is back above its start; a larger learning rate or
#   gradient clipping brings it back within 20 epochs (the README's conditions table).
#
# Read the table with that in mind: which claims held in both modes, and which only in hard mode?

# %%
for mode in ("hard", "easy"):
    print(f"{mode:5s}: " + ", ".join(f"{k} {c['held']}/{c['of']}" for k, c in claims[mode].items()))

# %% [markdown]
# ## What held in every run we made
# These hold for every seed in fast and full mode on our machine. The others are measured, not asserted: in the
# README's claims table some hold only in hard mode, and "non-human text falls" does not hold in hard mode at all.
# (Shuffled y⁺ falls in easy mode in every seed; random words and a shuffled unrelated sentence only in some.)

# %%
for mode in ("hard", "easy"):
    assert claims[mode]["chosen rises"]["held"] == 3, mode
    assert claims[mode]["rejected rises then falls"]["held"] == 3, mode  # the bell of y_u⁻
assert claims["hard"]["test_chosen rises then falls"]["held"] == 3  # the bell of y_test⁺ in hard mode
assert claims["hard"]["other_chosen rises"]["held"] == 3  # y_{j≠u}⁺ rises in hard mode …
assert claims["hard"]["other_chosen ends above test_chosen"]["held"] == 3  # … more than y_test⁺
assert claims["easy"]["urnd_chosen falls"]["held"] == 3  # shuffled y⁺ falls in easy mode
assert claims["easy"]["star rises"]["held"] == 3  # y* rises in easy mode (in hard mode it dips first)
start = [x["logp_chosen"] for x in regimes["hard"]]
assert max(start) < min(x["logp_chosen"] for x in regimes["easy"]) - 20  # hard mode starts far lower

# %% [markdown]
# ## Exercises
# 1. Run `python -m tinyld sft-dynamics --optimizer sgd --lr 1e-4` (or pass `optimizer="sgd"` to `sft_run`). Which
#    claims change? The README's conditions table shows the sweep.
# 2. Track your own families: add a key to every line of a probe JSONL (`ProbeSet.save` writes one to start from)
#    and load it with `ProbeSet.load`. Does a response that shares only the first word with y⁺ rise?
# 3. In hard mode, y_init falls from the start instead of rising first. Look at its log π at step 0 (it is the
#    greedy answer, so it starts near its maximum). Why can it not rise much?

# %%
print("lesson 6 OK")
