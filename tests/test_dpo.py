"""Preference training on the training loop (PreferenceData, Reference, TrainConfig task "dpo"), where the mass goes
(token_mass), the repeater measure, on-policy pairs and the dpo-dynamics experiment's rules.

Oracles: closed forms (DPO's loss is log 2 when the policy is its own reference; a token's mass is a softmax entry
read by hand), DPOUpdate's loss on the same pairs (built from other code: lm_rows, not PrefBatch), a run resumed
from a checkpoint against the uninterrupted run, the world's oracle, and hand-made curves with known verdicts."""
import copy
import math

import pytest
import torch

from tinyld import GPT, GPTConfig, TinyldError
from tinyld.data import Example, PairData, make_batch
from tinyld.evaluate import response_logprobs
from tinyld.experiments.dpo_dynamics import (DPODynamicsConfig, claims_table, dpo, judge_dpo, on_policy_pairs,
                                             repetition, squeeze_summary)
from tinyld.losses import PAIR_LOSSES
from tinyld.preference import PreferenceData, Reference
from tinyld.probes import ProbeSet
from tinyld.squeeze import MASS_CLASSES, token_mass
from tinyld.train import TrainConfig, Trainer
from tinyld.updates import DPOUpdate, lm_rows
from tinyld.world import World


@pytest.fixture(scope="module")
def hard():
    w = World(0, mode="hard")
    tok = w.tokenizer()
    torch.manual_seed(0)
    model = GPT(GPTConfig.preset("tiny", vocab_size=tok.vocab_size)).eval()
    return w, tok, model, [it.example() for it in w.train_items()]


def _dpo_cfg(steps, name="sigmoid", **kw):
    return TrainConfig(task="dpo", steps=steps, lr=1e-3, pair_loss={"name": name, "beta": 0.1}, progress=False,
                       log_every=1, **kw)


# ================================================================================================== bad input
def test_identical_chosen_and_rejected_is_refused(hard):
    w, tok, model, ex = hard
    bad = ex[:3] + [Example(ex[3].prompt, ex[3].chosen, ex[3].chosen)]
    with pytest.raises(TinyldError, match=r"example 3 .*chosen and rejected are the same text"):
        PreferenceData(tok, bad, 2)
    with pytest.raises(TinyldError, match="same text"):
        Reference.compute(model, tok, bad)


@pytest.mark.parametrize("rejected, match", [(None, "example 2 .*no rejected response"),
                                             ("", "example 2 .*the rejected response is empty"),
                                             ("   ", "example 2 .*the rejected response is empty")])
def test_missing_or_empty_rejected_is_refused(hard, rejected, match):
    w, tok, model, ex = hard
    with pytest.raises(TinyldError, match=match):
        PreferenceData(tok, ex[:2] + [Example(ex[2].prompt, ex[2].chosen, rejected)], 2)


def test_empty_chosen_is_refused(hard):
    w, tok, model, ex = hard
    with pytest.raises(TinyldError, match="example 0 .*the chosen response is empty"):
        PreferenceData(tok, [Example(ex[0].prompt, "", ex[0].rejected)], 1)


def test_reference_from_another_tokenizer_or_other_pairs_is_refused(hard):
    w, tok, model, ex = hard
    from tinyld.tokenizers import WordTokenizer, fingerprint

    other = WordTokenizer(w.words() + ["zebra"])  # one more word: the ids differ, and so does the fingerprint
    assert fingerprint(other) != fingerprint(tok)
    torch.manual_seed(0)
    m2 = GPT(GPTConfig.preset("tiny", vocab_size=other.vocab_size)).eval()
    ref_other_tok = Reference.compute(m2, other, ex)
    with pytest.raises(TinyldError, match="another tokenizer"):
        PreferenceData(tok, ex, 2, reference=ref_other_tok)
    ref = Reference.compute(model, tok, ex)
    with pytest.raises(TinyldError, match="other pairs"):
        PreferenceData(tok, ex[::-1], 2, reference=ref)  # same pairs, another order
    with pytest.raises(TinyldError, match="Reference"):
        PreferenceData(tok, ex, 2, reference={"chosen": [0.0]})
    with pytest.raises(TinyldError, match="vocab_size"):
        Reference.compute(m2, tok, ex)  # a model of another vocabulary


