"""Probe sets, the tracker and World.classify / hard mode, checked against independent oracles: hand
computations with ``math``, direct calls of tinyld.evaluate and hand-written fact sentences."""
import csv
import json
import math
import re

import pytest
import torch

from tinyld import GPT, GPTConfig, TinyldError
from tinyld.data import PairData, make_batch
from tinyld.evaluate import greedy_answers, response_logprobs, valley_depth
from tinyld.probes import FAMILIES, Probe, ProbeSet, Tracker, position_stats
from tinyld.train import TrainConfig, Trainer
from tinyld.world import World

# The fact sentences written out by hand (canonical, rephrase): the oracle for World.classify.
HAND = {
    "city": ("{n} lives in {v} .", "the home of {n} is {v} ."),
    "job": ("{n} works as a {v} .", "the job of {n} is {v} ."),
    "pet": ("{n} has a {v} .", "the pet of {n} is a {v} ."),
    "food": ("{n} likes {v} .", "the favourite food of {n} is {v} ."),
    "color": ("{n} loves the color {v} .", "the favourite color of {n} is {v} ."),
}
CITIES = ["paris", "rome", "tokyo", "cairo", "lima", "oslo", "delhi", "quito"]
STORY_WORDS = {"the", "old", "quiet", "bright", "small", "cold", "warm", "tall", "dark", "river", "hill", "road",
               "tree", "house", "bridge", "garden", "window", "runs", "stands", "waits", "rests", "sleeps",
               "shines", "near", "past", "under", "beside", "behind", "."}
N_MODEL_FREE = 12  # chosen … random_tokens: the families World.probes writes


def _subset(world, n_train=3, n_test=2) -> ProbeSet:
    full = ProbeSet.from_world(world)
    return ProbeSet(full.split("train")[:n_train] + full.split("test")[:n_test])


def _tiny(tok, double=True):
    torch.manual_seed(0)
    m = GPT(GPTConfig.preset("tiny", vocab_size=tok.vocab_size))
    return (m.double() if double else m).eval()


# ------------------------------------------------------------------------------------------------ position_stats
def test_position_stats_matches_a_hand_computation():
    g = torch.Generator().manual_seed(3)
    B, T, V = 2, 3, 4
    logits = torch.randn(B, T, V, generator=g, dtype=torch.float64) * 2
    targets = torch.tensor([[-100, 2, 0], [1, -100, -100]])
    want = {k: [] for k in ("logp", "logp_star", "tokens", "top1", "peakiness")}
    for b in range(B):
        logp = star = top1 = peak = 0.0
        n = 0
        for t in range(T):
            y = int(targets[b, t])
            if y == -100:
                continue
            z = logits[b, t].tolist()
            lse = math.log(sum(math.exp(v) for v in z))
            p = [math.exp(v - lse) for v in z]
            logp += math.log(p[y])
            star += math.log(max(p))
            top1 += max(p)
            peak += V - 2 + V * sum(q * q for q in p)
            n += 1
        for k, v in (("logp", logp), ("logp_star", star), ("tokens", n), ("top1", top1 / n),
                     ("peakiness", peak / n)):
            want[k].append(v)
    st = position_stats(logits, targets)
    for k, v in want.items():
        assert st[k].shape == (B,)
        assert st[k].tolist() == pytest.approx(v, rel=1e-12, abs=1e-12), k
    assert (st["logp_star"] >= st["logp"]).all()  # the argmax is at least as likely as any target
    # logits at unscored positions change nothing
    other = logits.clone()
    other[0, 0] += 5.0
    other[1, 1:] -= 3.0
    st2 = position_stats(other, targets)
    for k in want:
        assert torch.allclose(st2[k], st[k], rtol=0, atol=1e-12), k


