"""The reasoning task (tinyld.reasoning) and the forecast experiment's pieces, against hand-made answers, the
arithmetic itself, numpy's least squares and scikit-learn's AUC."""
import contextlib
import json
import re

import numpy as np
import pytest
import torch

from tinyld import TinyldError
from tinyld.__main__ import main
from tinyld.experiments.forecasting import (ForecastConfig, auc, edit_distance, judge_perturb, ols, pm_curve, points_of,
                                            run)
from tinyld.reasoning import N_FORMS, Arithmetic, Problem, final_answer
from tinyld.world import World

P = Problem("ana", "coins", 3, 4, 2)  # 3 + 4 − 2 = 5


def test_grader_on_hand_made_answers():
    good = ["3 plus 4 is 7 . 7 minus 2 is 5 . the answer is 5 .",
            "take 2 from 3 to get 1 . 4 plus 1 is 5 . so ana has 5 coins .",
            "the answer is 5 .",  # only the final answer is graded
            "3 plus 4 is 9 . 9 minus 2 is 7 . the answer is 5 ."]  # wrong steps, right answer: graded correct
    bad = ["3 plus 4 is 7 . 7 minus 2 is 5 . the answer is 6 .",
           "3 plus 4 is 7 . 7 minus 2 is 5 .",  # no final sentence
           "3 plus 4 is 7 . 7 minus 2 is 5 . the answer is five .",
           "the answer is 5 . 3 plus 4 is 7 .",  # the answer must come last
           "the answer is 5",  # unfinished sentence
           "the answer is 5 . and then some",  # words after the final sentence
           "so ana has 5 coins and more .", "", "the answer is 5 5 ."]
    assert [Arithmetic.grade(P, t) for t in good] == [True] * len(good)
    assert [Arithmetic.grade(P, t) for t in bad] == [False] * len(bad)
    assert final_answer("so bob has 12 cups .") == 12 and final_answer(None) is None
    with pytest.raises(TinyldError, match="Problem"):
        Arithmetic.grade("3 4 2", "the answer is 5 .")


def _check_steps(p: Problem, text: str) -> None:
    """Every step of a written solution is true arithmetic, reads its operands from the question or the step
    before, and the solution ends on a + b − c."""
    steps = [s.strip() for s in text.split(" .") if s.strip()]
    assert len(steps) == 3
    seen = {p.a, p.b, p.c}
    for s in steps[:2]:
        m = re.fullmatch(r"(\d+) plus (\d+) is (\d+)", s)
        if m:
            x, y, z = map(int, m.groups())
            assert x + y == z
        else:
            m = re.fullmatch(r"(\d+) minus (\d+) is (\d+)", s) or re.fullmatch(r"take (\d+) from (\d+) to get (\d+)", s)
            assert m, s
            x, y, z = map(int, m.groups())
            if s.startswith("take"):
                x, y = y, x
            assert x - y == z
        assert {x, y} <= seen, (s, seen)
        seen.add(z)
    assert final_answer(text) == 5 == p.a + p.b - p.c


def test_sixteen_distinct_valid_forms():
    texts = [P.solution(f) for f in range(N_FORMS)]
    assert N_FORMS == 16 and len(set(texts)) == 16
    for t in texts:
        _check_steps(P, t)
        assert Arithmetic.grade(P, t)
    assert texts[0] == "3 plus 4 is 7 . 7 minus 2 is 5 . the answer is 5 ."
    with pytest.raises(TinyldError):
        P.solution(16)


