"""RL training (task "grpo" on RLData): samples drawn from the policy, graded, trained on; one SGD step against the
engine's prediction for the same samples; exact resume at a block's first step, refused inside a block; bad input
in one line before any work."""
import pytest
import torch

from tinyld import GPT, GPTConfig, TinyldError
from tinyld.dynamics import one_step
from tinyld.reasoning import Arithmetic
from tinyld.rl_data import RLData
from tinyld.train import TrainConfig, Trainer
from tinyld.updates import GRPOUpdate, lm_rows

TASK = Arithmetic(0)
TOK = TASK.tokenizer()
PROBLEMS = TASK.test_problems()[:6]
QUESTIONS = [p.prompt() for p in PROBLEMS]


def no_repeats(k: int, text: str) -> float:
    """A verifiable reward that varies within a group even for a random model: 1 for an answer that repeats no
    word."""
    words = text.split()
    return float(len(set(words)) == len(words))


def model(seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    return GPT(GPTConfig.preset("tiny", vocab_size=TOK.vocab_size, block_size=64)).to(dtype)


def data(**kw):
    args = dict(group=4, per_step=2, seed=3, max_new_tokens=6, grade=no_repeats)
    args.update(kw)
    return RLData(TOK, QUESTIONS, **args)


def test_the_samples_are_the_policys_graded_and_scored():
    d = data()
    m = model()
    d.bind(m)
    b = d.batch(0)
    assert b.seqs.idx.shape[0] == 2 * 4 and b.adv.shape == (8,)
    texts = [t for ts in d.last["texts"] for t in ts]
    assert b.rewards.tolist() == [no_repeats(0, t) for t in texts]
    r = torch.tensor(d.last["rewards"], dtype=torch.float64)
    torch.testing.assert_close(b.adv.reshape(2, 4), (r - r.mean(1, keepdim=True)) / (r.std(1, keepdim=True) + 1e-4))
    with torch.no_grad():  # log π_old: the policy's own log-prob of each sampled token
        lp = torch.log_softmax(m.eval()(b.seqs.idx), -1).gather(-1, b.seqs.targets.clamp(min=0)[..., None])[..., 0]
    torch.testing.assert_close(b.old, lp * b.seqs.mask)
    for k, q in enumerate(d.last["questions"]):  # each sequence is a question, then one of its samples
        n = len(TOK.encode(QUESTIONS[q]))
        assert b.seqs.idx[4 * k, :n].tolist() == TOK.encode(QUESTIONS[q])
    assert d.batch(0) is b  # the same step: the same samples


def test_one_sgd_step_is_the_engines_prediction_for_those_samples():
    """The trainer's first SGD step on the sampled groups moves held-out answers as −η·A·K·G of a GRPOUpdate
    built from the same samples predicts (first order: close at a small η)."""
    d, m = data(), model()
    eta = 1e-4
    tr = Trainer(m, d, TrainConfig(task="grpo", steps=1, optimizer="sgd", lr=eta, grad_clip=0.0, progress=False), TOK)
    b = d.batch(0)
    up = GRPOUpdate(lm_rows(b.seqs), b.adv)
    from tinyld.data import make_batch
    obs = lm_rows(make_batch(TOK, [QUESTIONS[5], QUESTIONS[4]], [PROBLEMS[5].solution(0), PROBLEMS[4].solution(3)]))
    pred = one_step(m, up, obs, eta)  # the engine (the step taken and undone)
    from tinyld.losses import sequence_logprob
    with torch.no_grad():
        before = sequence_logprob(m(obs.inputs), make_batch(TOK, [QUESTIONS[5], QUESTIONS[4]],
                                                            [PROBLEMS[5].solution(0), PROBLEMS[4].solution(3)]).targets)
    tr.run()
    with torch.no_grad():
        after = sequence_logprob(m(obs.inputs), make_batch(TOK, [QUESTIONS[5], QUESTIONS[4]],
                                                           [PROBLEMS[5].solution(0), PROBLEMS[4].solution(3)]).targets)
    torch.testing.assert_close(after - before, pred.actual_seq, rtol=1e-9, atol=1e-12)  # the trainer's step is it
    assert pred.err_seq < 0.05 and bool((pred.actual_seq != 0).all())


@pytest.mark.parametrize("inner", [1, 2])
def test_resume_at_a_block_start_is_exact(tmp_path, inner):
    cfg = dict(task="grpo", steps=4, optimizer="adamw", lr=3e-3, progress=False, log_every=1)
    full = Trainer(model(), data(inner_steps=inner, loss="dr_grpo"), TrainConfig(**cfg), TOK)
    full.run()
    half = Trainer(model(), data(inner_steps=inner, loss="dr_grpo"),
                   TrainConfig(**{**cfg, "steps": 2, "out_dir": str(tmp_path)}), TOK)
    half.run()
    rest = Trainer.resume(tmp_path / "last.pt", data(inner_steps=inner, loss="dr_grpo"), TOK, steps=4)
    rest.run(overwrite=True)
    for (k, a), b in zip(full.model.state_dict().items(), rest.model.state_dict().values()):
        assert torch.equal(a, b), k
    assert [r["loss"] for r in full.history[2:]] == [r["loss"] for r in rest.history]


def test_resume_inside_a_block_is_refused(tmp_path):
    cfg = TrainConfig(task="grpo", steps=3, optimizer="adamw", lr=3e-3, progress=False, out_dir=str(tmp_path))
    Trainer(model(), data(inner_steps=2), cfg, TOK).run()  # saved at step 3: inside the block of steps 2, 3
    rest = Trainer.resume(tmp_path / "last.pt", data(inner_steps=2), TOK, steps=4)
    with pytest.raises(TinyldError, match="step 3 is inside a block of 2 inner steps"):
        rest.run(overwrite=True)


@pytest.mark.parametrize("make, says", [
    (lambda: data(group=1), "group must be an integer ≥ 2"),
    (lambda: data(per_step=7), "RLData per_step must be an integer in [1, 6]"),
    (lambda: data(loss="dr_grpo", kl=0.1) if False else RLData(TOK, QUESTIONS, no_repeats, loss=__import__(
        "tinyld").rl.GRPOLoss("grpo", kl=0.1)), "needs a reference model"),
    (lambda: RLData(TOK, [], no_repeats), "needs a list of questions"),
    (lambda: RLData(TOK, QUESTIONS, "yes"), "needs a grader"),
    (lambda: data(temperature=0), "RLData temperature must be"),
])
def test_bad_input_is_one_line_before_any_work(make, says):
    with pytest.raises(TinyldError) as err:
        make()
    assert says in str(err.value)


def test_a_grader_that_returns_nan_stops_before_any_update():
    d = data(grade=lambda k, t: float("nan"))
    tr = Trainer(model(), d, TrainConfig(task="grpo", steps=2, progress=False), TOK)
    w = {k: v.clone() for k, v in tr.model.state_dict().items()}
    with pytest.raises(TinyldError, match="rewards must be finite, got nan"):
        tr.run()
    assert all(torch.equal(w[k], v) for k, v in tr.model.state_dict().items()) and tr.step == 0


def test_equal_rewards_give_zero_advantage_and_move_nothing():
    d = data(grade=lambda k, t: 1.0)
    tr = Trainer(model(), d, TrainConfig(task="grpo", steps=1, optimizer="sgd", lr=0.1, grad_clip=0.0,
                                         progress=False), TOK)
    w = {k: v.clone() for k, v in tr.model.state_dict().items()}
    tr.run()
    assert d.last["flat_groups"] == 2 and tr.history[0]["grad_norm"] == 0.0
    assert all(torch.equal(w[k], v) for k, v in tr.model.state_dict().items())