# ------------------------------------------------------------------------------------------------ Tracker
def test_tracker_rows_match_response_logprobs_and_direct_star(wtok):
    model = _tiny(wtok)
    ps = _subset(World(0, mode="hard"))
    fams = ps.families
    assert fams == [f for f in FAMILIES if f not in ("init",)] and len(fams) == N_MODEL_FREE + 1
    model.train()
    rows = Tracker(wtok, ps, valley=False).measure(model, 0)
    assert model.training  # measure restores the mode it found
    model.eval()
    assert len(rows) == len(ps) * len(fams)
    assert {(r["prompt_id"], r["family"]) for r in rows} == {(i, f) for i in range(len(ps)) for f in fams}

    pairs = [(r["prompt_id"], r["family"]) for r in rows if r["family"] != "star"]
    prompts = [ps.probes[i].prompt for i, _ in pairs]
    responses = [ps.probes[i].responses[f] for i, f in pairs]
    direct = response_logprobs(model, wtok, prompts, responses, batch_size=7)
    by_key = {(r["prompt_id"], r["family"]): r for r in rows}
    for (i, f), resp, lp in zip(pairs, responses, direct.tolist()):
        r = by_key[i, f]
        assert r["step"] == 0 and r["split"] == ps.probes[i].split
        assert r["logp"] == pytest.approx(lp, abs=1e-5), (i, f)
        assert r["tokens"] == len(resp.split()) + 1  # one token per word, plus EOS
        assert 0 < r["top1"] <= 1 and 2 * wtok.vocab_size - 2 >= r["peakiness"] >= wtok.vocab_size - 1

    for i, p in enumerate(ps.probes):  # y*: Σ over y⁺'s positions of log max_v π, straight from the logits
        b = make_batch(wtok, [p.prompt], [p.responses["chosen"]], model.config.block_size)
        with torch.no_grad():
            lp = model(b.idx).double().log_softmax(-1)[0]  # (T, V)
        m = b.targets[0] != -100
        star = lp[m].amax(-1).sum().item()
        top1 = lp[m].amax(-1).exp().mean().item()
        r, c = by_key[i, "star"], by_key[i, "chosen"]
        assert r["logp"] == pytest.approx(star, abs=1e-5)
        assert r["tokens"] == c["tokens"] == int(m.sum()) and r["top1"] == pytest.approx(top1, abs=1e-9)
        assert r["logp"] >= c["logp"]


def test_tracker_batching_does_not_change_values(wtok):
    model = _tiny(wtok)
    ps = _subset(World(0), 2, 1)
    a = Tracker(wtok, ps, batch_size=64, valley=False).measure(model, 5)
    b = Tracker(wtok, ps, batch_size=5, valley=False).measure(model, 5)
    assert [(r["prompt_id"], r["family"]) for r in a] == [(r["prompt_id"], r["family"]) for r in b]
    for ra, rb in zip(a, b):
        assert ra["logp"] == pytest.approx(rb["logp"], abs=1e-9) and ra["tokens"] == rb["tokens"]


def test_tracker_records_valley_depth(wtok):
    model = _tiny(wtok)
    tr = Tracker(wtok, _subset(World(0), 1, 1))
    tr.measure(model, 0)
    assert tr.steps[0]["step"] == 0 and tr.steps[0]["valley_depth"] == pytest.approx(valley_depth(model, wtok))
    assert tr.steps[0]["seconds"] >= 0