@pytest.mark.parametrize("pair_loss, match", [
    ({"name": "nope"}, "unknown preference loss 'nope': choose one of " + ", ".join(PAIR_LOSSES)),
    ({"name": "sigmoid", "beta": 0.0}, "beta must be a positive"),
    ({"name": "sigmoid", "beta": -1}, "beta must be a positive"),
    ({"name": "ipo", "label_smoothing": 0.1}, "label_smoothing is for"),
    ({"name": "sigmoid", "gama": 1}, "unknown preference-loss parameter"),
    ("sigmoid", "must be a dict"),
])
def test_train_config_checks_the_preference_loss(pair_loss, match):
    with pytest.raises(TinyldError, match=match):
        TrainConfig(task="dpo", pair_loss=pair_loss)


def test_a_reference_loss_without_a_reference_is_refused_but_simpo_runs(hard):
    w, tok, model, ex = hard
    data = PreferenceData(tok, ex, 4)
    with pytest.raises(TinyldError, match="needs none|only 'simpo'"):
        Trainer(copy.deepcopy(model), data, _dpo_cfg(2), tok)
    hist = Trainer(copy.deepcopy(model), data, _dpo_cfg(2, "simpo"), tok).run()
    assert len(hist) == 2 and all(math.isfinite(r["loss"]) for r in hist)
    with pytest.raises(TinyldError, match="task 'dpo' cannot train on PairData"):  # checked before any work
        Trainer(copy.deepcopy(model), PairData(tok, ex, 4), _dpo_cfg(1, "simpo"), tok)
    with pytest.raises(TinyldError, match="task 'sft' cannot train on PreferenceData"):
        Trainer(copy.deepcopy(model), data, TrainConfig(task="sft", steps=1), tok)