def test_world_splits_and_data():
    w = Arithmetic(0)
    test, pre, pool = set(w.test_triples), set(w.pretrain_triples), set(w.pool_triples)
    assert not (test & pre or test & pool or pre & pool)
    assert all(a >= 1 and b >= 1 and 1 <= c <= a and a + b <= w.top for a, b, c in test | pre | pool)
    docs = " || ".join(w.pretrain_docs())
    for p in w.test_problems() + w.pool()[:50]:  # no test or training question is in the pretraining text
        assert p.question() not in docs and p.question(1) not in docs
    assert "7 minus 2 is 5" in docs and "3 plus 4 is 7" in docs  # the facts are
    pool_list = w.pool()
    assert len(pool_list) == len(set(pool_list)) > 2 * len(w.pool_triples)
    assert pool_list == Arithmetic(0).pool() != Arithmetic(1).pool()  # deterministic per seed
    tok = w.tokenizer()
    ex = w.train_examples(pool_list[:20])
    for e, p in zip(ex, pool_list):
        assert tok.decode(tok.encode(f"{e.prompt} {e.chosen}")) == f"{e.prompt} {e.chosen}"
        assert Arithmetic.grade(p, e.chosen)
    assert len({e.meta["form"] for e in w.train_examples(pool_list[:100])}) > 8  # forms drawn at random
    with pytest.raises(TinyldError):
        Arithmetic(0, top=2)


def test_perturbations():
    w = Arithmetic(0)
    for form in (0, 9):
        d = w.perturbed(P, form)
        assert d["reworded"] == (P.prompt(1), "") and P.prompt(1) != P.prompt(0)
        prompt, opening = d["opening"]
        assert prompt == P.prompt(0)
        ref_first = P.steps(form)[0]
        assert opening != ref_first and ("plus" in opening) != ("plus" in ref_first)  # the other step order


def test_least_squares_against_numpy():
    rng = np.random.default_rng(0)
    x = rng.random(30)
    y = 0.5 * x + 0.1 * rng.random(30)
    fit = ols(x.tolist(), y.tolist())
    slope, intercept = np.polyfit(x, y, 1)
    r2 = np.corrcoef(x, y)[0, 1] ** 2
    assert fit["slope"] == pytest.approx(slope) and fit["intercept"] == pytest.approx(intercept)
    assert fit["r2"] == pytest.approx(r2)
    assert ols([1.0, 1.0, 1.0], [0.0, 1.0, 2.0])["r2"] == 0.0  # x does not vary: nothing explained


def test_auc_against_sklearn_and_edit_distance_by_hand():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(1)
    s = rng.integers(0, 5, 40).astype(float)  # ties included
    pos = (rng.random(40) < 0.4).tolist()
    assert auc(s.tolist(), pos) == pytest.approx(metrics.roc_auc_score(pos, s))
    assert auc([1.0, 2.0], [True, True]) is None
    assert edit_distance([1, 2, 3], [1, 2, 3]) == 0
    assert edit_distance([1, 2, 3], [1, 3]) == 1
    assert edit_distance([1, 2, 3], [4, 5]) == 3
    assert edit_distance([], [7, 7]) == 2
    assert edit_distance(list("kitten"), list("sitting")) == 3


def test_pm_curve_and_points_by_hand():
    # one run, 3 checkpoints, 2 examples; τ = −2.3 → memorized below perplexity ≈ 1.1055
    points = [{"acc": [0.4, 1.0], "ppl": [2.0, 1.05], "test_acc": 0.3},
              {"acc": [0.8, 1.0], "ppl": [1.5, 1.01], "test_acc": 0.4},
              {"acc": [1.0, 1.0], "ppl": [1.02, 1.0], "test_acc": 0.5}]
    # example 0: 0.4, 0.8, min(0.8, 1.0) = 0.8 · example 1: memorized from the start: 0
    assert pm_curve(points, -2.3) == pytest.approx([0.2, 0.4, 0.4])
    p = points_of({"runs": [{"data": 2, "points": points}]}, -2.3)
    assert p["train"] == pytest.approx([0.7, 0.9, 1.0]) and p["test"] == [0.3, 0.4, 0.5]


