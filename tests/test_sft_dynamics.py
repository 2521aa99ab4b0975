"""The SFT-dynamics experiment (tinyld.experiments.sft_dynamics), checked against independent oracles: hand-made
curves with known verdicts, a hand replay of the attribution's SGD run with gradients dotted by hand, direct
log-probabilities of a Hugging Face GPT-2 loaded from a folder, and the claims' rules recomputed from the curves."""
import contextlib
import copy
import csv
import dataclasses
import json
import math

import pytest
import torch

from tinyld import GPT, GPTConfig, TinyldError
from tinyld.data import PairData, make_batch
from tinyld.dynamics import sequence_change
from tinyld.evaluate import greedy_answers, response_logprobs
from tinyld.experiments.sft_dynamics import SFTDynamicsConfig, attribution, claims_table, judge, run
from tinyld.kernel import predict
from tinyld.probes import Probe, ProbeSet
from tinyld.updates import SFTUpdate, lm_rows
from tinyld.world import World

try:
    import matplotlib  # noqa: F401
    HAVE_MPL = True
except ImportError:
    HAVE_MPL = False


# ================================================================================================== judge
# measured steps are uneven on purpose: peak_epoch must come from measured_steps / steps_per_epoch, not the index
STEPS, SPE = [0, 2, 5, 10, 15], 5
UP = [-30.0, -20.0, -10.0, -5.0, -2.0]  # rises steadily
BELL_A = [-30.0, -25.0, -22.0, -26.0, -31.0]  # peak inside (index 2, epoch 1): rise 8, drop 9
BELL_B = [-10.0, -6.5, -8.0, -9.0, -9.5]  # peak at index 1 (epoch 0.4), ends above its start: still a bell
LAST_MAX = [-30.0, -28.0, -29.0, -27.0, -26.0]  # highest at the last point: not a bell
FIRST_MAX = [-5.0, -7.0, -6.0, -8.0, -9.0]  # highest at step 0: not a bell
FLAT = [-4.0, -4.0, -4.0, -4.0, -4.0]  # no strict peak: not a bell


def _fake_run(seed):
    """A run dict with only the keys judge reads, curves designed so that the verdicts are known."""
    curves = {
        "chosen": [v + seed for v in UP],  # rises in every seed → held
        # a bell in seeds 0 and 1, monotone in seed 2 → mixed (2/3)
        "rejected": [BELL_A, BELL_B, UP][seed],
        # max at the last point, at step 0, flat: never a bell → not held
        "gpts_chosen": [LAST_MAX, FIRST_MAX, FLAT][seed],
        "init": [BELL_A, BELL_A, BELL_B][seed],  # bells everywhere → held
        # test_chosen rises a little (+1 in seeds 0, 1; +20 in seed 2)
        "test_chosen": ([[-40.0, -39.8, -39.5, -39.2, -39.0]] * 2 + [[-60.0, -50.0, -45.0, -42.0, -40.0]])[seed],
        # other_chosen rises by +5 in every seed (ends *below* test_chosen in seed 0: the claim compares changes)
        "other_chosen": [[-50.0, -48.0, -47.0, -46.0, -45.0], [-20.0, -18.0, -17.0, -16.0, -15.0],
                         [-20.0, -18.0, -17.0, -16.0, -15.0]][seed],
        "urnd_chosen": [[-20.0, -25.0, -22.0, -21.0, -20.0],  # ends where it started: did not fall
                        [-20.0, -21.0, -22.0, -23.0, -24.0], [-20.0, -19.0, -22.0, -23.0, -24.0]][seed],
        # rises first but ends below its start in every seed → falls: held
        "random_tokens": [-60.0, -58.0, -62.0, -65.0, -70.0],
        "star": [-3.0, -3.5, -4.0, -4.5, -5.0],  # falls → "star rises" not held
    }
    return {"seed": seed, "curves": {"train": curves, "test": {k: [] for k in curves}},
            "measured_steps": list(STEPS), "steps_per_epoch": SPE}


EXPECTED_VERDICTS = {
    "chosen rises": "held",
    "rejected rises then falls": "mixed (2/3)",
    "gpts_chosen rises then falls": "not held",
    "init rises then falls": "held",
    "test_chosen rises then falls": "not held",
    "other_chosen rises": "held",
    "other_chosen ends above test_chosen": "mixed (2/3)",
    "urnd_chosen falls": "mixed (2/3)",
    "random_tokens falls": "held",
    "star rises": "not held",
}


