"""tinyld.integrations.trl.ProbeCallback inside a real TRL DPOTrainer run (two steps of a tiny random-init Hugging
Face GPT-2 on the CPU): its measurements against log π computed by hand from the model's logits, and against the
log-probabilities TRL itself logs for the batch of the next step."""
import copy
import json

import pytest
import torch

trl = pytest.importorskip("trl", reason="TRL is not installed (pip install 'tinyld[trl]')")
pytest.importorskip("datasets")

from datasets import Dataset  # noqa: E402
from tokenizers import Tokenizer, models, pre_tokenizers  # noqa: E402
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast  # noqa: E402

from tinyld import TinyldError  # noqa: E402
from tinyld.data import Example  # noqa: E402
from tinyld.integrations.trl import ProbeCallback, pair_ids  # noqa: E402

WORDS = ("<eos> <unk> question : where does judy tom live ? answer lives in delhi cairo paris rome . user assistant"
         .split())
TEMPLATE = ("{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} <eos> {% endfor %}"
            "{% if add_generation_prompt %}assistant : {% endif %}")
ROWS = [{"prompt": "question : where does judy live ? answer :", "chosen": " judy lives in delhi .",
         "rejected": " judy lives in cairo ."},
        {"prompt": "question : where does tom live ? answer :", "chosen": " tom lives in paris .",
         "rejected": " tom lives in rome . ."}]


def word_tokenizer():
    """A word-level Hugging Face tokenizer over WORDS (built as an object: GPT2TokenizerFast(vocab_file=…,
    merges_file=…) would silently be empty)."""
    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<eos>", pad_token="<eos>", unk_token="<unk>")
    assert len(tok) == len(WORDS)
    return tok


def by_hand(model, tok, row) -> tuple[float, float, float]:
    """log π(y⁺|x), log π(y⁻|x) and log π(y*|x) along y⁺ from the model's logits, the tokens built by hand."""
    out = []
    for resp in (row["chosen"], row["rejected"]):
        p = tok(row["prompt"])["input_ids"]
        y = tok(resp)["input_ids"] + [tok.eos_token_id]
        with torch.no_grad():
            logp = model.eval()(torch.tensor([p + y])).logits[0].log_softmax(-1)
        rows = logp[len(p) - 1:len(p) - 1 + len(y)]  # the rows that predict y
        out.append((rows[torch.arange(len(y)), torch.tensor(y)].sum().item(), rows.amax(-1).sum().item()))
    return out[0][0], out[1][0], out[0][1]


def test_the_callback_in_two_dpo_trainer_steps(tmp_path):
    from trl import DPOConfig, DPOTrainer

    tok = word_tokenizer()
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=32, n_embd=16, n_layer=1, n_head=2,
                                       bos_token_id=0, eos_token_id=0))
    start = copy.deepcopy(model)
    cb = ProbeCallback(ROWS, every=1, out=tmp_path / "probe")
    args = DPOConfig(output_dir=str(tmp_path / "run"), per_device_train_batch_size=2, max_steps=2, learning_rate=1e-2,
                     beta=0.1, report_to=[], logging_steps=1, save_strategy="no", use_cpu=True, disable_tqdm=True,
                     bf16=False)  # TRL's default bf16 autocasts every forward, the callback's too: float32 here
    trainer = DPOTrainer(model=model, ref_model=copy.deepcopy(model), args=args,  # in memory: an explicit reference
                         train_dataset=Dataset.from_list(ROWS), processing_class=tok, callbacks=[cb])
    for k, row in enumerate(trainer.train_dataset):  # the callback tokenizes the pairs as TRL did
        assert pair_ids(tok, Example(**ROWS[k])) == (row["prompt_ids"], row["chosen_ids"], row["rejected_ids"])
    trainer.train()
    assert cb.steps == [0, 1, 2]
    for k, row in enumerate(ROWS):  # before training and after it, against the logits by hand
        for i, m in ((0, start), (-1, trainer.model)):
            want = by_hand(m, tok, row)
            got = (cb.history[i]["chosen"][k], cb.history[i]["rejected"][k], cb.history[i]["star"][k])
            assert got == pytest.approx(want, abs=1e-5), (k, i)
    logged = [h for h in trainer.state.log_history if "logps/chosen" in h]
    assert len(logged) == 2 and all("probe/chosen" in h for h in logged)
    assert logged[0]["logps/chosen"] == pytest.approx(sum(cb.history[0]["chosen"]) / 2, abs=1e-4)
    # TRL's step-2 batch is every pair, scored by the model after step 1: its log-probs are the callback's
    assert logged[1]["logps/chosen"] == pytest.approx(sum(cb.history[1]["chosen"]) / 2, abs=1e-4)
    assert logged[1]["logps/rejected"] == pytest.approx(sum(cb.history[1]["rejected"]) / 2, abs=1e-4)
    assert logged[0]["probe/chosen"] == pytest.approx(sum(cb.history[1]["chosen"]) / 2)
    for masses in cb.history[-1]["mass"]:
        assert sum(masses["chosen"].values()) == pytest.approx(1.0, abs=1e-6)
    table = [json.loads(line) for line in (tmp_path / "probe" / "probes.jsonl").read_text().splitlines()]
    assert [(r["step"], r["pair"]) for r in table] == [(s, k) for s in (0, 1, 2) for k in (0, 1)]
    res = json.loads((tmp_path / "probe" / "explain.json").read_text())
    assert res["run"]["pairs"][1]["chosen"] == [r["chosen"] for r in table if r["pair"] == 1]
    assert [t["token"] for t in res["run"]["tokens"][0]["chosen"]] == ["judy", "lives", "in", "delhi", ".", "<eos>"]
    page = (tmp_path / "probe" / "report.html").read_text()
    assert 'id="pair-1"' in page and page.count("<svg") == 3 and "<script" not in page


