"""The per-pair numbers behind ``explain`` (tinyld.explain), against independent routes: the one-step forecast
against the change a real SGD step makes (first order, float64), its halves against their closed-form property
(DPO's two halves cancel on the shared prefix), CHES against the hidden states summed by hand, the AUC against
counted pairs."""
import pytest
import torch

from tinyld import GPT, GPTConfig, TinyldError
from tinyld.data import Example, PairData, make_batch
from tinyld.evaluate import response_logprobs
from tinyld.explain import fixes, forecast_auc, pair_forecasts
from tinyld.preference import PreferenceData, Reference
from tinyld.train import TrainConfig, Trainer
from tinyld.updates import DPOUpdate, lm_rows


@pytest.fixture(scope="module")
def setup(world, wtok):
    torch.manual_seed(1)
    model = GPT(GPTConfig.preset("tiny", vocab_size=wtok.vocab_size)).double().eval()
    items = world.train_items()[:3]
    pairs = [Example(it.prompt, it.chosen, it.rejected) for it in items]
    pairs.append(Example(items[0].prompt, "alice likes soup .", "the old river runs near the tall tree ."))
    return model, wtok, pairs, pair_forecasts(model, wtok, pairs)


def test_log_probs_and_lengths(setup):
    model, tok, pairs, fc = setup
    for e, f in zip(pairs, fc):
        assert f["tokens_chosen"] == len(tok.encode(e.chosen)) + 1  # the response's tokens and the EOS
        lp = response_logprobs(model, tok, [e.prompt], [e.chosen])[0].item()
        assert f["logp_chosen"] == pytest.approx(lp) and f["logp_chosen_per_token"] == pytest.approx(
            lp / f["tokens_chosen"])


def test_the_one_step_forecast_is_the_change_a_real_step_makes(setup):
    """One plain-SGD DPO step on each pair alone, from the model (also the reference): the actual change of
    log π(y⁺) and log π(y⁻), divided by η, against the forecast per unit η (first order: close at a small η)."""
    model, tok, pairs, fc = setup
    eta = 1e-3
    for e, f in zip(pairs, fc):
        m = GPT(model.config).double()
        m.load_state_dict(model.state_dict())
        ref = Reference.compute(model, tok, [e])
        data = PreferenceData(tok, [e], 1, model.config.block_size, reference=ref)
        Trainer(m, data, TrainConfig(task="dpo", steps=1, optimizer="sgd", lr=eta, grad_clip=0.0, progress=False,
                                     pair_loss={"name": "sigmoid", "beta": 0.1})).run()
        with torch.no_grad():
            after = response_logprobs(m.eval(), tok, [e.prompt] * 2, [e.chosen, e.rejected])
        for k, name in enumerate(("chosen", "rejected")):
            actual = (after[k].item() - f[f"logp_{name}"]) / eta
            s = f[f"step_{name}"]
            assert s["total"] == pytest.approx(s["pull"] + s["push"] + s["shared"])
            assert actual == pytest.approx(s["total"], rel=2e-2, abs=1e-4), (e, name)


def test_dpo_halves_cancel_on_the_shared_prefix(setup):
    _, _, pairs, fc = setup
    for f in fc:  # sigmoid: c⁺ = c⁻ = β(1 − σ), so G⁺ + G⁻ = 0 where both see the same context and token
        assert abs(f["step_chosen"]["shared"]) < 1e-9 and abs(f["step_rejected"]["shared"]) < 1e-9
    assert fc[0]["step_chosen"]["pull"] > 0 > fc[0]["step_rejected"]["push"]  # y⁺ pulled up, y⁻ pushed down