def test_judge_verdicts_on_hand_made_curves():
    claims = judge([_fake_run(s) for s in range(3)])
    by = {c["claim"]: c for c in claims}
    assert len(by) == len(claims)  # one entry per claim
    # families absent from the runs (gpts_rejected, rnd, …) make no claim
    assert set(by) == set(EXPECTED_VERDICTS)
    for name, verdict in EXPECTED_VERDICTS.items():
        c = by[name]
        assert c["verdict"] == verdict, name
        assert c["of"] == 3 and len(c["per_seed"]) == 3
        assert c["held"] == {"held": 3, "not held": 0}.get(verdict, 2), name
        assert c["held"] == sum(m["held"] for m in c["per_seed"])
    assert claims[0]["claim"] == "chosen rises" and claims[-1]["claim"] == "star rises"
    assert [m["held"] for m in by["rejected rises then falls"]["per_seed"]] == [True, True, False]
    assert [m["held"] for m in by["gpts_chosen rises then falls"]["per_seed"]] == [False, False, False]
    assert [m["held"] for m in by["other_chosen ends above test_chosen"]["per_seed"]] == [True, True, False]
    assert [m["held"] for m in by["urnd_chosen falls"]["per_seed"]] == [False, True, True]


def test_judge_numbers_by_hand():
    by = {c["claim"]: c for c in judge([_fake_run(s) for s in range(3)])}
    a, b, mono = by["rejected rises then falls"]["per_seed"]
    # BELL_A: max -22 at index 2 → measured step 5 → epoch 1.0; rise -22 − (−30) = 8; drop −22 − (−31) = 9
    assert a["peak_epoch"] == pytest.approx(1.0) and a["rise"] == pytest.approx(8.0)
    assert a["drop"] == pytest.approx(9.0)
    # BELL_B: max -6.5 at index 1 → measured step 2 → epoch 0.4; rise 3.5; drop 3.0
    assert b["peak_epoch"] == pytest.approx(0.4) and b["rise"] == pytest.approx(3.5)
    assert b["drop"] == pytest.approx(3.0)
    # UP: its max is the last point (epoch 3), drop 0, not a bell
    assert mono["peak_epoch"] == pytest.approx(3.0) and mono["drop"] == pytest.approx(0.0) and not mono["held"]
    last, first, flat = by["gpts_chosen rises then falls"]["per_seed"]
    assert last["peak_epoch"] == pytest.approx(3.0) and first["peak_epoch"] == pytest.approx(0.0)
    assert first["rise"] == pytest.approx(0.0) and first["drop"] == pytest.approx(4.0)
    assert flat["peak_epoch"] == pytest.approx(0.0) and flat["rise"] == flat["drop"] == 0.0 and not flat["held"]
    assert [m["change"] for m in by["chosen rises"]["per_seed"]] == pytest.approx([28.0] * 3)
    assert [m["change"] for m in by["star rises"]["per_seed"]] == pytest.approx([-2.0] * 3)
    assert [m["change"] for m in by["random_tokens falls"]["per_seed"]] == pytest.approx([-10.0] * 3)
    above = by["other_chosen ends above test_chosen"]["per_seed"]
    assert [m["other_change"] for m in above] == pytest.approx([5.0] * 3)
    assert [m["test_change"] for m in above] == pytest.approx([1.0, 1.0, 20.0])


def test_judge_single_family_edge_cases():
    """Two runs, two measurements each: no bell claim is judged on two points; ties are not rises."""
    runs = [{"curves": {"train": {"chosen": [-3.0, -3.0], "star": [-2.0, -1.0], "rejected": [-1.0, -2.0]}},
             "measured_steps": [0, 4], "steps_per_epoch": 4} for _ in range(2)]
    by = {c["claim"]: c for c in judge(runs)}
    assert set(by) == {"chosen rises", "star rises"}  # two points cannot show a rise and a fall: no bell claim
    assert by["chosen rises"]["verdict"] == "not held"  # equal ends: did not rise
    assert by["star rises"]["verdict"] == "held"


def test_judge_family_measured_on_test_prompts_only():
    runs = [_fake_run(s) for s in range(3)]
    for r in runs:
        r["curves"]["train"]["init"] = []  # tracker.curve("init", "train") when no training probe has an init
    by = {c["claim"]: c for c in judge(runs)}
    assert by["chosen rises"]["verdict"] == "held"
    assert "init rises then falls" not in by or by["init rises then falls"]["held"] == 0


def test_claims_table_names_every_claim_and_verdict():
    claims = judge([_fake_run(s) for s in range(3)])
    text = claims_table(claims, "my title")
    lines = text.splitlines()
    assert lines[0] == "my title" and len(lines) == 2 + len(claims)
    for c in claims:
        line = next(ln for ln in lines if ln.strip().startswith(c["claim"] + " "))
        rest = line.strip()[len(c["claim"]):].strip()
        assert rest.startswith(c["verdict"]), (c["claim"], line)
        assert rest.count(" | ") == 2  # three seeds
    bell = next(ln for ln in lines if ln.strip().startswith("rejected rises then falls"))
    assert "peak +8.0 @ep1, drop 9.0" in bell and "peak +3.5 @ep0.4, drop 3.0" in bell
    assert "+28.0" in next(ln for ln in lines if ln.strip().startswith("chosen rises"))