# ================================================================================================== the loop
def test_dpo_starts_at_log_2_when_the_policy_is_its_own_reference(hard):
    """m = 0 for every pair at step 0, so −log σ(0) = log 2 (closed form)."""
    w, tok, model, ex = hard
    data = PreferenceData(tok, ex, 8, reference=Reference.compute(model, tok, ex))
    hist = Trainer(copy.deepcopy(model), data, _dpo_cfg(3), tok).run()
    assert hist[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert hist[-1]["loss"] < hist[0]["loss"]


@pytest.mark.parametrize("name", list(PAIR_LOSSES))
def test_the_trainers_loss_equals_dpo_update_on_the_same_pairs(hard, name):
    """One PrefBatch through the Trainer's loss vs DPOUpdate built from separate chosen/rejected batches."""
    w, tok, model, ex = hard
    m = copy.deepcopy(model)
    with torch.no_grad():  # a policy that differs from the reference, so the margins are not 0
        for p in m.parameters():
            p.add_(0.02 * torch.randn_like(p))
    data = PreferenceData(tok, ex, 4, reference=Reference.compute(model, tok, ex))
    tr = Trainer(m, data, TrainConfig(task="dpo", steps=1, pair_loss={"name": name, "beta": 0.3}), tok)
    b = data.batch(0)
    got = tr._pair_loss(m(b.seqs.idx), b)
    sel = [ex[j] for j in b.index]
    c = make_batch(tok, [e.prompt for e in sel], [e.chosen for e in sel])
    r = make_batch(tok, [e.prompt for e in sel], [e.rejected for e in sel])
    ref_c = response_logprobs(model, tok, [e.prompt for e in sel], [e.chosen for e in sel])
    ref_r = response_logprobs(model, tok, [e.prompt for e in sel], [e.rejected for e in sel])
    want = DPOUpdate(lm_rows(c), lm_rows(r), ref_c, ref_r, beta=0.3, loss=name).loss(m)
    assert got.item() == pytest.approx(want.item(), rel=1e-5, abs=1e-6)


def test_reference_equals_response_logprobs(hard):
    w, tok, model, ex = hard
    ref = Reference.compute(model, tok, ex, batch_size=3)  # several batches of different padding
    want_c = response_logprobs(model, tok, [e.prompt for e in ex], [e.chosen for e in ex])
    want_r = response_logprobs(model, tok, [e.prompt for e in ex], [e.rejected for e in ex])
    assert torch.allclose(ref.chosen.float(), want_c, atol=1e-4) and torch.allclose(ref.rejected.float(), want_r,
                                                                                      atol=1e-4)


def test_a_resumed_dpo_run_equals_the_uninterrupted_run(hard, tmp_path):
    w, tok, model, ex = hard
    ref = Reference.compute(model, tok, ex)
    data = PreferenceData(tok, ex, 8, seed=3, reference=ref)
    straight = copy.deepcopy(model)
    Trainer(straight, data, _dpo_cfg(6), tok).run()
    first = copy.deepcopy(model)
    Trainer(first, data, _dpo_cfg(3, out_dir=str(tmp_path)), tok).run()
    tr = Trainer.resume(tmp_path / "last.pt", data, tok, steps=6)
    tr.run()
    for a, b in zip(straight.parameters(), tr.model.parameters()):
        assert torch.equal(a, b)
    other = PreferenceData(tok, ex, 8, seed=3, reference=Reference.compute(straight, tok, ex))
    with pytest.raises(TinyldError, match="other data"):  # another reference is other data
        Trainer.resume(tmp_path / "last.pt", other, tok, steps=6)


# ================================================================================================== token_mass
def test_token_mass_by_hand():
    torch.manual_seed(1)
    z = torch.randn(2, 4, 6, dtype=torch.float64)
    t = torch.tensor([[-100, 1, 2, 3], [-100, 4, 4, -100]])
    o = torch.tensor([[-100, 1, 5, -100], [-100, 3, 2, 2]])
    m = token_mass(z, t, o)
    pi = torch.softmax(z, -1)
    for b in range(2):
        for s in range(4):
            if t[b, s] == -100:
                assert m[b, s].abs().sum() == 0
                continue
            y, other, top = int(t[b, s]), int(o[b, s]), int(pi[b, s].argmax())
            own = pi[b, s, y].item()
            oth = pi[b, s, other].item() if other not in (-100, y) else 0.0
            arg = pi[b, s, top].item() if top != y and top != other else 0.0
            want = [own, oth, arg, 1 - own - oth - arg]
            assert m[b, s].tolist() == pytest.approx(want, abs=1e-12), (b, s)
    assert list(MASS_CLASSES) == ["own", "other", "argmax", "rest"]
    with pytest.raises(TinyldError, match="token_mass needs"):
        token_mass(z[0], t, o)


def test_token_mass_argmax_column_with_a_fixed_peak():
    """With ``peak`` given, the argmax column reads that token, not the current argmax: a step's flow."""
    z = torch.tensor([[[0.0, 3.0, 1.0, 2.0]]], dtype=torch.float64)
    t, o = torch.tensor([[0]]), torch.tensor([[2]])
    pi = torch.softmax(z, -1)[0, 0]
    assert token_mass(z, t, o)[0, 0, 2].item() == pytest.approx(pi[1].item())
    assert token_mass(z, t, o, peak=torch.tensor([[3]]))[0, 0, 2].item() == pytest.approx(pi[3].item())


# ================================================================================================== repeater, on-policy
def test_repetition_closed_form():
    assert repetition(["the old river the old river the old river"]) == pytest.approx(4 / 7)
    assert repetition(["alice lives in paris . the old river runs near the tall tree ."]) == 0.0
    assert repetition(["a b", "a b c a b c"]) == pytest.approx((0 + 1 / 4) / 2)
    assert repetition([]) == 0.0


def test_on_policy_pairs_are_ranked_by_the_oracle(hard):
    w, tok, model, ex = hard
    items = w.train_items()[:10]
    pairs = on_policy_pairs(model, tok, w, items, samples=3, seed=0)
    by_prompt = {it.prompt: it for it in items}
    assert pairs, "a random model gets some answers wrong"
    for p in pairs:
        it = by_prompt[p.prompt]
        assert w.classify(it, p.rejected) != "correct"
        assert w.classify(it, p.chosen) == "correct"
        if not p.meta["on_policy_chosen"]:  # no sample was correct: the world's y⁺ stands in
            assert p.chosen == it.chosen
        assert p.chosen.split() != p.rejected.split()


# ================================================================================================== the experiment
def test_dpo_run_records_every_family_mass_and_repetition(hard):
    w, tok, model, ex = hard
    cfg = DPODynamicsConfig(seeds=[0], modes=["hard"], dpo_epochs=2, batch_size=8)
    probes = ProbeSet.from_world(w).with_init(model, tok)
    r = dpo(cfg, 0, model, tok, probes, w, dense=True, snapshots=(1,))
    spe = 40 // 8
    assert r["measured_steps"] == [0, 1, 2, 3, 4, 5, 10]  # every step of epoch 1, then per epoch
    assert set(r["curves"]["train"]) == set(probes.families)
    assert len(r["mass"]) == len(r["repetition"]) == 3 and r["mass_epochs"] == [0.0, 1.0, 2.0]
    for m in r["mass"]:
        for half in ("chosen", "rejected"):
            assert sum(m[half][k] for k in MASS_CLASSES) == pytest.approx(1.0, abs=1e-9)
    for half in ("chosen", "rejected"):  # at the start the peak then and the peak now are the same token
        assert r["mass"][0][half]["start_argmax"] == pytest.approx(r["mass"][0][half]["argmax"], abs=1e-12)
    assert r["steps"] == 2 * spe and set(r["models"]) == {1}
    s = squeeze_summary(r)
    assert s["rejected"] == r["curves"]["train"]["rejected"][-1] - r["curves"]["train"]["rejected"][0]
    on = dpo(cfg, 0, model, tok, probes, w, on_policy=True)
    assert len(on["pairs_per_round"]) == 2 and len(on["mass"]) == 1 + sum(n > 0 for n in on["pairs_per_round"])


def _run(curves, mass0, mass1, rep):
    return {"curves": {"train": curves}, "measured_steps": [0, 1, 5, 10], "steps_per_epoch": 5,
            "mass": [mass0, mass1], "repetition": rep}


def test_judge_dpo_on_hand_made_curves():
    fam = lambda a, b: [a, (a + b) / 2, (a + b) / 2, b]  # noqa: E731
    m0 = {"chosen": {"argmax": 0.1}, "rejected": {"argmax": 0.2}}
    up = {"chosen": {"argmax": 0.3}, "rejected": {"argmax": 0.4}}
    squeezed = {"chosen": [-10.0, -9.0, -11.0, -12.0], "rejected": fam(-20, -40), "hum": fam(-30, -35),
                "rnd": fam(-50, -49), "star": fam(-5, -3)}
    no = {"chosen": [-10.0, -9.0, -8.0, -7.0], "rejected": fam(-20, -21), "hum": fam(-30, -40),
          "rnd": fam(-50, -49), "star": fam(-5, -6)}
    cl = {c["claim"]: c for c in judge_dpo([_run(squeezed, m0, up, [0.1, 0.2]), _run(no, up, m0, [0.2, 0.1])])}
    assert [cl[k]["held"] for k in ("rejected falls", "rejected falls fastest", "chosen bumps, then declines",
                                    "chosen ends below its start", "most families fall", "star rises",
                                    "mass squeezed into the argmax", "repetition grows")] == [2, 1, 1, 1, 1, 1, 1, 1]
    assert cl["rejected falls fastest"]["per_seed"][1]["largest"] == "hum"
    assert cl["most families fall"]["per_seed"][0] == {"falling": 3, "of": 4, "held": True}
    assert cl["rejected falls"]["verdict"] == "held" and cl["star rises"]["verdict"] == "mixed (1/2)"
    text = claims_table(list(cl.values()), "t")
    assert "largest: hum" in text and "3/4" in text


@pytest.mark.parametrize("kw, match", [({"experiment": "nope"}, "dynamics, extend, on-policy, conditions, all"),
                                       ({"loss": "kto"}, "choose one of " + ", ".join(PAIR_LOSSES)),
                                       ({"beta": 0.0}, "beta"), ({"seeds": [1, 1]}, "repeats"),
                                       ({"modes": ["medium"]}, "easy"), ({"dpo_epochs": 0}, "dpo-epochs")])
def test_experiment_config_checks(kw, match):
    with pytest.raises(TinyldError, match=match):
        DPODynamicsConfig(**kw)


def test_cli_bad_loss_name_is_one_line(capsys):
    from tinyld.__main__ import main

    assert main(["dpo-dynamics", "--loss", "nope", "--out", "/tmp/never"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "sigmoid, hinge, ipo, robust, rpo, simpo, dpop" in err


# ================================================================================================== halves
@pytest.mark.parametrize("name", ["sigmoid", "rpo"])
def test_halves_add_up_and_the_shared_prefix_cancels_when_c_plus_equals_c_minus(hard, name):
    from tinyld.dynamics import halves, sequence_change
    from tinyld.kernel import predict

    w, tok, model, ex = hard
    m = copy.deepcopy(model).double()
    sel = ex[:4]
    c = make_batch(tok, [e.prompt for e in sel], [e.chosen for e in sel])
    r = make_batch(tok, [e.prompt for e in sel], [e.rejected for e in sel])
    ref = torch.full((4,), -30.0, dtype=torch.float64)
    up = DPOUpdate(lm_rows(c), lm_rows(r), ref, ref - 5, beta=0.5, loss=name)
    obs = lm_rows(make_batch(tok, [sel[0].prompt] * 3, [sel[0].chosen, sel[0].rejected, sel[1].chosen]))
    parts = halves(m, up, obs, 1e-3)
    whole = sequence_change(obs, predict(m, obs, up, 1e-3))
    assert torch.allclose(parts["chosen"] + parts["rejected"] + parts["shared"], whole, rtol=1e-9, atol=1e-12)
    assert set(parts) == {"chosen", "rejected", "shared"}
    if name == "sigmoid":  # c⁺ = c⁻: on the common prefix ("judy lives in …") the halves cancel exactly
        assert parts["shared"].abs().max() < 1e-9 * whole.abs().max()
    else:  # rpo's extra pull α/n⁺ on y⁺ does not cancel
        assert parts["shared"].abs().max() > 1e-3 * whole.abs().max()
    with pytest.raises(TinyldError, match="DPOUpdate"):
        halves(m, "not an update", obs, 1e-3)


# ========================================================================================= found by trying bad input
def test_bad_examples_name_the_example(hard):
    w, tok, model, ex = hard
    with pytest.raises(TinyldError, match="example 1: rejected must be a string, got int"):
        PreferenceData(tok, [ex[0], Example(ex[1].prompt, ex[1].chosen, 5)], 1)
    with pytest.raises(TinyldError, match="example 1: chosen must be a string, got bytes"):
        PreferenceData(tok, [ex[0], Example(ex[1].prompt, b"x", "y")], 1)
    with pytest.raises(TinyldError, match="list of Example objects, got Example"):
        PreferenceData(tok, ex[0], 1)
    with pytest.raises(TinyldError, match="tokenizer first"):
        PreferenceData(None, ex, 1)
    with pytest.raises(TinyldError, match="example 3 has an empty prompt"):
        PreferenceData(tok, ex[:3] + [Example("", ex[3].chosen, ex[3].rejected)], 1)
    long = " ".join(["the old river runs ."] * 40)
    with pytest.raises(TinyldError, match="example 2 \\(rejected\\) has"):
        PreferenceData(tok, ex[:2] + [Example(ex[2].prompt, ex[2].chosen, long)], 1, block_size=64)
    with pytest.raises(TinyldError, match="encode to the same tokens"):
        PreferenceData(tok, [Example(ex[0].prompt, ex[0].chosen, ex[0].chosen + "  ")], 1)
    with pytest.raises(TinyldError, match="reference model"):
        Reference.compute(None, tok, ex)
    with pytest.raises(TinyldError, match="step"):
        PreferenceData(tok, ex, 4).batch(-1)


def test_a_damaged_reference_is_refused(hard):
    import dataclasses

    w, tok, model, ex = hard
    ref = Reference.compute(model, tok, ex)
    for bad, match in ((dataclasses.replace(ref, chosen=torch.full_like(ref.chosen, float("nan"))), "finite"),
                       (dataclasses.replace(ref, chosen=-ref.chosen), "≤ 0"),
                       (dataclasses.replace(ref, chosen=ref.chosen[:5]), "one per pair"),
                       (dataclasses.replace(ref, rejected=ref.rejected.tolist()), "float tensor")):
        with pytest.raises(TinyldError, match=match):
            PreferenceData(tok, ex, 8, reference=bad)


def test_numpy_parameters_give_a_resumable_checkpoint_and_resume_keeps_the_loss(hard, tmp_path):
    np = pytest.importorskip("numpy")
    w, tok, model, ex = hard
    data = PreferenceData(tok, ex, 8, reference=Reference.compute(model, tok, ex))
    cfg = TrainConfig(task="dpo", steps=2, pair_loss={"name": "ipo", "beta": np.float32(0.3)}, out_dir=str(tmp_path),
                      progress=False)
    assert cfg.pair_loss == {"name": "ipo", "beta": pytest.approx(0.3), "label_smoothing": 0.0, "gamma": 0.5,
                             "alpha": 1.0, "lam": 50.0} and type(cfg.pair_loss["beta"]) is float
    Trainer(copy.deepcopy(model), data, cfg, tok).run()
    tr = Trainer.resume(tmp_path / "last.pt", data, tok, steps=4, pair_loss={"beta": 0.5})
    assert tr.pair_loss.name == "ipo" and tr.pair_loss.beta == 0.5  # a partial override changes β, keeps the loss
    with pytest.raises(TinyldError, match="cannot resume with another one"):
        Trainer.resume(tmp_path / "last.pt", data, tok, steps=4, pair_loss={"name": "sigmoid"})


def test_parameters_a_loss_would_ignore_are_refused():
    from tinyld.losses import pair_loss

    for name, kw in (("ipo", {"gamma": 3.0}), ("hinge", {"alpha": 0.0}), ("sigmoid", {"lam": 1.0})):
        with pytest.raises(TinyldError, match="is a parameter of the"):
            pair_loss(name, **kw)
    with pytest.raises(TinyldError, match="must be a dict"):
        TrainConfig(task="dpo", pair_loss={1: 2})
    assert pair_loss("simpo", gamma=1.0).gamma == 1.0


def test_dpo_update_refuses_a_pair_of_identical_responses(hard):
    w, tok, model, ex = hard
    c = make_batch(tok, [ex[0].prompt, ex[1].prompt], [ex[0].chosen, ex[1].chosen])
    r = make_batch(tok, [ex[0].prompt, ex[1].prompt], [ex[0].rejected, ex[1].chosen])
    with pytest.raises(TinyldError, match="pair 1: the chosen and the rejected response are the same tokens"):
        DPOUpdate(lm_rows(c), lm_rows(r), torch.tensor([-9.0, -9.0]), torch.tensor([-9.0, -9.0]))


@pytest.mark.parametrize("kw, match", [({"peak": torch.tensor([1])}, "shape"),
                                       ({"targets": torch.tensor([[-100, 6]])}, "not a token id"),
                                       ({"other": torch.tensor([[-1, 2]])}, "not a token id"),
                                       ({"targets": torch.tensor([[0.0, 1.0]])}, "integer token ids"),
                                       ({"logits": torch.full((1, 2, 6), float("nan"))}, "NaN"),
                                       ({"targets": [[0, 1]]}, "takes tensors")])
def test_token_mass_refuses_bad_input(kw, match):
    args = {"logits": torch.zeros(1, 2, 6), "targets": torch.tensor([[-100, 1]]), "other": torch.tensor([[-100, 2]]),
            **kw}
    with pytest.raises(TinyldError, match=match):
        token_mass(args["logits"], args["targets"], args["other"], args.get("peak"))


def test_who_moves_takes_numpy_and_tensor_labels():
    np = pytest.importorskip("numpy")
    from tinyld.squeeze import who_moves

    z = torch.tensor([2.0, 1.0, 0.0, -3.0], dtype=torch.float64)
    a, b, c = who_moves(z, 3, 1.0), who_moves(z, np.int64(3), 1.0), who_moves(z, torch.tensor(3), 1.0)
    assert torch.equal(a["pi_after"], b["pi_after"]) and torch.equal(a["pi_after"], c["pi_after"])
    with pytest.raises(TinyldError, match="sign"):
        who_moves(z, 3, 1.0, sign=True)


# ========================================================================================= the command, end to end
@pytest.fixture(scope="module")
def dpo_run(tmp_path_factory):
    from rank_play import record_training

    from tinyld.experiments.dpo_dynamics import run

    tmp = tmp_path_factory.mktemp("dpo")
    with pytest.MonkeyPatch.context() as mp:
        _one_thread_here(mp, tmp)
        runs = record_training(mp)
        res = run(_run_config(tmp / "out"))
    return tmp / "out", res, runs


def _run_config(out) -> DPODynamicsConfig:
    return DPODynamicsConfig(experiment="all", seeds=[0], modes=["easy"], sft_epochs=1, dpo_epochs=1, samples=1,
                             pretrain_steps=5, out=str(out), threads=1)


def _one_thread_here(mp, tmp) -> None:
    import contextlib

    mp.chdir(tmp)  # the 5-step base models are cached in ./tinyld_out/cache
    mp.setattr("tinyld.pretrained.num_threads", lambda n: contextlib.nullcontext())


def test_the_command_writes_strict_json_claims_and_figures(dpo_run):
    import json

    out, res, _ = dpo_run
    text = (out / "dpo_dynamics.json").read_text()
    back = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))
    assert "models" not in text  # model snapshots stay in memory
    m = back["modes"]["easy"]
    assert set(m) == {"dynamics", "on_policy", "extend", "conditions"}
    for r in m["dynamics"]["runs"]:  # the rule of "rejected falls", recomputed from the saved curves
        ys = r["curves"]["train"]["rejected"]
        verdict = [c for c in m["dynamics"]["claims"] if c["claim"] == "rejected falls"][0]["per_seed"][r["seed"]]
        assert verdict["held"] == (ys[-1] < ys[0]) and verdict["change"] == pytest.approx(ys[-1] - ys[0])
        assert r["measured_steps"] == [0, 1, 2, 3, 4, 5]  # every step of the one epoch
    assert [w["dpo_epochs"] for w in m["extend"]["per_seed"][0]["win"]] == [1]  # 2, 4, 6 capped at the run's 1
    w = m["extend"]["per_seed"][0]["win"][0]
    assert w["wins"] + w["ties"] + w["losses"] == w["n"] == len(World(0).test_items())
    rows = m["conditions"]["rows"]
    assert [r["condition"] for r in rows][:3] == ["default", "shallow valley", "sgd"] and len(rows) == 6
    assert rows[1]["pretrain_steps"] == 1 and rows[2]["optimizer"] == "sgd"
    claims = (out / "claims.txt").read_text()
    for title in ("off-policy DPO", "on-policy vs off-policy", "extend vs baseline"):
        title += ", easy world"
        assert title in claims
    assert (out / "conditions_easy.txt").exists()
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return
    for name in ("fig4_easy.png", "mass_easy.png", "extend_easy.png"):
        assert (out / name).stat().st_size > 1000


def test_under_torchrun_the_other_ranks_only_train(dpo_run):
    """The command as rank 1 of a torchrun group plays it (rank_play): it joins every training run of rank 0's
    (dynamics, on-policy, extend, conditions), in the same order, reaching the same weights, while it measures no
    probe, judges nothing and writes no file. On-policy pairs come from rank 0 (here: the process itself)."""
    from rank_play import as_rank, forbid, forbid_in, record_training

    from tinyld.experiments import dpo_dynamics
    from tinyld.probes import ProbeSet, Tracker

    out, _, main_runs = dpo_run
    assert len(main_runs) >= 16 and {r[0] for r in main_runs} == {"sft", "dpo"}
    with pytest.MonkeyPatch.context() as mp:
        _one_thread_here(mp, out.parent)
        runs = record_training(mp)
        as_rank(mp, 1)
        forbid(mp, [(Tracker, "measure"), (ProbeSet, "with_init")])
        forbid_in(mp, dpo_dynamics, ("regime", "greedy_answers", "valley_depth", "mass", "peaks", "sampled_correct",
                                     "judge_dpo", "figure"))
        assert dpo_dynamics.run(_run_config(out.parent / "rank1")) == {}
    assert runs == main_runs
    assert not (out.parent / "rank1").exists()  # rank 0 alone checks and writes the folder
