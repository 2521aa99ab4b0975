import json
from pathlib import Path

import pytest
import torch

from tinyld import GPT, GPTConfig, TinyldError, TrainingDiverged
from tinyld.checkpoints import load_checkpoint, load_model, save_checkpoint
from tinyld.data import PairData, TextStream
from tinyld.train import TrainConfig, Trainer


def _setup(world, wtok, task="pretrain", optimizer="adamw", seed=0, **kw):
    torch.manual_seed(seed)
    model = GPT(GPTConfig.preset("tiny", vocab_size=wtok.vocab_size)).double()
    if task == "pretrain":
        data = TextStream(wtok, world.pretrain_docs(), 32, 4, seed=seed)
    else:
        data = PairData(wtok, [i.example() for i in world.train_items()], 4, seed=seed)
    cfg = TrainConfig(task=task, optimizer=optimizer, lr=1e-3 if optimizer != "sgd" else 1e-2, warmup_steps=2,
                      log_every=1, progress=False, **kw)
    return Trainer(model, data, cfg, wtok)


def _params(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


@pytest.mark.parametrize("task", ["pretrain", "sft"])
@pytest.mark.parametrize("optimizer", ["sgd", "adamw", "rmsprop"])
def test_exact_resume(world, wtok, tmp_path, task, optimizer):
    full = _setup(world, wtok, task, optimizer, steps=8)
    full.run()
    half = _setup(world, wtok, task, optimizer, steps=4, out_dir=str(tmp_path))
    half.run()
    resumed = Trainer.resume(tmp_path / "last.pt", half.data, wtok, steps=8)
    assert resumed.step == 4
    resumed.run()
    assert torch.equal(_params(resumed.model), _params(full.model))
    assert [r["loss"] for r in full.history[4:]] == [r["loss"] for r in resumed.history]


def test_training_reduces_loss(world, wtok):
    tr = _setup(world, wtok, steps=60)
    h = tr.run()
    assert h[-1]["loss"] < 0.7 * h[0]["loss"]


def test_checkpoint_roundtrip(world, wtok, tmp_path):
    tr = _setup(world, wtok, steps=3, out_dir=str(tmp_path))
    tr.run()
    model, tok, ck = load_model(tmp_path / "last.pt")
    assert ck["step"] == 3 and ck["format_version"] == 1 and ck["train_config"]["lr"] == 1e-3
    assert tok.itos == wtok.itos and model.config == tr.model.config
    x = torch.randint(0, wtok.vocab_size, (2, 10))
    assert torch.equal(model(x), tr.model(x))
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert log[0]["event"] == "start" and "versions" in log[0] and [r["step"] for r in log[1:]] == [0, 1, 2]


class _Evil:
    def __reduce__(self):  # would run code when unpickled
        return (print, ("this must never run",))


def test_bad_checkpoints(world, wtok, tmp_path):
    with pytest.raises(TinyldError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "nope.pt")
    tr = _setup(world, wtok, steps=1)
    p = save_checkpoint(tmp_path / "a.pt", tr.model, wtok)
    raw = p.read_bytes()
    (tmp_path / "trunc.pt").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(TinyldError, match="truncated or corrupt"):
        load_checkpoint(tmp_path / "trunc.pt")
    torch.save({"format": "tinyld-checkpoint", "payload": _Evil()}, tmp_path / "evil.pt")
    with pytest.raises(TinyldError, match="carries Python code"):
        load_checkpoint(tmp_path / "evil.pt")
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(TinyldError, match="not a tinyld checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    ck = torch.load(p, weights_only=False)
    torch.save({**ck, "format_version": 99}, tmp_path / "future.pt")
    with pytest.raises(TinyldError, match="format version 99"):
        load_checkpoint(tmp_path / "future.pt")
    torch.save({**ck, "model_config": {**ck["model_config"], "n_embd": 32, "n_head": 2}}, tmp_path / "bad.pt")
    with pytest.raises(TinyldError, match="do not fit its config"):
        load_model(tmp_path / "bad.pt")
    other = type(wtok)(wtok.itos[3:-1])
    with pytest.raises(TinyldError, match="tokenizer"):
        Trainer.resume(p, tr.data, other)


def test_nan_loss_stops_names_step_and_keeps_last_good_checkpoint(world, wtok, tmp_path):
    tr = _setup(world, wtok, steps=20, ckpt_every=3, out_dir=str(tmp_path))

    def poison(trainer, step):
        if step == 7:
            with torch.no_grad():
                trainer.model.ln_f.weight.fill_(float("nan"))

    with pytest.raises(TrainingDiverged, match=r"loss became nan at step 7.*last.pt \(step 6\)"):
        tr.run(callback=poison)
    model, _, ck = load_model(tmp_path / "last.pt")
    assert ck["step"] == 6 and all(torch.isfinite(p).all() for p in model.parameters())


def test_interrupted_run_resumes_from_last_checkpoint(world, wtok, tmp_path):
    full = _setup(world, wtok, steps=10)
    full.run()
    tr = _setup(world, wtok, steps=10, ckpt_every=4, out_dir=str(tmp_path))

    def interrupt(trainer, step):
        if step == 6:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        tr.run(callback=interrupt)
    resumed = Trainer.resume(tmp_path / "last.pt", tr.data, wtok)
    assert resumed.step == 6
    resumed.run()
    assert torch.equal(_params(resumed.model), _params(full.model))


def test_interrupt_mid_update_keeps_the_last_clean_checkpoint(world, wtok, tmp_path):
    full = _setup(world, wtok, steps=10)
    full.run()
    tr = _setup(world, wtok, steps=10, ckpt_every=4, out_dir=str(tmp_path))
    real_step = tr.opt.step

    def step_then_interrupt(*a, **kw):
        real_step(*a, **kw)
        if tr.step == 6:  # parameters updated, step counter not yet: a torn state must not be saved
            raise KeyboardInterrupt

    tr.opt.step = step_then_interrupt
    with pytest.raises(KeyboardInterrupt):
        tr.run()
    resumed = Trainer.resume(tmp_path / "last.pt", tr.data, wtok)
    assert resumed.step == 4
    resumed.run()
    assert torch.equal(_params(resumed.model), _params(full.model))


@pytest.mark.parametrize("kw, msg", [
    (dict(task="rlhf"), "unknown task 'rlhf'"),
    (dict(optimizer="lion"), "unknown optimizer 'lion'"),
    (dict(lr=float("nan")), "TrainConfig.lr must be a positive finite number"),
])
def test_bad_train_config(kw, msg):
    with pytest.raises(TinyldError, match=msg):
        TrainConfig(**kw)
    with pytest.raises(TinyldError, match=r"unknown TrainConfig field\(s\) \['epochs'\]"):
        TrainConfig.from_dict({"epochs": 3})


def test_golden_first_losses():
    """A fixed seed on the CPU reproduces the first training losses.
    Regenerate the fixture: python -m tinyld golden --write tests/golden/first_losses.json"""
    from tinyld.demo import golden_losses

    want = json.loads((Path(__file__).parent / "golden" / "first_losses.json").read_text())
    got = golden_losses()
    assert got.keys() == want.keys()
    for k in want:
        torch.testing.assert_close(torch.tensor(got[k]), torch.tensor(want[k]), rtol=1e-12, atol=0, msg=k)