# ================================================================================================== attribution
def _logp(model, tok, prompts, responses):
    """log π(y|x) summed over the response (EOS included), straight from the logits: (N,) with graph."""
    b = make_batch(tok, prompts, responses, model.config.block_size)
    lp = torch.log_softmax(model(b.idx).double(), dim=-1)  # (N, T, V)
    mask = b.targets != -100
    at = lp.gather(-1, b.targets.clamp_min(0)[..., None])[..., 0]  # (N, T)
    return (at * mask).sum(-1)


def _grad(model, scalar):
    params = [p for p in model.parameters()]
    gs = torch.autograd.grad(scalar, params, allow_unused=True)
    return torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(gs, params)])


@pytest.fixture(scope="module")
def attr_setup():
    world = World(0, mode="hard")
    tok = world.tokenizer()
    torch.manual_seed(0)
    model = GPT(GPTConfig.preset("tiny", vocab_size=tok.vocab_size)).double()
    ps = ProbeSet.from_world(world)
    cfg = SFTDynamicsConfig(epochs=1, batch_size=8, attr_lr=1e-4, attr_prompts=2)
    snapshot = {k: v.clone() for k, v in model.state_dict().items()}
    res = attribution(cfg, 0, model, tok, ps)
    return world, tok, model, ps, cfg, snapshot, res