def test_ches_from_the_hidden_states_by_hand(setup):
    model, tok, pairs, fc = setup
    for e, f in zip(pairs, fc):
        H = []
        for y in (e.chosen, e.rejected):
            b = make_batch(tok, [e.prompt], [y], model.config.block_size)
            with torch.no_grad():
                H.append(model.hidden(b.idx)[0][b.mask[0]])  # (|y|+1, C): the rows that predict y and the EOS
        hp, hm = H[0].sum(0), H[1].sum(0)
        assert f["ches"] == pytest.approx((hp @ hm - hp @ hp).item(), rel=1e-6)
        hp, hm = H[0].mean(0), H[1].mean(0)
        assert f["ches_norm"] == pytest.approx((hp @ hm - hp @ hp).item(), rel=1e-6)


def test_the_sft_forecast_is_the_change_a_real_sft_step_makes(setup):
    """One plain-SGD SFT step on y⁺ alone: the actual change of log π(y⁺) and log π(y⁻), divided by η, against
    the forecast per unit η that the fixes build on."""
    model, tok, pairs, fc = setup
    eta, e, f = 1e-5, pairs[3], fc[3]
    m = GPT(model.config).double()
    m.load_state_dict(model.state_dict())
    data = PairData(tok, [Example(e.prompt, e.chosen)], 1, model.config.block_size)
    Trainer(m, data, TrainConfig(task="sft", steps=1, optimizer="sgd", lr=eta, grad_clip=0.0, progress=False)).run()
    with torch.no_grad():
        after = response_logprobs(m.eval(), tok, [e.prompt] * 2, [e.chosen, e.rejected])
    actual = [(after[0].item() - f["logp_chosen"]) / eta, (after[1].item() - f["logp_rejected"]) / eta]
    assert actual == pytest.approx(f["sft_chosen"], rel=2e-2, abs=1e-4)
    assert f["sft_chosen"][0] > 0  # SFT on y⁺ lifts y⁺


def test_the_nll_fix_is_the_rpo_step(setup):
    """The forecast of DPO + α·NLL(y⁺)/n⁺ that ``fixes`` builds from DPO's forecast and SFT's, against RPO's own
    one-step forecast (the loss rpo of the family, its halves summed); the other rows from their definitions."""
    from tinyld.dynamics import halves

    model, tok, pairs, fc = setup
    block = model.config.block_size
    for e, f in zip(pairs, fc):
        rc, rr = (lm_rows(make_batch(tok, [e.prompt], [y], block)) for y in (e.chosen, e.rejected))
        observed = lm_rows(make_batch(tok, [e.prompt] * 2, [e.chosen, e.rejected], block))
        rpo = DPOUpdate(rc, rr, torch.tensor([f["logp_chosen"]]), torch.tensor([f["logp_rejected"]]), beta=0.1,
                        loss="rpo", alpha=0.5)
        want = sum(halves(model, rpo, observed, 1.0).values())  # (Δ y⁺, Δ y⁻) per unit η
        got = {x["fix"]: x for x in fixes([f], alpha=0.5)}
        assert [got["nll"]["chosen"], got["nll"]["rejected"]] == pytest.approx(want.tolist(), rel=1e-6, abs=1e-9)
        assert got["smaller step"]["chosen"] == pytest.approx(f["step_chosen"]["total"] / 10)
        assert got["extend"]["rejected"] == pytest.approx(f["sft_chosen"][1] + f["sft_rejected"][1])
        falls = f["step_chosen"]["total"] < 0
        assert got["dpo"]["fall"] == got["smaller step"]["fall"] == int(falls)
        if falls:  # at the α it names, the forecast fall of y⁺ is exactly made up
            a = got["nll"]["alpha_needed"][0]
            assert {x["fix"]: x for x in fixes([f], alpha=a)}["nll"]["chosen"] == pytest.approx(0, abs=1e-9)
    with pytest.raises(TinyldError, match="at least one pair"):
        fixes([])


