import json

import pytest
import torch

from tinyld import TinyldError
from tinyld.data import IGNORE, Batch, Example, PairData, TextStream, make_batch, read_jsonl, write_jsonl


def test_batch_masks_prompt_and_padding(wtok):
    b = make_batch(wtok, ["question : where does alice live ? answer :"], ["alice lives in paris ."])
    x = wtok.encode("question : where does alice live ? answer :")
    y = wtok.encode("alice lives in paris .") + [wtok.eos_id]
    assert b.idx[0].tolist() == (x + y)[:-1]
    want = [IGNORE] * (len(x) - 1) + y  # position t predicts token t+1; the first scored one is y_0
    assert b.targets[0].tolist() == want


def test_padding_is_ignored_and_right_aligned(wtok):
    b = make_batch(wtok, ["a", "question : where"], ["alice lives in paris . zoe has a cat .", "bob"])
    row = b.targets[1]
    n = len(wtok.encode("question : where bob")) + 1  # + EOS
    assert (row[n - 1:] == IGNORE).all() and (b.idx[1, n - 1:] == wtok.pad_id).all()


def test_bad_batches(wtok):
    with pytest.raises(TinyldError, match="mismatched batch lengths: 2 prompts but 1 responses"):
        make_batch(wtok, ["a", "b"], ["c"])
    with pytest.raises(TinyldError, match="empty response"):
        make_batch(wtok, ["question : where"], ["   "])
    with pytest.raises(TinyldError, match="has no response"):
        make_batch(wtok, ["question : where"], [None])
    with pytest.raises(TinyldError, match="mismatched batch: idx has shape"):
        Batch(torch.zeros(2, 5, dtype=torch.long), torch.zeros(2, 4, dtype=torch.long))
    long = " ".join(["alice"] * 70)
    with pytest.raises(TinyldError, match="block_size=64"):
        make_batch(wtok, ["question :"], [long], block_size=64)


def test_jsonl_roundtrip_and_errors(tmp_path):
    ex = [Example("q1", "a1", "r1", {"split": "train"}), Example("q2", "a2")]
    p = tmp_path / "d.jsonl"
    write_jsonl(p, ex)
    assert read_jsonl(p) == ex
    p.write_text(json.dumps({"prompt": "q"}) + "\n")
    with pytest.raises(TinyldError, match=r"d.jsonl:1: prompt with no response"):
        read_jsonl(p)
    p.write_text('{"prompt": "q", "chosen": "a"}\n{oops\n')
    with pytest.raises(TinyldError, match=r"d.jsonl:2: not valid JSON"):
        read_jsonl(p)


def test_batches_are_a_function_of_step(world, wtok):
    s = TextStream(wtok, world.pretrain_docs(), 32, 4, seed=3)
    assert torch.equal(s.batch(7).idx, TextStream(wtok, world.pretrain_docs(), 32, 4, seed=3).batch(7).idx)
    assert not torch.equal(s.batch(7).idx, s.batch(8).idx)
    assert torch.equal(s.batch(0).targets[:, :-1], s.batch(0).idx[:, 1:])  # targets are inputs shifted by one
    d = PairData(wtok, [i.example() for i in world.train_items()], 8, seed=1)
    seen = [tuple(r) for s_ in range(d.batches_per_epoch) for r in d.batch(s_).idx.tolist()]
    assert len(set(seen)) == d.batches_per_epoch * 8  # one epoch visits distinct examples