def test_attribution_matches_a_hand_replay_of_sgd(attr_setup):
    world, tok, model, ps, cfg, snapshot, res = attr_setup
    # the model passed in is untouched
    for k, v in model.state_dict().items():
        assert torch.equal(v, snapshot[k]), k

    train_items = world.train_items()
    # observed: for the first two training prompts u, y_{j≠u}⁺ (another training prompt's answer) and y_u⁺
    obs = []
    for it in train_items[:2]:
        obs += [(it.prompt, world.probes(it)["other_chosen"]), (it.prompt, it.chosen)]
    assert [tuple(o) for o in res["observed"]] == obs
    obs_p, obs_y = [o[0] for o in obs], [o[1] for o in obs]
    n_obs, lr = len(obs), cfg.attr_lr

    examples = ps.examples("train")
    assert [(e.prompt, e.chosen) for e in examples] == [(it.prompt, it.chosen) for it in train_items]
    data = PairData(tok, examples, 8, 64, 0)
    steps = 40 // 8  # one epoch
    assert res["steps"] == steps and res["family"] == "other_chosen" and res["lr"] == lr

    m = copy.deepcopy(model)
    m.train()
    with torch.no_grad():
        start = _logp(m, tok, obs_p, obs_y)
    per_example = torch.zeros(len(examples), n_obs, dtype=torch.float64)
    engine_total = torch.zeros(n_obs, dtype=torch.float64)
    for s in range(steps):
        idx = data.indices(s)
        batch = data.batch(s)
        assert len(idx) == 8
        # first order: Δ log π(o) ≈ ∇log π(o) · Δθ with Δθ = −η ∇L, L = −(1/B) Σ_j log π(y_j|x_j)
        g_obs = torch.stack([_grad(m, _logp(m, tok, [p], [y])[0]) for p, y in obs])  # (n_obs, P)
        for j in idx:
            g_j = _grad(m, -_logp(m, tok, [examples[j].prompt], [examples[j].chosen])[0] / len(idx))  # (P,)
            per_example[j] += -lr * (g_obs @ g_j)
        # the batch-level prediction of the engine, one call for the whole batch
        rows = lm_rows(make_batch(tok, obs_p, obs_y, 64))
        batch_pred = sequence_change(rows, predict(m, rows, SFTUpdate(lm_rows(batch)), lr)).double()
        engine_total += batch_pred
        # the SGD step by hand: mean over the batch of −log π(y|x) summed over the response, no clipping
        lp = torch.log_softmax(m(batch.idx).double(), -1)
        mask = batch.targets != -100
        seq = (lp.gather(-1, batch.targets.clamp_min(0)[..., None])[..., 0] * mask).sum(-1)  # (B,)
        loss = -seq.mean()
        m.zero_grad(set_to_none=True)
        loss.backward()
        with torch.no_grad():
            for p in m.parameters():
                p -= lr * p.grad
        m.zero_grad(set_to_none=True)
    with torch.no_grad():
        actual = _logp(m, tok, obs_p, obs_y) - start  # (n_obs,)

    got = torch.tensor(res["per_example"], dtype=torch.float64)
    assert got.shape == (len(examples), n_obs)
    scale = per_example.abs().max().item()
    assert scale > 0
    # (a) the whole per-example matrix, and its column sums = the engine's batch-level predictions
    assert torch.allclose(got, per_example, rtol=1e-6, atol=1e-9 * scale)
    assert torch.allclose(got.sum(0), engine_total, rtol=1e-6, atol=1e-9 * scale)
    assert torch.allclose(per_example.sum(0), engine_total, rtol=1e-6, atol=1e-9 * scale)  # the oracles agree
    # every example appears in exactly one batch of the epoch, so every row carries a prediction
    assert (got.abs().sum(1) > 0).all()

    # (b) actual changes, (c) the split into from_j + from_u + from_rest
    prompt_index = {it.prompt: k for k, it in enumerate(train_items)}
    chosen_index = {it.chosen: k for k, it in enumerate(train_items)}
    assert len(res["probes"]) == 2
    for k, pr in enumerate(res["probes"]):
        o = 2 * k
        assert (pr["prompt"], pr["response"]) == obs[o]
        u, j = prompt_index[obs_p[o]], chosen_index[obs_y[o]]
        assert (pr["u"], pr["j"]) == (u, j) and u != j
        assert pr["actual"] == pytest.approx(actual[o].item(), rel=1e-6, abs=1e-12)
        assert pr["chosen_actual"] == pytest.approx(actual[o + 1].item(), rel=1e-6, abs=1e-12)
        assert pr["predicted"] == pytest.approx(per_example[:, o].sum().item(), rel=1e-6, abs=1e-9 * scale)
        assert pr["chosen_predicted"] == pytest.approx(per_example[:, o + 1].sum().item(), rel=1e-6,
                                                       abs=1e-9 * scale)
        assert pr["from_j"] == pytest.approx(per_example[j, o].item(), rel=1e-6, abs=1e-9 * scale)
        assert pr["from_u"] == pytest.approx(per_example[u, o].item(), rel=1e-6, abs=1e-9 * scale)
        rest = sum(per_example[r, o].item() for r in range(len(examples)) if r not in (j, u))
        assert pr["from_rest"] == pytest.approx(rest, rel=1e-6, abs=1e-9 * scale)
        assert pr["from_j"] + pr["from_u"] + pr["from_rest"] == pytest.approx(pr["predicted"], rel=1e-9,
                                                                              abs=1e-12 * scale)
        assert pr["top_example"] == int(per_example[:, o].argmax())
        assert pr["top_is_j"] == (pr["top_example"] == j)
    # at lr 1e-4 the first-order prediction is close to the real change (a sanity check on the whole run)
    assert (per_example.sum(0) - actual).norm() <= 0.05 * actual.norm()
    o = slice(0, None, 2)  # the y_{j≠u}⁺ columns
    assert res["final_rel_err"] == pytest.approx(((actual[o] - per_example.sum(0)[o]).norm() / actual[o].norm()).item(),
                                                 rel=1e-4, abs=1e-9)
    assert len(res["curve_actual"]) == len(res["curve_predicted"]) == steps + 1
    assert res["curve_actual"][0] == 0.0 and res["curve_predicted"][0] == 0.0
    assert res["curve_actual"][-1] == pytest.approx(actual[0::2].mean().item(), rel=1e-6, abs=1e-12)


def test_attribution_from_rest_without_other_chosen(attr_setup):
    world, tok, model, _, _, _, _ = attr_setup
    full = ProbeSet.from_world(world)
    probes = [Probe(p.prompt, {"chosen": p.responses["chosen"], "rejected": p.responses["rejected"]}, p.split)
              for p in full.split("train")[:8]]
    ps = ProbeSet(probes)
    cfg = SFTDynamicsConfig(epochs=1, batch_size=8, attr_lr=1e-4, attr_prompts=1)
    res = attribution(cfg, 0, model, tok, ps)
    per = torch.tensor(res["per_example"], dtype=torch.float64)
    pr = res["probes"][0]
    assert pr["u"] == 0 and pr["j"] is None and pr["from_j"] is None  # observed: y_u⁺ itself, no other example
    rest = per[1:, 0].sum().item()
    assert pr["from_rest"] == pytest.approx(rest, rel=1e-6, abs=1e-12)


# ================================================================================================== user probes
USER_PROBES = [
    {"prompt": "What is the capital of France?", "chosen": "The capital of France is Paris.",
     "rejected": "The capital of France is Rome.", "hum": "I like to walk in the park on Sundays."},
    {"prompt": "What color is the sky on a clear day?", "chosen": "The sky is blue.",
     "rejected": "The sky is green.", "hum": "My neighbour plays the piano every evening."},
    {"prompt": "How many legs does a spider have?", "chosen": "A spider has eight legs.",
     "rejected": "A spider has six legs.", "hum": "The train was late again this morning.", "split": "test"},
]