def test_forecast_auc_counts_pairs():
    fc = [{"ches": c, "ches_norm": -c, "step_chosen": {"total": t}} for c, t in ((3, -1), (1, -2), (2, 1), (0, 2))]
    res = forecast_auc(fc, [True, True, False, False])
    # CHES ranks both fallen pairs (3, 1) against the others (2, 0): 3 > 2, 3 > 0, 1 < 2, 1 > 0 → 3 of 4
    assert res == {"fell": 2, "of": 4, "ches": 0.75, "ches_norm": 0.25, "step": 1.0}
    assert forecast_auc(fc, [True] * 4)["ches"] is None
    with pytest.raises(TinyldError, match="4 forecasts but 3 outcomes"):
        forecast_auc(fc, [True] * 3)
    with pytest.raises(TinyldError, match="needs a non-empty list of Examples"):
        pair_forecasts(None, None, [])


@pytest.fixture(scope="module")
def watched(setup):
    from tinyld.explain import watch_dpo

    model, tok, pairs, _ = setup
    return watch_dpo(model, tok, pairs, steps=3, lr=0.05, optimizer="sgd", batch_size=2, top=2)


def test_watch_dpo_starts_where_the_model_is_and_ends_where_the_trainer_left_it(setup, watched):
    model, tok, pairs, _ = setup
    r = watched
    assert r["steps"] == [0, 1, 2, 3] and len(r["pairs"]) == len(pairs)
    for k, e in enumerate(pairs):
        p = r["pairs"][k]
        before = response_logprobs(model, tok, [e.prompt] * 2, [e.chosen, e.rejected])
        assert (p["chosen"][0], p["rejected"][0]) == pytest.approx(before.tolist(), abs=1e-9)
        b = make_batch(tok, [e.prompt], [e.chosen], model.config.block_size)
        with torch.no_grad():
            star = model(b.idx).log_softmax(-1)[0][b.mask[0]].amax(-1).sum().item()  # teacher-forced argmax along y⁺
        assert p["star"][0] == pytest.approx(star, abs=1e-9)
        for masses in p["mass"]:
            for half in ("chosen", "rejected"):
                assert sum(masses[half].values()) == pytest.approx(1.0, abs=1e-9)
        assert r["fell"][k] == (p["chosen"][-1] < p["chosen"][0])
    m = GPT(model.config).double()  # the same run by hand: the last measurement is its model's
    m.load_state_dict(model.state_dict())
    data = PreferenceData(tok, pairs, 2, model.config.block_size, 0, reference=Reference.compute(model, tok, pairs))
    Trainer(m, data, TrainConfig(task="dpo", steps=3, optimizer="sgd", lr=0.05, grad_clip=0.0, progress=False,
                                 pair_loss={"name": "sigmoid", "beta": 0.1})).run()
    after = response_logprobs(m.eval(), tok, [e.prompt for e in pairs], [e.chosen for e in pairs])
    assert [p["chosen"][-1] for p in r["pairs"]] == pytest.approx(after.tolist(), abs=1e-9)
    assert r["mean"]["chosen"][-1] == pytest.approx(after.mean().item(), abs=1e-9)


def test_token_changes_add_up_and_name_the_tokens_that_gained(setup, watched):
    model, tok, pairs, _ = setup
    for k, e in enumerate(pairs):
        for side in ("chosen", "rejected"):
            toks = watched["tokens"][k][side]
            text = getattr(e, side)
            want = [tok.decode([i]) for i in tok.encode(text) + [tok.eos_id]]  # the response's tokens, then the EOS
            assert [t["token"] for t in toks] == want
            curve = watched["pairs"][k][side]
            assert sum(t["dlogp"] for t in toks) == pytest.approx(curve[-1] - curve[0], abs=1e-9)
            for t in toks:
                gains = [g for _, g in t["gained"]]
                assert len(gains) == 2 and gains[0] >= gains[1]


