"""One ``--model`` for every command, and the world experiments on a real LLM used as it is: the world's facts as
chat turns in natural text, a probe subset sized for a CPU, the first step against its first-order prediction, your
own probe and pair files. The runs here use a small llama-shaped GGUF file written with llama.cpp's own writer and
SmolLM2's chat template (tests/test_gguf.py), so they take seconds; the real SmolLM2 runs are the lab report's."""
import json

import pytest
import torch

from tinyld import GPT, GPTConfig, TinyldError
from tinyld.choose import model_choice
from tinyld.data import Example, make_batch
from tinyld.dynamics import one_step
from tinyld.experiments.common import REAL_FAMILIES, REAL_PLAN, first_step, user_setup
from tinyld.experiments.dpo_dynamics import DPODynamicsConfig
from tinyld.experiments.dpo_dynamics import run as dpo_run
from tinyld.experiments.sft_dynamics import SFTDynamicsConfig
from tinyld.experiments.sft_dynamics import run as sft_run
from tinyld.probes import ProbeSet
from tinyld.tokenizers import CHATML
from tinyld.updates import SFTUpdate, lm_rows
from tinyld.world import World, natural, plain

gguf = pytest.importorskip("gguf")
from test_gguf import LLAMA, vocab, write  # noqa: E402  (the writer of tests/test_gguf.py)


def chat_gguf_file(path):
    """A small random llama-shaped model with SmolLM2's byte-level tokenizer layout and its ChatML template."""
    torch.manual_seed(0)
    model = GPT(GPTConfig.preset("tiny", vocab_size=len(vocab()), block_size=512, **LLAMA)).eval()
    return write(path, model, template=CHATML)


@pytest.fixture(scope="module")
def chat_gguf(tmp_path_factory):
    return chat_gguf_file(tmp_path_factory.mktemp("gguf") / "chat.gguf")


# ---------------------------------------------------------------------------------------------- one --model
def test_model_choice_names_every_kind(tmp_path, chat_gguf):
    assert [model_choice(n, "x").kind for n in ("tiny", "mini", "gpt2", "smollm2")] == ["tiny", "mini", "gpt2", "gguf"]
    c = model_choice(str(chat_gguf), "x")
    assert (c.kind, c.path, c.real, c.preset) == ("gguf", str(chat_gguf), True, "smollm2")
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text("{}")
    c = model_choice(tmp_path / "hf", "x")
    assert (c.kind, c.real, c.preset) == ("hf", False, "gpt2")
    for bad, says in [("", "must name a model"), (3, "must name a model"), ("nope", "neither a model name"),
                      (str(tmp_path / "x.gguf"), "no such GGUF file"), (str(tmp_path), "a folder without config")]:
        with pytest.raises(TinyldError, match=says):
            model_choice(bad, "x")
    with pytest.raises(TinyldError, match=r"demo takes tiny \(the synthetic world's small GPT\) or mini \(a wider "
                       r"shape\); why"):
        model_choice("smollm2", "demo", ("tiny", "mini"), "why")


