"""python -m tinyld rl-dynamics: the claims' rules on made-up runs (each rule can fail), bad flags refused in one
line before any work, and the fast run end to end: its JSON, claims table and figure."""
import json

import pytest
import torch

from tinyld import GPT, GPTConfig, TinyldError
from tinyld.data import make_batch
from tinyld.dynamics import contributions
from tinyld.experiments.rl_dynamics import RLDynamicsConfig
from tinyld.experiments.rl_dynamics.claims import entropy, falls_fastest, lazy, lengths, pass_k
from tinyld.experiments.rl_dynamics.tracking import halves_now
from tinyld.reasoning import Arithmetic
from tinyld.rl_data import RLData
from tinyld.updates import GRPOUpdate, lm_rows


def _point(step, correct, incorrect, ref, rew, mass, h=1.0, halves=None):
    fam = lambda lp: {"logp": lp, "per_token": [x / 10 for x in lp]}  # noqa: E731
    return {"step": step, "correct": fam(correct), "incorrect": {**fam(incorrect), "mass": mass, "star": [0.0]},
            "reference": fam(ref), "rewrite": fam(rew), "entropy": h, "halves": halves}


def test_the_rules_of_the_claims():
    m0 = {"own": 0.5, "other": 0.0, "argmax": 0.2, "rest": 0.3}
    m1 = {"own": 0.4, "other": 0.0, "argmax": 0.3, "rest": 0.3}
    halves = {"positive": [1.0, 1.0, 1.0], "negative": [-2.0, -0.1, -0.1]}
    run = {"points": [_point(0, [-5, -5, -5], [-20, -20], [-6], [-9], m0, 1.0, halves),
                      _point(10, [-5.2, -2, -1], [-30, -28], [-5], [-8], m1, 0.8)],
           "entropy_checks": [{"predicted": -0.01, "actual": -0.012}, {"predicted": -0.02, "actual": -0.018}]}
    f = falls_fastest(run)
    assert f["held"] and f["changes"]["incorrect"] == pytest.approx(-0.9)
    assert not falls_fastest({**run, "points": [run["points"][0], _point(10, [-5], [-20], [-6], [-19], m1)]})["held"]
    assert not falls_fastest({**run, "points": [run["points"][0], {**run["points"][1], "incorrect": {
        **run["points"][1]["incorrect"], "mass": m0}}]})["held"]  # no mass moved into the argmax
    z = lazy(run)  # sample 0 fell (lazy), 1 and 2 rose by 3 and 4 nats; the push on 0 is 2× the pull, on the rest 0.1×
    assert (z["lazy"], z["of"], z["held"]) == (1, 3, True)
    assert z["ratio_lazy"] == pytest.approx(2.0) and z["ratio_other"] == pytest.approx(0.1)
    lift = {"positive": [1.0, 1.0, 1.0], "negative": [+2.0, -0.1, -0.1]}  # the negative half lifts the lazy one
    lifted = {**run, "points": [{**run["points"][0], "halves": lift}, run["points"][1]]}
    assert lazy(lifted)["ratio_lazy"] == 0.0 and not lazy(lifted)["held"]  # a lift is no push
    no_other = {"positive": [1.0, -1.0, -1.0], "negative": [-2.0, -0.1, -0.1]}  # no pull on the others: no ratio
    assert not lazy({**run, "points": [{**run["points"][0], "halves": no_other}, run["points"][1]]})["held"]
    assert entropy(run)["held"] and not entropy({**run, "entropy_checks": [{"predicted": 0.01, "actual": -0.01}]})[
        "held"]
    sft = {"k": [1, 2], "pass": [0.2, 0.6], "length_incorrect": 18.0}
    ok = {"pass_at_k": {"pass": [0.3, 0.5], "length_incorrect": 19.0}}
    assert pass_k(ok, sft)["held"] and not pass_k({"pass_at_k": {"pass": [0.3, 0.7]}}, sft)["held"]
    assert lengths(ok, {"pass_at_k": {"length_incorrect": 18.5}}, sft)["held"]
    assert not lengths(ok, {"pass_at_k": {"length_incorrect": 19.5}}, sft)["held"]