def test_the_explain_command_on_a_chat_model(tmp_path, capsys):
    """`explain --pairs FILE --model M.gguf`: the forecasts and the watched run are written, the table names every
    pair, and the verdict counts the pairs whose y⁺ fell."""
    import json

    from tinyld.__main__ import main

    assert main(_explain_files(tmp_path, steps=2)) == 0
    out = capsys.readouterr().out
    res = json.loads((tmp_path / "o" / "explain.json").read_text())
    assert len(res["forecasts"]) == 3 and res["run"]["steps"] == [0, 1, 2]
    assert res["verdict"]["of"] == 3 and res["verdict"]["fell"] == sum(res["run"]["fell"])
    assert res["pairs"][0]["prompt"].startswith("<|im_start|>system") and res["config"]["lr"] == 5e-6
    assert "y⁺ fell in" in out and (tmp_path / "o" / "claims.txt").read_text().count("\n") == 3 + 2 + 6
    page = (tmp_path / "o" / "report.html").read_text()
    from html.parser import HTMLParser

    class Tags(HTMLParser):
        def __init__(self):
            super().__init__()
            self.seen, self.urls = [], []

        def handle_starttag(self, tag, attrs):
            self.seen.append((tag, dict(attrs)))
            self.urls += [v for k, v in attrs if k in ("src", "href") and v and not v.startswith("#")]
    t = Tags()
    t.feed(page)
    ids = {a.get("id") for _, a in t.seen}
    assert {"summary", "verdict", "fixes", "pair-0", "pair-1", "pair-2"} <= ids and "stopped" not in ids
    assert sum(tag == "svg" for tag, _ in t.seen) == 4 and sum(tag == "polyline" for tag, _ in t.seen) == 12
    assert t.urls == [] and "<script" not in page  # self-contained: nothing fetched, nothing run
    assert "<code>Name a fruit.</code>" in page and "im_start" not in page.split('id="pair-0"')[1].split("</p>")[0]
    tokens = [a for tag, a in t.seen if tag == "span" and a.get("class") == "tok"]
    n_tok = sum(len(res["run"]["tokens"][k][s]) for k in range(3) for s in ("chosen", "rejected"))
    assert len(tokens) == n_tok and all(a["title"].startswith("Δ log π = ") for a in tokens)


def _explain_files(tmp_path, steps: int = 3) -> list[str]:
    """explain's command line on three chat pairs and a small chat GGUF model, written into ``tmp_path``."""
    import json

    pytest.importorskip("gguf")
    from test_real_llm_runs import chat_gguf_file

    model = chat_gguf_file(tmp_path / "chat.gguf")
    pairs = tmp_path / "pairs.jsonl"
    rows = [("Name a fruit.", "An apple.", "A chair."), ("Name a colour.", "Blue.", "Seven."),
            ("Name a pet.", "A cat.", "A cloud.")]
    pairs.write_text("".join(json.dumps({"prompt": p, "chosen": c, "rejected": r}) + "\n" for p, c, r in rows))
    return ["explain", "--pairs", str(pairs), "--model", str(model), "--steps", str(steps), "--batch-size", "2",
            "--threads", "1", "--out", str(tmp_path / "o")]