def test_tracker_as_trainer_callback_and_save(wtok, tmp_path):
    model = _tiny(wtok, double=False)
    ps = _subset(World(0, mode="hard"), 4, 2)
    nfam = len(ps.families)
    pairs = [(i, f) for i, p in enumerate(ps.probes) for f in p.responses]
    prompts = [ps.probes[i].prompt for i, _ in pairs]
    responses = [ps.probes[i].responses[f] for i, f in pairs]
    before = response_logprobs(model, wtok, prompts, responses).tolist()

    tracker = Tracker(wtok, ps, every=3, valley=False)
    tracker.measure(model, 0)
    data = PairData(wtok, ps.examples("train"), 2, seed=0)
    assert len(data.seqs) == 4  # only the train split is finetuned on
    tr = Trainer(model, data, TrainConfig(task="sft", steps=4, lr=1e-3, progress=False), wtok)
    tr.run(tracker)
    after = response_logprobs(model, wtok, prompts, responses).tolist()

    assert [s["step"] for s in tracker.steps] == [0, 3, 4]  # by hand, every 3rd step, and the last one
    steps = [r["step"] for r in tracker.rows]
    assert sorted(set(steps)) == [0, 3, 4] and all(steps.count(s) == len(ps) * nfam for s in (0, 3, 4))
    for step, want in ((0, before), (4, after)):
        got = {(r["prompt_id"], r["family"]): r["logp"] for r in tracker.rows if r["step"] == step}
        for key, lp in zip(pairs, want):
            assert got[key] == pytest.approx(lp, abs=1e-4), (step, key)
    # curve: the mean over train prompts, by hand
    s, c = tracker.curve("chosen", "train")
    assert s == [0, 3, 4]
    hand0 = [lp for (i, f), lp in zip(pairs, before) if f == "chosen" and ps.probes[i].split == "train"]
    assert c[0] == pytest.approx(sum(hand0) / len(hand0), abs=1e-4)
    assert c[2] > c[0]  # SFT on y⁺ raised log π(y⁺)

    pc = tracker.save(tmp_path / "t.csv")
    pj = tracker.save(tmp_path / "t.json", config={"lr": 1e-3})
    with open(pc, newline="") as f:
        back = list(csv.DictReader(f))
    assert len(back) == len(tracker.rows)
    conv = {"step": int, "prompt_id": int, "tokens": int, "logp": float, "top1": float, "peakiness": float,
            "split": str, "family": str}
    assert [{k: conv[k](v) for k, v in r.items()} for r in back] == tracker.rows
    d = json.loads(pj.read_text())
    assert d["rows"] == tracker.rows and d["steps"] == tracker.steps and d["config"] == {"lr": 1e-3}
    assert list(d["families"]) == ps.families and d["families"]["star"] == "y*"
    with pytest.raises(TinyldError, match="json or .csv"):
        tracker.save(tmp_path / "t.txt")


# ------------------------------------------------------------------------------------------------ with_init
def test_with_init_is_the_greedy_answer_and_frozen(wtok):
    model = _tiny(wtok, double=False)
    ps = _subset(World(0), 4, 2)
    prompts = [p.prompt for p in ps.probes]
    n_new = max(len(p.responses["chosen"].split()) for p in ps.probes) + 4  # word tokenizer: a token per word
    want = greedy_answers(model, wtok, prompts, n_new)
    ps2 = ps.with_init(model, wtok)
    assert all("init" not in p.responses for p in ps.probes)  # the original set is untouched
    assert len(ps2) == len(ps)
    for p, q, a in zip(ps.probes, ps2.probes, want):
        assert (q.prompt, q.split, q.meta) == (p.prompt, p.split, p.meta)
        assert {k: v for k, v in q.responses.items() if k != "init"} == p.responses
        if a.strip():
            assert q.responses["init"] == a
        else:
            assert "init" not in q.responses
    assert any("init" in q.responses for q in ps2.probes)
    assert "init" in ps2.families and ps2.families.index("init") < ps2.families.index("star")
    short = ps.with_init(model, wtok, max_new_tokens=2)
    assert [q.responses.get("init", "") for q in short.probes] == greedy_answers(model, wtok, prompts, 2)

    frozen = [q.responses.get("init") for q in ps2.probes]
    data = PairData(wtok, ps.examples("train"), 4, seed=0)
    Trainer(model, data, TrainConfig(task="sft", steps=10, lr=1e-2, progress=False), wtok).run()
    now = greedy_answers(model, wtok, prompts, n_new)
    assert now != want  # training changed the model's answers…
    assert [q.responses.get("init") for q in ps2.probes] == frozen  # …but not the stored y_init
    rows = Tracker(wtok, ps2, valley=False).measure(model, 10)
    init_rows = [r for r in rows if r["family"] == "init"]
    assert len(init_rows) == sum(f is not None for f in frozen)
    for r in init_rows:
        lp = response_logprobs(model, wtok, [prompts[r["prompt_id"]]], [frozen[r["prompt_id"]]])[0].item()
        assert r["logp"] == pytest.approx(lp, abs=1e-4)