@pytest.mark.parametrize("kw, says", [
    ({"group": 1}, "rl-dynamics --group must be an integer in [2, 256]"),
    ({"clip": 0.0}, "grpo clip must be"),
    ({"kl": -1.0}, "grpo kl must be"),
    ({"losses": ["ppo"]}, "rl-dynamics --losses must name distinct losses of grpo, dr_grpo"),
    ({"losses": ["grpo", "grpo"]}, "rl-dynamics --losses must name distinct losses"),
    ({"model": "mini"}, "rl-dynamics --model mini: rl-dynamics takes tiny"),
    ({"model": "smollm2", "pretrain_steps": 10}, "rl-dynamics --pretrain-steps: --model smollm2 is a pretrained LLM"),
    ({"model": "smollm2", "lr": 0.0}, "rl-dynamics --lr"),
    ({"clip": 1.5}, "rl-dynamics --clip: grpo clip must be"),
    ({"kl": float("nan")}, "rl-dynamics --kl: grpo kl must be"),
])
def test_bad_settings_are_one_line(kw, says):
    with pytest.raises(TinyldError) as err:
        RLDynamicsConfig(**kw)
    assert says in str(err.value)


def test_the_fast_run(tmp_path, lesson_workdir, monkeypatch, capsys):
    from tinyld.__main__ import main

    monkeypatch.chdir(lesson_workdir)  # the lessons' cached base models
    assert main(["rl-dynamics", "--fast", "--threads", "2", "--out", str(tmp_path / "o")]) == 0
    res = json.loads((tmp_path / "o" / "rl_dynamics.json").read_text())
    seed = res["seeds"][0]
    assert set(seed["runs"]) == {"grpo", "dr_grpo"} and len(res["claims"]) == 5
    for r in seed["runs"].values():
        assert [p["step"] for p in r["points"]] == [0, 8, 16, 24] and len(r["rewards"]) == 24
        assert [c["step"] for c in r["entropy_checks"]] == [0, 8, 16] and len(r["pass_at_k"]["pass"]) == 8
        assert all(0 <= p <= 1 for p in r["pass_at_k"]["pass"]) and r["pass_at_k"]["pass"] == sorted(
            r["pass_at_k"]["pass"])  # pass@k never falls with k
    assert (tmp_path / "o" / "rl_curves.png").stat().st_size > 0
    assert "lazy likelihood displacement" in (tmp_path / "o" / "claims.txt").read_text()
    assert "fast mode uses" in capsys.readouterr().out


@pytest.mark.parametrize("loss", ["grpo", "dr_grpo"])
def test_the_halves_are_the_per_sample_contributions_summed(loss):
    """halves_now's two predictions (one per sign of the advantage) against the engine's per-sample route."""
    world = Arithmetic(0)
    tok = world.tokenizer()
    torch.manual_seed(0)
    model = GPT(GPTConfig.preset("tiny", vocab_size=tok.vocab_size, block_size=64)).double()
    probs = world.pool()[:4]
    data = RLData(tok, [p.prompt() for p in probs], lambda k, text: float(len(text.split()) % 2), group=4,
                  per_step=2, loss=loss, seed=3, max_new_tokens=8, block_size=64)
    data.bind(model)
    b = data.batch(0)
    assert bool((b.adv > 0).any()) and bool((b.adv < 0).any())  # both halves exist
    fam = {"correct": ([probs[0].prompt(), probs[1].prompt()], [probs[0].solution(0), probs[1].solution(5)])}
    h = halves_now(model, data, 0, tok, fam)
    obs = lm_rows(make_batch(tok, *fam["correct"], 64))
    parts = contributions(model, GRPOUpdate(lm_rows(b.seqs), b.adv, loss=data.spec), obs, 1.0)  # (samples, 2)
    for half, sel in (("positive", b.adv > 0), ("negative", b.adv < 0)):
        assert torch.allclose(torch.tensor(h[half], dtype=torch.float64), parts[sel].sum(0), rtol=1e-9, atol=1e-12)