def test_perturbation_judge_by_hand():
    cfg = ForecastConfig(seeds=[0])
    points = [{"acc": [1.0, 1.0, 0.2], "ppl": [3.0, 1.0, 3.0], "test_acc": 0.5}]  # PM: 1.0, 0 (memorized), 0.2
    run_ = {"points": points, "perturbed": {"reworded": [0.8, 0.2, 0.0], "opening": [1.0, 0.0, 0.0]}}
    j = judge_perturb(cfg, [{"seed": 0, "runs": [run_]}])
    m = j["per_seed"][0]
    # example 2 is answered badly (0.2 < 0.6) and is left out; example 0 is high-PM, example 1 low-PM
    assert m["reworded"]["high"] == {"change": pytest.approx(-0.2), "n": 1}
    assert m["reworded"]["low"] == {"change": pytest.approx(-0.8), "n": 1}
    assert [c["verdict"] for c in j["claims"]] == ["held", "held"]


def test_bad_config_is_refused():
    for kw, msg in [({"experiment": "nope"}, "experiment"), ({"seeds": [0, 0]}, "repeats"),
                    ({"data": [0]}, "data"), ({"lrs": [-1.0]}, "lrs"), ({"seeds": 3}, "list"),
                    ({"temperature": 0}, "temperature"), ({"epochs": []}, "epochs"),
                    ({"temperature": 1e-300}, "temperature"), ({"lrs": [1e300]}, "lrs"), ({"taus": 5}, "taus"),
                    ({"lrs": b"ab"}, "lrs"), ({"epochs": [10 ** 9]}, "epochs"), ({"taus": [-2.0, -2.0]}, "repeats")]:
        with pytest.raises(TinyldError, match=msg):
            ForecastConfig(**kw)


def test_sizes_beyond_the_pool_are_refused_before_any_work(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    pool = min(len(Arithmetic(s).pool()) for s in (0, 1))
    for kw, msg in [({"data": [pool + 1]}, "pool has"), ({"experiment": "curate", "curate_add": pool}, "curation")]:
        with pytest.raises(TinyldError, match=msg):
            run(ForecastConfig(seeds=[0, 1], out=str(tmp_path / "out"), **kw))
    assert not list((tmp_path / "tinyld_out" / "cache").glob("*.pt"))  # nothing was pretrained


def test_cli_bad_input_is_one_line(capsys, tmp_path):
    assert main(["forecast", "--experiment", "nope", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and err.count("\n") == 1


def test_end_to_end_tiny(tmp_path, monkeypatch):
    """The whole command on 5-step base models: it writes JSON that strict readers accept, claims and figures."""
    pytest.importorskip("matplotlib")
    monkeypatch.chdir(tmp_path)  # the base models are cached in ./tinyld_out/cache
    monkeypatch.setattr("tinyld.pretrained.num_threads", lambda n: contextlib.nullcontext())
    cfg = ForecastConfig(experiment="all", seeds=[0], lrs=[1e-2], epochs=[1], data=[8], measured=8, samples=1,
                         taus=[-2.3, -1.0], curate_start=4, curate_add=4, curate_rounds=1, curate_epochs=1,
                         ches_steps=1, pretrain_steps=5, ches_pretrain_steps=5, out=str(tmp_path / "out"), threads=1)
    monkeypatch.setattr("tinyld.experiments.forecasting.ches.CHES_KINDS", ("rejected", "hum"))
    with torch.random.fork_rng():
        res = run(cfg)
    data = json.loads((tmp_path / "out" / "forecast.json").read_text())
    assert set(data) >= {"sweep", "perturb", "curate", "ches", "figures", "config"}
    assert len(data["sweep"]["seeds"][0]["runs"]) == 1 and len(data["sweep"]["seeds"][0]["runs"][0]["points"]) == 1
    assert data["curate"]["seeds"][0]["iid"]["size"] == [4, 8] == data["curate"]["seeds"][0]["curated"]["size"]
    assert len(data["ches"]["seeds"][0]["pairs"]) == 2 * len(World(0).train_items())  # every prompt × 2 kinds
    for f in res["figures"].values():
        assert (tmp_path / "out" / f.split("/")[-1]).exists()
    assert "claim" in (tmp_path / "out" / "claims.txt").read_text()