# ------------------------------------------------------------------------------------------------ load / save
P1 = {"prompt": "question : where does alice live ? answer :", "chosen": "alice lives in paris .",
      "rejected": "alice lives in rome .", "hum": "the old river runs near the dark house ."}
P2 = {"prompt": "question : what pet does bob have ? answer :", "chosen": "bob has a cat .",
      "rejected": "bob has a dog .", "hum": "the cold hill waits past the tall tree .", "meta": {"k": 1}}
P3 = {"prompt": "question : where does carol live ? answer :", "chosen": "carol lives in oslo .",
      "rejected": "carol lives in lima .", "hum": "the warm road rests under the old bridge .", "split": "test"}


def _write(path, lines):
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n", encoding="utf-8")
    return path


def test_load_a_good_file(tmp_path):
    p = _write(tmp_path / "probes.jsonl", [P1, P2, P3])
    ps = ProbeSet.load(p)
    assert len(ps) == 3 and [q.split for q in ps.probes] == ["train", "train", "test"]
    assert [q.prompt for q in ps.probes] == [P1["prompt"], P2["prompt"], P3["prompt"]]
    assert ps.probes[1].responses == {k: P2[k] for k in ("chosen", "rejected", "hum")}
    assert ps.probes[1].meta == {"k": 1} and ps.probes[0].meta == {}
    assert ps.families == ["chosen", "rejected", "hum", "star"]
    assert [e.chosen for e in ps.examples("train")] == [P1["chosen"], P2["chosen"]]
    assert [e.chosen for e in ps.examples("test")] == [P3["chosen"]]
    # a user's own family is accepted; 'init' is the model's own answer and is refused, naming its line
    mine = [{**P1, "mine": "x y"}, {**P2, "mine": "z"}, {**P3, "mine": "w"}]
    ps = ProbeSet.load(_write(tmp_path / "mine.jsonl", mine))
    assert set(ps.families) == {"chosen", "rejected", "hum", "mine", "star"}
    with pytest.raises(TinyldError, match=r"mine2\.jsonl:2: 'init'"):
        ProbeSet.load(_write(tmp_path / "mine2.jsonl", [P1, {**P2, "init": "bob has a owl ."}, P3]))


@pytest.mark.parametrize("line3, message", [
    ({k: v for k, v in P3.items() if k != "rejected"}, "missing 'rejected'"),
    ({**P3, "chosen": "   "}, "'chosen' is empty"),
    ('{"prompt": "a", "chosen": ', "not valid JSON"),
    ({**P3, "hum": 3}, "'hum' must be a string"),
    ({**P3, "hum": None}, "'hum' must be a string"),
    ({k: v for k, v in P3.items() if k != "hum"}, r"missing \['hum'\]"),
    ({**P3, "extra": "more words"}, r"extra \['extra'\]"),
    ({**P3, "split": "dev"}, "'split' must be 'train' or 'test'"),
    ({**P3, "star": "carol lives in oslo ."}, "'star'"),
    ({**P3, "meta": [1]}, "'meta' must be a JSON object"),
    ("[1, 2]", "JSON object"),
])
def test_load_errors_name_the_file_and_line(tmp_path, line3, message):
    p = _write(tmp_path / "bad.jsonl", [P1, P2, line3])
    with pytest.raises(TinyldError, match=re.escape(f"{p}:3:")) as e:
        ProbeSet.load(p)
    assert re.search(message, str(e.value)), str(e.value)


def test_load_family_mismatch_names_the_first_line_too(tmp_path):
    p = _write(tmp_path / "bad.jsonl", [P1, P2, {k: v for k, v in P3.items() if k != "hum"}])
    with pytest.raises(TinyldError, match=re.escape(f"{p}:1")):
        ProbeSet.load(p)