def test_on_a_real_llm_file(tmp_path, monkeypatch):
    """The real-LLM route end to end on a small llama-shaped GGUF file with SmolLM2's chat template: the questions
    as chat turns, SFT first, RL, the JSON and the claims table."""
    pytest.importorskip("gguf")
    from test_real_llm_runs import chat_gguf_file

    from tinyld.experiments.rl_dynamics import run
    from tinyld.experiments.rl_dynamics.tracking import sft_model

    monkeypatch.chdir(tmp_path)  # the run's model cache folder goes here
    path = chat_gguf_file(tmp_path / "chat.gguf")
    cfg = RLDynamicsConfig(model=str(path), seeds=[0], steps=2, sft_data=4, sft_epochs=1, group=2, per_step=1,
                           probes=1, fixed_samples=2, test_questions=1, passk_n=2, measure_every=1, threads=1,
                           out=str(tmp_path / "o"))
    task, _ = sft_model(cfg, 0)
    p = task.world.pool()[0]
    assert task.chat and task.prompt(p).endswith(f"<|im_start|>user\n{p.question()}<|im_end|>\n"
                                                 "<|im_start|>assistant\n")
    longest = max(len(task.tok.encode(q.solution(f))) for q in task.world.pool() + task.world.test_problems()
                  for f in range(16))
    assert task.max_new == longest + 8 and task.train_examples([p])[0].prompt == task.prompt(p)
    res = run(cfg)
    assert res["config"]["model"] == str(path) and set(res["seeds"][0]["runs"]) == {"grpo", "dr_grpo"}
    assert res["seeds"][0]["max_new_tokens"] == task.max_new
    assert [x["step"] for x in res["seeds"][0]["runs"]["grpo"]["points"]] == [0, 1, 2]
    assert "lazy likelihood displacement" in (tmp_path / "o" / "claims.txt").read_text()


def test_a_claims_headline_is_its_mean_and_sd_over_the_seeds():
    from tinyld.experiments.kit import add_claim, claims_table

    per = [{"held": True, "x": 1.0}, {"held": False, "x": 2.0}, {"held": True, "x": 4.0}, {"held": True, "x": None}]
    out: list = []
    add_claim(out, "one", "p", per, lambda m: str(m["x"]), ("x", lambda m: m["x"]))  # the seed without x: left out
    add_claim(out, "two", "p", per[:2], lambda m: "", ("a, b", lambda m: (m["x"], -m["x"]), ".1f"))
    add_claim(out, "three", "p", per[:1], lambda m: "")  # no headline
    add_claim(out, "four", "p", per[:2], lambda m: "", ("y", lambda m: (m["x"], None if m["x"] > 1 else 0.0)))
    m = out[0]["mean_sd"]
    assert m["seeds"] == 3 and m["mean"] == [pytest.approx(7 / 3)] and m["sd"] == [pytest.approx((7 / 3) ** 0.5)]
    assert out[1]["mean_sd"]["mean"] == [1.5, -1.5] and out[1]["mean_sd"]["sd"] == [pytest.approx(0.5 ** 0.5)] * 2
    lines = claims_table(out, "t", width=6, unit="").splitlines()
    assert "mean ± sd over seeds" in lines[1] and "x +2.33 ± 1.53" in lines[2] and "a, b 1.5 ± 0.7, -1.5 ± 0.7" in \
        lines[3] and lines[4].split()[:3] == ["three", "held", "—"]
    assert out[3]["mean_sd"]["seeds"] == 1 and "y +1.00, +0.00 (1 seed)" in lines[5]  # a tuple holding None: left out


def test_a_model_file_that_does_not_load_is_refused_before_the_run_folder(tmp_path, capsys):
    from tinyld.__main__ import main

    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + bytes(8))  # the magic, then nothing a reader can use
    assert main(["rl-dynamics", "--model", str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "not a readable GGUF file" in err and err.count("\n") == 1 and not (tmp_path / "o").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_the_fast_run_on_a_gpu(tmp_path, lesson_workdir, monkeypatch):
    from tinyld.experiments.rl_dynamics import run

    monkeypatch.chdir(lesson_workdir)
    res = run(RLDynamicsConfig(fast=True, device="cuda", steps=8, out=str(tmp_path / "o")))
    assert [p["step"] for p in res["seeds"][0]["runs"]["grpo"]["points"]] == [0, 8]