def test_chat_pairs_are_tokenized_as_trl_does(tmp_path):
    """Pairs as chat messages go through the tokenizer's chat template: the same ids as TRL's own dataset."""
    from trl import DPOConfig, DPOTrainer

    tok = word_tokenizer()
    tok.chat_template = TEMPLATE
    rows = [{"prompt": [{"role": "user", "content": r["prompt"]}],
             "chosen": [{"role": "assistant", "content": r["chosen"]}],
             "rejected": [{"role": "assistant", "content": r["rejected"]}]} for r in ROWS]
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=48, n_embd=16, n_layer=1, n_head=2))
    args = DPOConfig(output_dir=str(tmp_path / "run"), max_steps=1, report_to=[], use_cpu=True, bf16=False)
    trainer = DPOTrainer(model=model, ref_model=copy.deepcopy(model), args=args, train_dataset=Dataset.from_list(rows),
                         processing_class=tok)
    for k, row in enumerate(trainer.train_dataset):
        ids = pair_ids(tok, Example(rows[k]["prompt"], rows[k]["chosen"], rows[k]["rejected"]))
        assert ids == (row["prompt_ids"], row["chosen_ids"], row["rejected_ids"]) and ids[1][-1] == tok.eos_token_id


def test_a_probe_file_gives_every_line(tmp_path):
    import json

    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps({**r, **({"split": "test"} if k else {})}) + "\n" for k, r in enumerate(ROWS)))
    assert [(e.prompt, e.chosen, e.rejected) for e in ProbeCallback(path).examples] == [
        (r["prompt"], r["chosen"], r["rejected"]) for r in ROWS]


def test_bad_pairs_and_an_empty_tokenizer_are_one_line_each():
    with pytest.raises(TinyldError, match="pair 0: give a dict with prompt, chosen and rejected"):
        ProbeCallback([{"prompt": "x", "chosen": "y"}])
    with pytest.raises(TinyldError, match="at least one probe pair"):
        ProbeCallback([])
    from transformers import GPT2TokenizerFast

    from tinyld.tokenizers import gpt2_files

    cb = ProbeCallback(ROWS)
    d = gpt2_files()  # GPT-2's own encoder.json and vocab.bpe, yet the tokenizer built from them is empty
    empty = GPT2TokenizerFast(vocab_file=str(d / "encoder.json"), merges_file=str(d / "vocab.bpe"))
    assert empty("hello world")["input_ids"] == []
    with pytest.raises(TinyldError, match="is empty"):
        cb._batch(empty, "cpu")