def test_load_counts_blank_lines(tmp_path):
    p = _write(tmp_path / "blank.jsonl", [P1, "", "   ", {**P2, "rejected": ""}])
    with pytest.raises(TinyldError, match=re.escape(f"{p}:4:") + ".*'rejected' is empty"):
        ProbeSet.load(p)
    ps = ProbeSet.load(_write(tmp_path / "ok.jsonl", ["", P1, "", P3, ""]))
    assert len(ps) == 2
    with pytest.raises(TinyldError, match="blank"):
        ProbeSet.load(_write(tmp_path / "empty.jsonl", ["", " "]))
    with pytest.raises(TinyldError, match="no JSONL file"):
        ProbeSet.load(tmp_path / "nope.jsonl")


def test_load_refuses_a_file_with_no_train_split(tmp_path):
    p = _write(tmp_path / "test_only.jsonl", [{**P1, "split": "test"}, P3])
    with pytest.raises(TinyldError, match="no probe with split 'train'"):
        ProbeSet.load(p)


def test_save_load_round_trip(tmp_path):
    for ps in (ProbeSet.from_world(World(0)), ProbeSet.from_world(World(1, mode="hard")),
               ProbeSet.load(_write(tmp_path / "in.jsonl", [P1, P2, P3]))):
        out = ps.save(tmp_path / "out.jsonl")
        back = ProbeSet.load(out)
        assert back.probes == ps.probes and back.families == ps.families
        assert len(out.read_text().splitlines()) == len(ps)


def test_probeset_constructor_refusals():
    good = Probe("question : a", {"chosen": "b", "rejected": "c"})
    with pytest.raises(TinyldError, match="no probe with split 'train'"):
        ProbeSet([Probe("question : a", {"chosen": "b", "rejected": "c"}, split="test")])
    with pytest.raises(TinyldError, match="families different"):
        ProbeSet([good, Probe("question : d", {"chosen": "b", "rejected": "c", "hum": "e"})])
    with pytest.raises(TinyldError, match="families different"):
        ProbeSet([Probe("question : d", {"chosen": "b", "rejected": "c", "hum": "e"}), good])
    with pytest.raises(TinyldError, match="non-empty list"):
        ProbeSet([])
    with pytest.raises(TinyldError, match="missing the 'rejected'"):
        ProbeSet([Probe("question : a", {"chosen": "b"})])
    with pytest.raises(TinyldError, match="'star'"):
        ProbeSet([Probe("question : a", {"chosen": "b", "rejected": "c", "star": "d"})])
    with pytest.raises(TinyldError, match="split must be"):
        ProbeSet([good, Probe("question : a", {"chosen": "b", "rejected": "c"}, split="dev")])
    with pytest.raises(TinyldError, match="non-empty string"):
        ProbeSet([Probe("question : a", {"chosen": "b", "rejected": " "})])
    with pytest.raises(TinyldError, match="Tracker needs a ProbeSet"):
        Tracker(None, [good])
    assert len(ProbeSet([good, Probe("question : d", {"chosen": "e", "rejected": "f"}, split="test")])) == 2


def test_families_order_puts_star_last():
    ps = ProbeSet([Probe("question : a", {"chosen": "b", "rejected": "c", "mine": "d", "init": "e"})])
    assert ps.families == ["chosen", "rejected", "init", "mine", "star"]