def test_ctrl_c_keeps_what_was_measured(tmp_path, monkeypatch, capsys, request):
    """Ctrl-C during the DPO run: the command stops after the step under way (exit 130), and the page and the JSON
    hold the forecasts and the steps measured, saying how far it got; --resume keeps the finished forecasts and
    runs the whole DPO run again. Ctrl-C while forecasting keeps the pairs forecast so far."""
    import json
    import os
    import signal

    import tinyld.explain as ex
    from tinyld.__main__ import main

    old = signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C as an interactive shell delivers it (a
    request.addfinalizer(lambda: signal.signal(signal.SIGINT, old))  # shell's background job starts with it ignored)
    argv = _explain_files(tmp_path)
    measure, calls = ex.PairBatch.measure, []

    def measure_then_ctrl_c(self, model, full=False):  # the measurement after step 1 is when Ctrl-C comes
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return measure(self, model, full)
    monkeypatch.setattr(ex.PairBatch, "measure", measure_then_ctrl_c)
    assert main(argv) == 130
    res = json.loads((tmp_path / "o" / "explain.json").read_text())
    assert res["stopped"] == "Ctrl-C after DPO step 1 of 3" and res["run"]["steps"] == [0, 1]
    assert len(res["forecasts"]) == 3 and res["verdict"]["of"] == 3
    page = (tmp_path / "o" / "report.html").read_text()
    assert 'id="stopped"' in page and "after DPO step 1 of 3" in page and page.count("<svg") == 4
    assert "Continue with" in capsys.readouterr().err
    forecast = ex.pair_forecasts
    monkeypatch.setattr(ex.PairBatch, "measure", measure)
    monkeypatch.setattr("tinyld.experiments.explain.command.pair_forecasts", lambda *a, **k: pytest.fail("again"))
    assert main(argv + ["--resume"]) == 0  # the forecasts come from the finished part
    res2 = json.loads((tmp_path / "o" / "explain.json").read_text())
    assert res2["stopped"] is None and res2["run"]["steps"] == [0, 1, 2, 3] and res2["forecasts"] == res["forecasts"]

    one, forecast_calls = ex.pair_forecast, []

    def forecast_then_ctrl_c(*args):  # Ctrl-C comes while the second pair is forecast
        forecast_calls.append(1)
        if len(forecast_calls) == 2:
            raise KeyboardInterrupt
        return one(*args)
    monkeypatch.setattr("tinyld.experiments.explain.command.pair_forecasts", forecast)
    monkeypatch.setattr(ex, "pair_forecast", forecast_then_ctrl_c)
    assert main(argv + ["--overwrite"]) == 130
    res = json.loads((tmp_path / "o" / "explain.json").read_text())
    assert res["stopped"].startswith("Ctrl-C while forecasting: 1 of 3 pairs") and res["run"] is None
    assert len(res["forecasts"]) == 1 and res["verdict"] is None
    page = (tmp_path / "o" / "report.html").read_text()
    assert 'id="pair-0"' in page and 'id="pair-1"' not in page and "The DPO run did not reach" in page


def test_explain_on_a_world_model(tmp_path, capsys):
    """`explain --model tiny` on the world's own pairs: a base model pretrained on the world, then the same report."""
    import json

    from tinyld.__main__ import main
    from tinyld.probes import ProbeSet
    from tinyld.world import World

    pairs = tmp_path / "world_pairs.jsonl"
    ProbeSet.from_world(World(0)).subset(3, 0, ()).save(pairs)
    assert main(["explain", "--pairs", str(pairs), "--model", "tiny", "--pretrain-steps", "20", "--steps", "2",
                 "--threads", "1", "--out", str(tmp_path / "o")]) == 0
    res = json.loads((tmp_path / "o" / "explain.json").read_text())
    assert res["config"]["lr"] == 1e-3 and res["run"]["steps"] == [0, 1, 2] and len(res["forecasts"]) == 3
    assert res["pairs"][0]["prompt"].startswith("question :") and (tmp_path / "o" / "report.html").exists()


@pytest.mark.parametrize("case, says", [
    ("bad line", "pairs.jsonl:2: missing 'rejected'"),
    ("not a model", "is a file but not a GGUF file"),
    ("longer than the context", "pairs.jsonl:1"),
    ("identical", "pairs.jsonl:1: chosen and rejected are the same text"),
])
def test_explain_refuses_bad_input_in_one_line_before_any_work(case, says, tmp_path, capsys):
    import json

    pytest.importorskip("gguf")
    from test_real_llm_runs import chat_gguf_file

    from tinyld.__main__ import main

    row = {"prompt": "Name a fruit.", "chosen": "An apple.", "rejected": "A chair."}
    lines = {"bad line": [row, {"prompt": "x", "chosen": "y"}], "not a model": [row],
             "longer than the context": [{**row, "chosen": "apple " * 600}],
             "identical": [{**row, "rejected": row["chosen"]}]}[case]
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for r in lines))
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    model = notes if case == "not a model" else chat_gguf_file(tmp_path / "chat.gguf")
    assert main(["explain", "--pairs", str(pairs), "--model", str(model), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert says in err and err.count("\n") == 1 and "Traceback" not in err, err
    assert not (tmp_path / "o").exists()