def test_bench_takes_a_folder_as_gpt2_weights(tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    from tinyld.__main__ import main

    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(transformers.GPT2Config(n_embd=16, n_layer=1, n_head=2, n_positions=64)) \
        .save_pretrained(tmp_path / "hf")
    assert main(["bench", "step", "--model", str(tmp_path / "hf"), "--batch", "1", "--seq", "8", "--repeat", "1",
                 "--warmup", "0"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["preset"] == "gpt2" and res["weights"] == str(tmp_path / "hf") and res["params"] < 10 ** 6


# ---------------------------------------------------------------------------------------------- the world as chat
def test_natural_text_reads_back_as_world_text_and_is_judged_alike():
    w = World(0, mode="hard")
    for it in w.train_items() + w.test_items():
        for text in w.probes(it).values():
            assert plain(natural(text)) == text
        assert w.classify(it, natural(it.chosen)) == "correct" and w.classify(it, natural(it.rejected)) == "wrong_value"
    it = w.train_items()[0]
    assert natural(it.chosen).split(".")[0] == f"{it.name.capitalize()} lives in {it.value.capitalize()}"
    assert w.question(it) == f"Where does {it.name.capitalize()} live?"
    assert w.classify(it, f"{it.name.upper()} LIVES IN {it.value.upper()}!") == "correct"  # case and "!" are no matter


def test_world_probes_as_chat_turns(chat_gguf):
    from tinyld.gguf import load

    _, tok = load(chat_gguf)
    w = World(1, mode="easy")
    plainset, chat = ProbeSet.from_world(w), ProbeSet.from_world(w, chat=tok)
    assert len(chat) == len(plainset) and chat.families == plainset.families
    for a, b in zip(plainset.probes, chat.probes):
        item = w.item(a.meta["name"], a.meta["relation"])
        assert b.prompt == tok.chat([{"role": "user", "content": w.question(item)}]) and b.meta == a.meta
        assert b.responses == {k: natural(v) for k, v in a.responses.items()} and b.split == a.split
    sub = chat.subset(3, 2, ("hum",))
    assert [p.prompt for p in sub.probes] == [p.prompt for p in chat.split("train")[:3] + chat.split("test")[:2]]
    assert sub.families == ["chosen", "rejected", "hum", "star"]
    again = chat.as_chat(tok)  # a prompt that is a chat turn already stays as it is
    assert [p.prompt for p in again.probes] == [p.prompt for p in chat.probes]


# ---------------------------------------------------------------------------------------------- the first step
def test_first_step_prediction_is_first_order_along_the_real_update(tiny64, wtok, world):
    """first_step's prediction against two independent routes: the measured change after the step (its error must
    shrink in proportion to the step, as a first-order remainder does) and one_step's own A·J·Δθ with the optimizer."""
    probes = ProbeSet.from_world(world).subset(3, 0, ("gpts_chosen", "hum"))
    examples = probes.examples("train")
    b = make_batch(wtok, [e.prompt for e in examples], [e.chosen for e in examples], 64)

    def sgd(lr):
        def step(m):
            opt = torch.optim.SGD(m.parameters(), lr=lr)
            m.zero_grad()
            SFTUpdate(lm_rows(b)).loss(m).backward()
            opt.step()
        return step
    errs = [first_step(tiny64, wtok, probes, sgd(lr))["rel_err"] for lr in (4e-4, 2e-4)]
    assert errs[1] < 0.05 and 1.6 < errs[0] / errs[1] < 2.4  # a second-order remainder: half the step, half the error
    check = first_step(tiny64, wtok, probes, sgd(1e-3))
    observed = lm_rows(make_batch(wtok, *zip(*[(p.prompt, t) for p in probes.split("train")
                                                for t in p.responses.values()]), 64))
    opt = torch.optim.SGD(tiny64.parameters(), lr=1e-3)
    rep = one_step(tiny64, SFTUpdate(lm_rows(b)), observed, 1e-3, optimizer=opt)
    for mine, theirs in ((check["predicted"], rep.pred_seq), (check["actual"], rep.actual_seq)):
        torch.testing.assert_close(torch.tensor(mine, dtype=torch.float64), theirs.double(), rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------------------------------------- whole runs
def test_sft_dynamics_on_a_real_llm_file(chat_gguf, tmp_path):
    cfg = SFTDynamicsConfig(model=str(chat_gguf), seeds=[0], epochs=2, out=str(tmp_path / "o"), threads=1)
    assert (cfg.modes, cfg.lr, cfg.attribution) == ([REAL_PLAN.mode], 5e-6, False)
    res = sft_run(cfg)
    m = res["modes"]["easy"]
    r = m["runs"][0]
    n_train, n_test = REAL_PLAN.train_probes, REAL_PLAN.test_probes
    assert set(r["curves"]["train"]) == set(REAL_FAMILIES) | {"init", "star"} or \
        set(r["curves"]["train"]) == set(REAL_FAMILIES) | {"star"}  # y_init: none where the answer was empty
    assert r["steps"] == 2 * 5 and len(r["measured_steps"]) == 3
    counts = r["generations"]["counts"]
    assert [sum(c.values()) for c in counts["train"]] == [n_train] * 3
    assert [sum(c.values()) for c in counts["test"]] == [n_test] * 3
    (fs,) = json.loads((tmp_path / "o" / "sft_dynamics.json").read_text())["modes"]["easy"]["first_step"]
    n = n_train * len(REAL_FAMILIES)  # every family of every measured training prompt; y_init where not empty
    assert n <= fs["sequences"] <= n + n_train and len(fs["predicted"]) == fs["sequences"]
    assert (tmp_path / "o" / "claims.txt").is_file()


def test_dpo_dynamics_on_your_own_pairs(chat_gguf, tmp_path, capsys):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(d) + "\n" for d in [
        {"prompt": "Name a fruit.", "chosen": "An apple.", "rejected": "A chair."},
        {"prompt": "Name a colour.", "chosen": "Blue.", "rejected": "Seven."},
        {"prompt": "Name a pet.", "chosen": "A cat.", "rejected": "A cloud.", "split": "test"}]))
    cfg = DPODynamicsConfig(model=str(chat_gguf), pairs=str(pairs), seeds=[0], sft_epochs=1, dpo_epochs=2,
                            batch_size=2, out=str(tmp_path / "o"), threads=1)
    assert cfg.experiment == "dynamics" and cfg.modes is None
    res = dpo_run(cfg)
    r = res["modes"]["user"]["dynamics"]["runs"][0]
    assert r["steps"] == 2 and r["first_step"]["sequences"] == 2 * 2  # two training pairs, chosen and rejected
    assert r["first_step"]["rel_err"] < 0.5
    out = capsys.readouterr().out
    assert "first-order check, one DPO" in out and "measures every line of your file" in out
    model, tok, probes, _ = user_setup(cfg, str(pairs), 0)
    assert all(p.prompt.startswith("<|im_start|>system") and p.prompt.endswith("<|im_start|>assistant\n")
               for p in probes.probes)


@pytest.mark.parametrize("line, says", [
    ('{"prompt": "x", "chosen": "y"}', "pairs.jsonl:2: missing 'rejected'"),
    ('{"prompt": "x", "chosen": "y", "rejected": 3}', "pairs.jsonl:2: 'rejected' must be a string"),
    ('not json', "pairs.jsonl:2"),
    ('{"prompt": "x", "chosen": "y", "rejected": "z", "split": "dev"}', "pairs.jsonl:2: 'split' must be 'train'"),
])
def test_a_bad_pair_file_is_refused_before_any_work(tmp_path, line, says, capsys):
    from tinyld.__main__ import main

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"prompt": "a", "chosen": "b", "rejected": "c"}) + "\n" + line + "\n")
    assert main(["dpo-dynamics", "--pairs", str(pairs), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert says in err and err.count("\n") == 1 and not (tmp_path / "o").exists()


def test_training_examples_of_a_real_llm_are_every_training_prompt(chat_gguf):
    cfg = SFTDynamicsConfig(model=str(chat_gguf), seeds=[0], fast=True, out="o")
    assert cfg.seeds == [0] and cfg.epochs == 3 and cfg.changed
    from tinyld.experiments.common import world_examples
    from tinyld.gguf import load

    _, tok = load(chat_gguf)
    ex = world_examples(cfg, tok, World(0, mode="easy"))
    assert len(ex) == len(World(0).train_items()) and all(isinstance(e, Example) for e in ex)
    assert ex[0].prompt.endswith("<|im_start|>assistant\n") and ex[0].chosen[0].isupper()


def test_dpo_dynamics_on_a_real_llm_file(chat_gguf, tmp_path, capsys):
    cfg = DPODynamicsConfig(model=str(chat_gguf), seeds=[0], sft_epochs=1, dpo_epochs=1, out=str(tmp_path / "o"),
                            threads=1)
    assert (cfg.experiment, cfg.modes, cfg.lr) == ("dynamics", [REAL_PLAN.mode], 5e-6)
    res = dpo_run(cfg)
    r = res["modes"]["easy"]["dynamics"]["runs"][0]
    assert r["steps"] == 5 and set(r["curves"]["train"]) <= set(REAL_FAMILIES) | {"init", "star"}
    for split, n in (("train", REAL_PLAN.train_probes), ("test", REAL_PLAN.test_probes)):
        assert [sum(c.values()) for c in r["answer_classes"][split]] == [n, n]  # before DPO and after its epoch
    n = REAL_PLAN.train_probes * len(REAL_FAMILIES)  # every family of every training-prompt probe, y_init where
    assert n <= r["first_step"]["sequences"] <= n + REAL_PLAN.train_probes  # the first answer was not empty
    out = capsys.readouterr().out
    assert "greedy answers per DPO epoch" in out and "note: --model" in out and "is a real LLM" in out


def _hf_folder(path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(transformers.GPT2Config(n_embd=16, n_layer=1, n_head=2, n_positions=64)) \
        .save_pretrained(path)
    return path


@pytest.mark.parametrize("case, says", [
    ("empty probes", "sft-dynamics --probes must name a JSONL file, got ''"),
    ("empty pairs", "dpo-dynamics --pairs must name a JSONL file, got ''"),
    ("not a gguf", "is a file but not a GGUF file (it does not start with 'GGUF')"),
    ("gguf folder", "a folder, not a GGUF file"),
    ("bad hf config", "lacks the GPT-2 field"),
    ("words the tiny model does not know", "probes.jsonl:1: prompt + 'chosen'"),
    ("same pair", "pairs.jsonl:1: chosen and rejected are the same text"),
    ("attribution on a real LLM", "on --model smollm2 there is no attribution run"),
    ("pretraining a folder used as it is", "is used as it is here; --pretrain-steps is for the world models"),
    ("duplicate key", "pairs.jsonl:1: the key 'prompt' appears twice"),
    ("bench step --eta", "bench --eta is the step of bench decompose's prediction check"),
    ("bench --vocab 0", "bench --vocab must be an integer in [2, 1000000]"),
    ("samples with pairs", "(the one experiment of a real LLM or your own --pairs)"),
    ("old flag beside --model", "--model alone: leave --preset out"),
])
def test_a_bad_model_or_file_is_refused_before_the_run_folder(case, says, tmp_path, capsys):
    from tinyld.__main__ import main

    (tmp_path / "x.gguf").mkdir()
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text("{}")
    probes = tmp_path / "probes.jsonl"
    probes.write_text(json.dumps({"prompt": "Name a fruit.", "chosen": "An apple.", "rejected": "A chair."}) + "\n")
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"prompt": "where does alice live ?", "chosen": "alice lives in rome .",
                                 "rejected": "alice lives in rome ."}) + "\n")
    out = ["--out", str(tmp_path / "o")]
    argv = {
        "empty probes": ["sft-dynamics", "--probes", ""],
        "empty pairs": ["dpo-dynamics", "--pairs", ""],
        "not a gguf": ["sft-dynamics", "--model", str(tmp_path / "notes.txt")],
        "gguf folder": ["dpo-dynamics", "--model", str(tmp_path / "x.gguf")],
        "bad hf config": ["sft-dynamics", "--model", str(tmp_path / "hf")],
        "words the tiny model does not know": ["sft-dynamics", "--probes", str(probes)],
        "same pair": ["dpo-dynamics", "--pairs", str(pairs)],
        "attribution on a real LLM": ["sft-dynamics", "--model", "smollm2", "--attr-lr", "0.5"],
        "pretraining a folder used as it is": ["sft-dynamics", "--probes", str(probes), "--model",
                                               str(tmp_path / "hf"), "--pretrain-steps", "5"],
        "duplicate key": ["dpo-dynamics", "--pairs", str(pairs)],
        "bench step --eta": ["bench", "step", "--eta", "0.5"],
        "bench --vocab 0": ["bench", "step", "--vocab", "0"],
        "samples with pairs": ["dpo-dynamics", "--pairs", str(pairs), "--samples", "3"],
        "old flag beside --model": ["sft-dynamics", "--model", "tiny", "--preset", "gpt2"],
    }[case]
    if case == "duplicate key":
        pairs.write_text('{"prompt": "a", "chosen": "b", "rejected": "c", "prompt": "z"}\n')
    assert main(argv + (out if argv[0] != "bench" else [])) == 2
    err = capsys.readouterr().err
    assert says in err and err.count("\n") == 1 and "Traceback" not in err, err
    assert not (tmp_path / "o").exists()


def test_a_byte_order_mark_is_no_content(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_bytes("\ufeff".encode() + json.dumps({"prompt": "a", "chosen": "b", "rejected": "c"}).encode() + b"\n")
    assert ProbeSet.load(f).probes[0].prompt == "a"