# ------------------------------------------------------------------------------------------------ World.classify
@pytest.mark.parametrize("mode", ["easy", "hard"])
def test_classify_hand_made_answers(mode):
    w = World(0, mode=mode)
    train, test = w.train_items(), w.test_items()
    it = next(i for i in train if i.relation == "city")
    n, v = it.name, it.value
    tails = ["", " the old river runs near the dark house ."] + ([f" {it.tail}"] if it.tail else [])
    for t in tails:
        assert w.classify(it, f"{n} lives in {v} .{t}") == "correct", t
        assert w.classify(it, f"the home of {n} is {v} .{t}") == "correct", t
        assert w.classify(it, f"  {n}  lives in {v} .{t} ") == "correct", t
    for other in CITIES:
        if other != v:
            assert w.classify(it, f"{n} lives in {other} .") == "wrong_value"
            assert w.classify(it, f"the home of {n} is {other} . the old river runs near the dark house .") \
                == "wrong_value"
    # another training item's fact: another person, and the same person asked something else
    o = next(i for i in train if i.name != n)
    assert w.classify(it, HAND[o.relation][0].format(n=o.name, v=o.value)) == "other_question"
    assert w.classify(it, HAND[o.relation][1].format(n=o.name, v=o.value) + " the old hill") == "other_question"
    same = next(i for i in train if i.name == n and i.relation != "city")
    assert w.classify(it, HAND[same.relation][0].format(n=n, v=same.value)) == "other_question"
    # a false statement about another prompt is not that prompt's answer
    assert w.classify(it, HAND[o.relation][0].format(n=o.name, v=o.wrong)) == "other"
    for junk in ("", "   ", "blah blah", "the old river runs near the dark house .", ". . .",
                 f"{n} lives in", f"{n} lives in {v}", "question : where does alice live ? answer :"):
        assert w.classify(it, junk) == "other", junk
    # a held-out item answered with a training item's fact
    ht = next(i for i in test if i.relation == "job")
    assert w.classify(ht, HAND["job"][0].format(n=ht.name, v=ht.value)) == "correct"
    assert w.classify(ht, HAND[o.relation][0].format(n=o.name, v=o.value)) == "other_question"
    assert w.classify(ht, HAND["job"][0].format(n=o.name, v=w.facts[o.name]["job"])) == "other_question"
    # every item's own chosen answer (a hard one carries its tail) and rejected answer
    for i in train + test:
        assert w.classify(i, i.chosen) == "correct" and w.classify(i, i.rejected) == "wrong_value"
    with pytest.raises(TinyldError):
        w.classify(it, None)
    with pytest.raises(TinyldError):
        w.classify("alice", "alice lives in paris .")


# ------------------------------------------------------------------------------------------------ hard mode
def test_easy_mode_is_unchanged_and_hard_mode_adds_a_tail():
    easy, default, hard = World(0, mode="easy"), World(0), World(0, mode="hard")
    assert default.mode == "easy" and hard.mode == "hard"
    for get in ("train_items", "test_items"):
        e, d, h = getattr(easy, get)(), getattr(default, get)(), getattr(hard, get)()
        assert [i.chosen for i in d] == [i.chosen for i in e] and d == e
        assert len(h) == len(e)
        for ei, hi in zip(e, h):
            assert ei.tail == "" and ei.wrong_tail == ""
            assert ei.chosen == HAND[ei.relation][0].format(n=ei.name, v=ei.value)
            assert ei.rejected == HAND[ei.relation][0].format(n=ei.name, v=ei.wrong)
            assert (hi.prompt, hi.name, hi.relation, hi.value, hi.wrong) == \
                (ei.prompt, ei.name, ei.relation, ei.value, ei.wrong)
            assert hi.chosen == ei.chosen + " " + hi.tail and hi.rejected == ei.rejected + " " + hi.wrong_tail
            for tail in (hi.tail, hi.wrong_tail):
                words = tail.split()
                assert len(words) == 9 and words[0] == "the" and words[-1] == "." and words.count(".") == 1
                assert set(words) <= STORY_WORDS
    city = next(i for i in easy.train_items() if i.relation == "city")
    assert city.chosen == f"{city.name} lives in {city.value} ."
    assert len({i.tail for i in hard.train_items()}) > 1  # drawn per prompt
    assert [i.tail for i in World(0, mode="hard").train_items()] == [i.tail for i in hard.train_items()]
    hi = next(i for i in hard.train_items() if i.relation == "city")
    p = hard.probes(hi)
    assert p["gpts_chosen"] == f"the home of {hi.name} is {hi.value} . {hi.tail}"
    assert p["gpts_rejected"] == f"the home of {hi.name} is {hi.wrong} . {hi.wrong_tail}"
    with pytest.raises(TinyldError, match="mode"):
        World(0, mode="bad")
    with pytest.raises(TinyldError, match="mode"):
        World(0, mode=None)



def test_pretraining_text_is_the_same_in_both_modes():
    easy, hard = World(0), World(0, mode="hard")
    assert easy.pretrain_docs() == hard.pretrain_docs()