@pytest.fixture(scope="module")
def user_run(tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    tmp = tmp_path_factory.mktemp("user")
    hf_cfg = transformers.GPT2Config(vocab_size=50257, n_embd=16, n_layer=1, n_head=2, n_positions=64,
                                     initializer_range=0.2)
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(hf_cfg).eval()
    hf.save_pretrained(tmp / "hf")
    probes = tmp / "probes.jsonl"
    probes.write_text("".join(json.dumps(d) + "\n" for d in USER_PROBES))
    cfg = SFTDynamicsConfig(probes=str(probes), model=str(tmp / "hf"), seeds=[0], epochs=2, batch_size=2,
                            out=str(tmp / "out"), threads=1)
    from tinyld.tokenizers import GPT2BPE

    bpe = GPT2BPE()  # built once (≈2 s): the run and the test's oracle share it; it holds no state
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("tinyld.choose.GPT2BPE", lambda: bpe)  # where load_real looks it up
        res = run(cfg)
    return tmp, bpe, res, hf


def test_user_probes_run_with_a_hf_folder(user_run):
    tmp, tok, res, hf = user_run
    out = tmp / "out"
    assert (out / "sft_dynamics.json").is_file() and (out / "claims.txt").is_file()
    saved = json.loads((out / "sft_dynamics.json").read_text())
    assert list(res["modes"]) == ["user"] and list(saved["modes"]) == ["user"]
    m = res["modes"]["user"]
    assert "answered_fact_correctly" not in m["regime"] and "generations" not in m["runs"][0]
    r = m["runs"][0]
    assert r["steps_per_epoch"] == 1 and r["steps"] == 2 and r["measured_steps"] == [0, 1, 2]
    claims_txt = (out / "claims.txt").read_text()
    for c in m["claims"]:
        assert c["claim"] in claims_txt
    assert [c["claim"] for c in saved["modes"]["user"]["claims"]] == [c["claim"] for c in m["claims"]]

    with open(out / "track_user_seed0.csv") as f:
        rows = list(csv.DictReader(f))
    keys = [(int(x["step"]), int(x["prompt_id"]), x["family"]) for x in rows]
    assert len(set(keys)) == len(keys)  # one row per (step, prompt, family)
    fams_of = {}
    for s, i, fam in keys:
        fams_of.setdefault((s, i), set()).add(fam)
    assert {s for s, _ in fams_of} == {0, 1, 2} and {i for _, i in fams_of} == {0, 1, 2}
    base = {"chosen", "rejected", "hum", "star"}
    for (s, i), fams in fams_of.items():
        assert base <= fams <= base | {"init"}, (s, i, fams)
        assert fams == fams_of[0, i]  # init, where present, is measured at every step
    assert len(rows) == sum(len(fams_of[0, i]) for i in range(3)) * 3
    for x in rows:
        want = "test" if USER_PROBES[int(x["prompt_id"])].get("split") == "test" else "train"
        assert x["split"] == want

    # step 0: the untrained model, straight from the folder, with the GPT-2 BPE
    model = GPT.from_hf(tmp / "hf").eval()
    assert tok.vocab_size == 50257 and tok.encode("The sky is blue.") == [464, 6766, 318, 4171, 13]
    at0 = {(int(x["prompt_id"]), x["family"]): float(x["logp"]) for x in rows if x["step"] == "0"}
    for i, d in enumerate(USER_PROBES):
        for fam in ("chosen", "rejected", "hum"):
            want = response_logprobs(model, tok, [d["prompt"]], [d[fam]])[0].item()
            assert at0[i, fam] == pytest.approx(want, abs=1e-4), (i, fam)
        b = make_batch(tok, [d["prompt"]], [d["chosen"]], 64)
        with torch.no_grad():
            lp = model(b.idx).double().log_softmax(-1)[0]  # (T, V)
        star = lp[b.targets[0] != -100].amax(-1).sum().item()
        assert at0[i, "star"] == pytest.approx(star, abs=1e-4)
        # the same numbers from the Hugging Face model itself: x, then " " + y and EOS, with GPT-2's own ids
        x, y = tok.encode(d["prompt"]), tok.encode(" " + d["chosen"]) + [50256]
        with torch.no_grad():
            lp_hf = hf(torch.tensor([x + y[:-1]])).logits.double().log_softmax(-1)[0]  # (T, V)
        resp = lp_hf[len(x) - 1:]  # the rows that predict y
        assert at0[i, "chosen"] == pytest.approx(sum(resp[m, t].item() for m, t in enumerate(y)), abs=1e-4)
        assert at0[i, "star"] == pytest.approx(resp.amax(-1).sum().item(), abs=1e-4)
    # the saved curves are the means of the table's training rows
    for fam in ("chosen", "rejected"):
        for k, s in enumerate(r["measured_steps"]):
            vals = [float(x["logp"]) for x in rows if x["family"] == fam and x["split"] == "train"
                    and int(x["step"]) == s]
            assert len(vals) == 2 and r["curves"]["train"][fam][k] == pytest.approx(sum(vals) / 2, abs=1e-6)
    # SFT on the two training prompts raises their chosen responses
    assert r["curves"]["train"]["chosen"][-1] > r["curves"]["train"]["chosen"][0]
    assert (out / "fig3_user.png").is_file() == HAVE_MPL


def test_user_attribution_from_rest_is_the_other_examples(user_run):
    _, _, res, _ = user_run
    (a,) = res["modes"]["user"]["attribution"]
    per = a["per_example"]
    for k, pr in enumerate(a["probes"]):
        rest = sum(per[r][2 * k] for r in range(len(per)) if r not in (pr["j"], pr["u"]))
        assert pr["from_rest"] == pytest.approx(rest, rel=1e-6, abs=1e-9)


def test_user_probes_bad_combinations(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text("".join(json.dumps(d) + "\n" for d in USER_PROBES))
    assert SFTDynamicsConfig(probes=str(f)).model == "tiny"  # the tiny world model, with its word tokenizer
    with pytest.raises(TinyldError, match="neither a model name nor a file or folder"):
        SFTDynamicsConfig(probes=str(f), model=str(tmp_path / "no_such_folder"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(TinyldError, match="a folder without config.json"):
        SFTDynamicsConfig(probes=str(f), model=str(tmp_path / "empty"))


# ================================================================================================== world smoke run
SIMILAR = ("rejected", "gpts_chosen", "gpts_rejected", "init", "test_chosen")
NON_HUMAN = ("urnd_chosen", "rnd", "random_tokens")


def _oracle_claims(runs):
    """The claims' rules, written again: rises = last > first; falls = last < first; rise-then-fall = the highest
    value is above both ends (so it is reached strictly inside the run only)."""
    fams = set(runs[0]["curves"]["train"])
    tests = {"chosen rises": lambda c: c["chosen"][-1] > c["chosen"][0],
             "star rises": lambda c: c["star"][-1] > c["star"][0]}
    for f in SIMILAR:
        if f in fams:
            tests[f"{f} rises then falls"] = lambda c, f=f: max(c[f]) > c[f][0] and max(c[f]) > c[f][-1]
    if "other_chosen" in fams:
        tests["other_chosen rises"] = lambda c: c["other_chosen"][-1] > c["other_chosen"][0]
        tests["other_chosen ends above test_chosen"] = lambda c: (
            c["other_chosen"][-1] - c["other_chosen"][0] > c["test_chosen"][-1] - c["test_chosen"][0])
    for f in NON_HUMAN:
        if f in fams:
            tests[f"{f} falls"] = lambda c, f=f: c[f][-1] < c[f][0]
    out = {}
    for name, t in tests.items():
        n = sum(bool(t(r["curves"]["train"])) for r in runs)
        out[name] = (n, "held" if n == len(runs) else "not held" if n == 0 else f"mixed ({n}/{len(runs)})")
    return out


@pytest.fixture(scope="module")
def world_run(tmp_path_factory):
    from rank_play import record_training

    tmp = tmp_path_factory.mktemp("world")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp)  # tinyld.pretrained.pretrained caches into ./tinyld_out/cache
        # pretrained() pins 2 threads; on a busy 2-core machine that alone costs ~5 s per 5-step base model.
        # Keep the test's single thread (the weights only land in this test's cache).
        mp.setattr("tinyld.pretrained.num_threads", lambda n: contextlib.nullcontext())
        # fast=True changes nothing else here (2 epochs, 5 steps are under its caps) but attributes the
        # first seed only: the attribution itself is checked by hand above; here, that it is wired in
        cfg = SFTDynamicsConfig(seeds=[0, 1, 2], modes=["hard"], epochs=2, pretrain_steps=5, attr_prompts=2,
                                out=str(tmp / "out"), threads=1, fast=True)
        assert (cfg.epochs, cfg.pretrain_steps) == (2, 5)
        runs = record_training(mp)
        res = run(cfg)
        from tinyld.pretrained import pretrained

        models = {s: pretrained(s, steps=5)[2] for s in cfg.seeds}  # from the cache the run wrote
    return tmp, res, models, runs, cfg


def test_world_run_generations_and_outputs(world_run):
    tmp, res, *_ = world_run
    assert len(list((tmp / "tinyld_out" / "cache").glob("*.pt"))) == 3  # the base models were cached here
    m = res["modes"]["hard"]
    assert list(res["modes"]) == ["hard"]
    for r in m["runs"]:
        g = r["generations"]
        assert g["epochs"] == [0, 1, 2]
        for split in ("train", "test"):
            assert len(g["counts"][split]) == 3
            for c in g["counts"][split]:
                assert sum(c.values()) == 40 and set(c) == {"correct", "wrong_value", "other_question", "other"}
        assert math.isfinite(r["tracker_cost"]) and r["tracker_cost"] > 0
        assert r["steps"] == 10 and r["measured_steps"] == [0, 5, 10] and len(r["valley_depth"]) == 3
        assert (tmp / "out" / f"track_hard_seed{r['seed']}.csv").is_file()
    assert [a["seed"] for a in m["attribution"]] == [0]  # fast mode: the first seed only
    (a,) = m["attribution"]
    assert a["steps"] == 10 and len(a["probes"]) == 2 and len(a["curve_actual"]) == 11
    assert a["final_rel_err"] < 0.1  # lr 1e-4: first order holds on the pretrained model too
    per = a["per_example"]
    for k, pr in enumerate(a["probes"]):
        assert pr["predicted"] == pytest.approx(sum(row[2 * k] for row in per), rel=1e-5, abs=1e-9)
        assert pr["j"] != pr["u"] and pr["from_j"] == pytest.approx(per[pr["j"]][2 * k], rel=1e-6)
    saved = json.loads((tmp / "out" / "sft_dynamics.json").read_text())
    assert saved["modes"]["hard"]["claims"] == json.loads(json.dumps(m["claims"]))
    text = (tmp / "out" / "claims.txt").read_text()
    assert all(c["claim"] in text for c in m["claims"])
    assert (tmp / "out" / "fig3_hard.png").is_file() == HAVE_MPL


def test_world_run_claims_follow_the_curves(world_run):
    _, res, *_ = world_run
    m = res["modes"]["hard"]
    want = _oracle_claims(m["runs"])
    got = {c["claim"]: (c["held"], c["verdict"]) for c in m["claims"]}
    assert got == want
    for c in m["claims"]:
        assert c["of"] == 3


def test_world_run_regime_and_step0_curves(world_run):
    _, res, models, *_ = world_run
    m = res["modes"]["hard"]
    for s, reg, r in zip([0, 1, 2], m["regime_per_seed"], m["runs"]):
        world = World(s, mode="hard")
        tok = world.tokenizer()
        model = models[s]
        items = world.train_items()
        lp = response_logprobs(model, tok, [it.prompt for it in items], [it.chosen for it in items])
        assert reg["logp_chosen"] == pytest.approx(lp.mean().item(), abs=1e-4)
        assert r["curves"]["train"]["chosen"][0] == pytest.approx(lp.mean().item(), abs=1e-4)
        test = world.test_items()
        lpt = response_logprobs(model, tok, [it.prompt for it in test], [it.chosen for it in test])
        assert r["curves"]["test"]["chosen"][0] == pytest.approx(lpt.mean().item(), abs=1e-4)
        # greedy answers before SFT, judged by their first sentence against the true fact (two phrasings)
        max_new = max(len(tok.encode(it.chosen)) for it in items + test) + 4
        answers = greedy_answers(model, tok, [it.prompt for it in items], max_new)
        hand = {"city": ("{n} lives in {v} .", "the home of {n} is {v} ."),
                "job": ("{n} works as a {v} .", "the job of {n} is {v} ."),
                "pet": ("{n} has a {v} .", "the pet of {n} is a {v} ."),
                "food": ("{n} likes {v} .", "the favourite food of {n} is {v} ."),
                "color": ("{n} loves the color {v} .", "the favourite color of {n} is {v} .")}
        right = 0
        for it, a in zip(items, answers):
            w = a.split()
            first = " ".join(w[: w.index(".") + 1] if "." in w else w)
            right += first in {t.format(n=it.name, v=it.value) for t in hand[it.relation]}
        assert reg["answered_fact_correctly"] == pytest.approx(right / len(items))
        assert reg["answered_exactly"] == pytest.approx(sum(a == it.chosen for a, it in zip(answers, items)) / 40)
        assert r["generations"]["counts"]["train"][0]["correct"] == right
    assert m["regime"]["logp_chosen"]["mean"] == pytest.approx(
        sum(x["logp_chosen"] for x in m["regime_per_seed"]) / 3)


# ================================================================================================== CLI
@pytest.mark.parametrize("args", [["--epochs", "0"], ["--seeds", "1", "1"], ["--modes", "nope"],
                                  ["--probes", "p.jsonl"]])
def test_cli_user_errors_exit_2_with_one_line(args, capsys, tmp_path, monkeypatch):
    from tinyld.__main__ import main

    monkeypatch.chdir(tmp_path)
    assert main(["sft-dynamics", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and err.count("\n") == 1 and err.endswith("\n"), err
    assert "Traceback" not in err
    assert not (tmp_path / "tinyld_out").exists()  # refused before anything was written


MEASUREMENTS = ("regime", "greedy_answers", "response_logprobs", "valley_depth", "judge", "figure")


def _play_rank_1(mp, tmp) -> tuple[list, list]:
    """From now on this process is rank 1 of a torchrun group (rank_play) and measuring fails. Returns the lists of
    the training runs it takes and of its forward passes outside training."""
    from rank_play import as_rank, forbid, forbid_in, forward_passes_without_grad, record_training

    from tinyld.experiments import sft_dynamics
    from tinyld.probes import Tracker

    mp.chdir(tmp)
    mp.setattr("tinyld.pretrained.num_threads", lambda n: contextlib.nullcontext())
    runs = record_training(mp)
    as_rank(mp, 1)
    forbid(mp, [(Tracker, "measure"), (ProbeSet, "with_init")])
    forbid_in(mp, sft_dynamics, MEASUREMENTS + ("contributions",))  # the names sft_dynamics's modules call
    return runs, forward_passes_without_grad(mp)


def test_under_torchrun_the_other_ranks_only_train(world_run):
    """The command as rank 1 of a torchrun group: it joins every SFT and attribution run of rank 0's, in the same
    order, reaching the same weights, while no forward pass runs outside training (no probe, no answer, no
    attribution prediction), nothing is judged and no file is written."""
    tmp, _, _, main_runs, cfg = world_run
    # seed 0: SFT (AdamW, 2 epochs of 5 steps), then its attribution run (SGD); seeds 1 and 2: SFT
    assert [r[1:3] for r in main_runs] == [(10, "adamw"), (10, "sgd"), (10, "adamw"), (10, "adamw")]
    with pytest.MonkeyPatch.context() as mp:
        runs, quiet = _play_rank_1(mp, tmp)
        assert run(dataclasses.replace(cfg, out=str(tmp / "rank1"))) == {}
    assert quiet == []
    assert runs == main_runs
    assert not (tmp / "rank1").exists()  # rank 0 alone checks and writes the folder


def test_conditions_table_and_the_other_ranks(tmp_path):
    """--conditions: one row per condition (the default, lr / 3, lr × 3, clipping switched, plain SGD, a shallow base
    model) with each claim's seeds held, conditions.txt; and as rank 1 of a torchrun group, the same training runs
    and nothing else."""
    from rank_play import record_training

    from tinyld.experiments.kit import RunFolder
    from tinyld.experiments.sft_dynamics.conditions import conditions, conditions_outputs

    cfg = SFTDynamicsConfig(seeds=[0], modes=["easy"], epochs=1, pretrain_steps=5, out=str(tmp_path / "out"),
                            threads=1)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp_path)
        mp.setattr("tinyld.pretrained.num_threads", lambda n: contextlib.nullcontext())
        main_runs = record_training(mp)
        with RunFolder(tmp_path / "out", "sft-dynamics", {}, conditions_outputs(cfg)) as folder:
            res = conditions(cfg, folder)
    rows = res["rows"]
    assert [(r["optimizer"], r["lr"], r["grad_clip"], r["pretrain_steps"]) for r in rows] == [
        ("adamw", 1e-3, 0.0, 5), ("adamw", 1e-3 / 3, 0.0, 5), ("adamw", 1e-3 * 3, 0.0, 5), ("adamw", 1e-3, 1.0, 5),
        ("sgd", cfg.attr_lr, 0.0, 5), ("adamw", 1e-3, 0.0, 1)]
    assert rows[5]["valley_depth"] != rows[0]["valley_depth"]  # another base model
    text = (tmp_path / "out" / "conditions.txt").read_text()
    assert text.splitlines() == res["table"] and "chosen rises" in text and "1/1" in text
    assert [(r[1], r[2], r[3]) for r in main_runs] == [(5, r["optimizer"], r["lr"]) for r in rows]
    with pytest.MonkeyPatch.context() as mp:
        runs, quiet = _play_rank_1(mp, tmp_path)
        with RunFolder(tmp_path / "rank1", "sft-dynamics", {}, conditions_outputs(cfg)) as folder:
            assert conditions(cfg, folder) == {}
    assert quiet == [] and runs == main_runs and not (tmp_path / "rank1").exists()
