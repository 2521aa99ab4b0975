"""tinyld's promises to its users, one test each: bad input gets one clear error that names the value and the fix,
never a raw traceback; no number it prints is silently wrong; no work is lost or poisoned.

Sections: the six cases that once broke a promise · the command line · configs and public arguments · the
dynamics engine · training, checkpoints and resume · files · found by adversarial review · the SFT-dynamics
experiment · an experiment's run in its folder (lock, manifest, parts, --resume, --overwrite).
"""
import errno
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tinyld import GPT, GPTConfig, TinyldError, TrainingDiverged
from tinyld.__main__ import main
from tinyld.checkpoints import load_checkpoint, load_model, save_checkpoint
from tinyld.data import Example, PairData, TextStream, make_batch, read_jsonl
from tinyld.dynamics import one_step, step_size_for
from tinyld.kernel import kernel_restricted, predict
from tinyld.runtime import TrainingInterrupted
from tinyld.train import TrainConfig, Trainer
from tinyld.updates import DPOUpdate, ResidualUpdate, SFTUpdate, lm_rows
from tinyld.world import World


def _params(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def _trainer(world, wtok, out=None, steps=10, seed=0, **kw):
    torch.manual_seed(seed)
    model = GPT(GPTConfig.preset("tiny", vocab_size=wtok.vocab_size)).double()
    data = TextStream(wtok, world.pretrain_docs(), 32, 4, seed=seed)
    cfg = TrainConfig(steps=steps, lr=kw.pop("lr", 1e-3), log_every=1, progress=False,
                      out_dir=str(out) if out else None, **kw)
    return Trainer(model, data, cfg, wtok)


def _item_batches(world, wtok, n=1):
    items = world.train_items()[:n]
    chosen = lm_rows(make_batch(wtok, [i.prompt for i in items], [i.chosen for i in items]))
    rejected = lm_rows(make_batch(wtok, [i.prompt for i in items], [i.rejected for i in items]))
    return items, chosen, rejected


# ==============================================================================================================
# 1. The six cases that once broke a promise
# ==============================================================================================================


def test_an_update_that_poisons_the_weights_stops_the_run_and_keeps_the_last_good_checkpoint(world, wtok, tmp_path):
    """Divergence is checked on the weights after the step, not only on the loss and gradient before it."""
    tr = _trainer(world, wtok, tmp_path, steps=10, ckpt_every=2)
    real_step = tr.opt.step

    def step_to_nan(*a, **kw):  # what SGD with a NaN momentum does: a finite gradient, NaN weights after the step
        real_step(*a, **kw)
        if tr.step == 5:
            with torch.no_grad():
                tr.model.h[0].mlp.c_fc.weight[0, 0] = float("nan")

    tr.opt.step = step_to_nan
    with pytest.raises(TrainingDiverged, match=r"h\.0\.mlp\.c_fc\.weight.*at step 5.*last\.pt \(step 4\)"):
        tr.run()
    model, _, ck = load_model(tmp_path / "last.pt")
    assert ck["step"] == 4 and torch.isfinite(_params(model)).all()


def test_weights_that_give_nan_logits_are_never_saved(world, wtok, tmp_path):
    """AdamW at lr 1e6: the weights stay finite but the logits overflow. No checkpoint may hold them."""
    tr = _trainer(world, wtok, tmp_path, steps=5, ckpt_every=1, lr=1e6)
    tr.model.float()
    tr.opt = torch.optim.AdamW(tr.model.parameters(), lr=1e6)
    with pytest.raises(TrainingDiverged, match="not finite"):
        tr.run()
    if (tmp_path / "last.pt").exists():  # whatever was saved before the blow-up is healthy
        model, _, _ = load_model(tmp_path / "last.pt")
        x = torch.randint(0, wtok.vocab_size, (2, 16))
        assert torch.isfinite(model(x)).all()


def test_ctrl_c_during_the_forward_pass_saves_at_the_step_boundary(world, wtok, tmp_path):
    """A real SIGINT in the middle of a step: the step finishes, a checkpoint is written, the run resumes exactly."""
    full = _trainer(world, wtok, steps=8)
    full.run()
    tr = _trainer(world, wtok, tmp_path, steps=8)  # no ckpt_every: only the interrupt can save

    def ctrl_c(module, args):
        if tr.step == 3 and module.training:
            signal.raise_signal(signal.SIGINT)

    hook = tr.model.register_forward_pre_hook(ctrl_c)
    with pytest.raises(TrainingInterrupted, match="interrupted at step 4"):
        tr.run()
    hook.remove()
    resumed = Trainer.resume(tmp_path / "last.pt", tr.data, wtok)
    assert resumed.step == 4
    resumed.run()
    assert torch.equal(_params(resumed.model), _params(full.model))


def test_keyboard_interrupt_before_the_update_saves_the_clean_state(world, wtok, tmp_path):
    """An interrupt raised while the batch is read (nothing changed yet) still writes a checkpoint."""
    tr = _trainer(world, wtok, tmp_path, steps=8)
    real_batch, calls = tr.data.batch, []

    def batch(step):
        calls.append(step)
        if calls.count(3) == 1 and step == 3:  # once: as if Ctrl-C came while the batch was read
            raise KeyboardInterrupt
        return real_batch(step)

    tr.data.batch = batch
    with pytest.raises(KeyboardInterrupt):
        tr.run()
    assert load_checkpoint(tmp_path / "last.pt")["step"] == 3


def test_ctrl_c_on_the_cli_saves_and_prints_one_message(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen([sys.executable, "-m", "tinyld", "demo", "--pretrain-steps", "100000", "--threads", "1",
                          "--out", str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    lock = tmp_path / "pretrain" / ".lock"
    t0 = time.time()
    while not lock.exists() and time.time() - t0 < 120 and p.poll() is None:
        time.sleep(0.05)
    time.sleep(0.5)  # well inside pretraining
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    assert "Traceback" not in err and "interrupted at step" in err
    assert load_checkpoint(tmp_path / "pretrain" / "last.pt")["step"] > 0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_models_are_refused_by_the_engine(world, wtok, dtype):
    """Forward-mode AD in float16 overflows to NaN: refuse, never return NaN predictions."""
    torch.manual_seed(0)
    model = GPT(GPTConfig.preset("tiny", vocab_size=wtok.vocab_size)).to(dtype).eval()
    _, rows, _ = _item_batches(world, wtok)
    with pytest.raises(TinyldError, match=f"{str(dtype).split('.')[1]}.*model.float"):
        predict(model, rows, SFTUpdate(rows), 1e-3)


def test_dpo_reference_of_the_wrong_length_is_refused(world, wtok, tiny64):
    _, c, r = _item_batches(world, wtok, n=2)
    with pytest.raises(TinyldError, match=r"ref_chosen must hold one float log-prob per pair, shape \(2,\)"):
        DPOUpdate(c, r, torch.tensor([-3.0]), torch.tensor([-4.0, -5.0]))
    with pytest.raises(TinyldError, match=r"ref_rejected .* shape \(2,\); got shape \(3,\)"):
        DPOUpdate(c, r, torch.tensor([-3.0, -4.0]), torch.tensor([-4.0, -5.0, -6.0]))
    with pytest.raises(TinyldError, match=r"shape \(2,\); got shape \(\)"):
        DPOUpdate(c, r, -3.0, -4.0)


def test_dpo_reference_as_python_numbers_equals_tensors_for_one_pair(world, wtok, tiny64):
    _, c, r = _item_batches(world, wtok, n=1)
    a = DPOUpdate(c, r, -3.0, -4.0)
    b = DPOUpdate(c, r, torch.tensor([-3.0], dtype=torch.float64), torch.tensor([-4.0], dtype=torch.float64))
    torch.testing.assert_close(predict(tiny64, c, a, 1e-3), predict(tiny64, c, b, 1e-3), rtol=0, atol=0)


def test_one_step_refuses_an_optimizer_of_another_model(world, wtok, tiny64):
    other = GPT(GPTConfig.preset("tiny", vocab_size=wtok.vocab_size)).double()
    _, rows, _ = _item_batches(world, wtok)
    before = _params(tiny64).clone()
    with pytest.raises(TinyldError, match="not this model's"):
        one_step(tiny64, SFTUpdate(rows), rows, 1e-3, optimizer=torch.optim.SGD(other.parameters(), lr=1e-3))
    assert torch.equal(_params(tiny64), before)


def test_an_interrupt_inside_one_step_leaves_model_and_optimizer_untouched(world, wtok, tiny64, monkeypatch):
    import tinyld.dynamics as dyn

    _, rows, _ = _item_batches(world, wtok)
    opt = torch.optim.Adam(tiny64.parameters(), lr=1e-4)
    one_step(tiny64, SFTUpdate(rows), rows, 1e-4, optimizer=opt, commit=True)  # Adam now has state
    before, state = _params(tiny64).clone(), {k: v.clone() for k, v in opt.state[next(iter(opt.state))].items()}

    def interrupted(*a, **kw):  # after the real step, while predicting
        raise KeyboardInterrupt

    monkeypatch.setattr(dyn, "jvp_rows", interrupted)
    with pytest.raises(KeyboardInterrupt):
        one_step(tiny64, SFTUpdate(rows), rows, 1e-4, optimizer=opt)
    assert torch.equal(_params(tiny64), before)
    after = opt.state[next(iter(opt.state))]
    assert all(torch.equal(after[k], v) for k, v in state.items())


@pytest.mark.parametrize("field", ["scale_attn_weights", "tie_word_embeddings"])
def test_from_hf_follows_the_gpt2_options_that_change_outputs(tmp_path, field):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(vocab_size=97, n_positions=40, n_embd=48, n_layer=2, n_head=4,
                                  initializer_range=0.2, **{field: False})
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(cfg).eval()
    if field == "tie_word_embeddings":
        assert not torch.equal(hf.lm_head.weight, hf.transformer.wte.weight)
    hf.save_pretrained(tmp_path)
    ours = GPT.from_hf(tmp_path).eval()
    x = torch.randint(0, 97, (2, 30), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = hf(x).logits
        diff = (ref - ours(x)).abs().max().item()
    assert diff <= 1e-5, diff
    assert ref.abs().max() > 1.0  # logits large enough that ignoring the option would show


def test_from_hf_refuses_options_it_cannot_reproduce(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_embd": 48, "n_layer": 2, "n_head": 4,
                                                      "vocab_size": 97, "n_positions": 40,
                                                      "scale_attn_by_inverse_layer_idx": True}))
    with pytest.raises(TinyldError, match="scale_attn_by_inverse_layer_idx=true .* not supported"):
        GPT.from_hf(tmp_path)


# ==============================================================================================================
# 2. The command line: one line, no traceback, before any work
# ==============================================================================================================

CLI_BAD = [
    (["demo", "--model", "huge"], "demo --model 'huge' is neither a model name nor a file or folder"),
    (["demo", "--model", "gpt2"], "demo takes tiny (the synthetic world's small GPT) or mini (a wider shape)"),
    (["demo", "--preset", "mini"], "demo --preset is gone: every command names its model with --model (here: demo "
     "--model mini)"),
    (["sft-dynamics", "--hf", "gpt2_folder"], "(here: sft-dynamics --model gpt2_folder)"),
    (["dpo-dynamics", "--preset", "gpt2"], "(here: dpo-dynamics --model gpt2)"),
    (["bench", "step", "--preset", "mini"], "(here: bench --model mini)"),
    (["forecast", "--model", "gpt2"], "forecast takes tiny (the synthetic world's small GPT); it trains many tiny"),
    (["sft-dynamics", "--model", "mini"], "mini is a from-scratch shape for demo and bench"),
    (["sft-dynamics", "--model", "smollm2", "--pretrain-steps", "10"], "--model smollm2 is used as it is here"),
    (["sft-dynamics", "--model", "smollm2", "--conditions"], "it would take hours on a CPU"),
    (["dpo-dynamics", "--model", "smollm2", "--experiment", "on-policy"], "with --model smollm2 the run is "
     "--experiment dynamics"),
    (["sft-dynamics", "--model", "no/such.gguf"], "no such GGUF file"),
    (["demo", "--pretrain-steps", "0"], "--pretrain-steps must be an integer ≥ 1, got 0"),
    (["demo", "--pretrain-lr", "nan"], "--pretrain-lr must be a positive finite number, got nan"),
    (["demo", "--sft-lr", "-1"], "--sft-lr must be a positive finite number"),
    (["demo", "--sft-steps", "-5"], "--sft-steps must be an integer ≥ 1"),
    (["demo", "--seed", "-1"], "--seed must be an integer in [0, 2147483647]"),
    (["demo", "--seed", "100000000000000"], "--seed must be an integer in [0, 2147483647]"),
    (["demo", "--threads", "0"], "--threads must be an integer in [1, 256]"),
    (["demo", "--device", "tpu"], "unknown device 'tpu'"),
    (["bench", "step", "--batch", "0"], "--batch must be an integer in [1, 4096]"),
    (["bench", "decompose", "--seq", "0"], "--seq must be an integer in [1, 8192]"),
    (["bench", "decompose", "--eta", "inf"], "--eta must be a positive finite number"),
    (["bench", "step", "--model", "nope"], "bench --model 'nope' is neither a model name"),
    (["bench", "step", "--repeat", "0"], "--repeat must be an integer in [1, 10000]"),
    (["bench", "step", "--device", "tpu"], "unknown device 'tpu'"),
    (["env", "--device", "tpu"], "unknown device 'tpu'"),
]


@pytest.mark.parametrize("argv, msg", CLI_BAD, ids=[" ".join(a) for a, _ in CLI_BAD])
def test_cli_bad_values_get_one_line(argv, msg, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    t0 = time.perf_counter()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and msg in err[0], err
    assert time.perf_counter() - t0 < 10 and not (tmp_path / "tinyld_out" / "pretrain").exists()  # before work


def test_cli_unwritable_output_folder_is_reported_before_pretraining(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    assert main(["demo", "--out", str(blocker / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot write to the demo output folder" in err


def test_cli_golden_to_a_folder_or_under_a_file(tmp_path, capsys):
    assert main(["golden", "--write", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err
    (tmp_path / "f").write_text("")
    assert main(["golden", "--write", str(tmp_path / "f" / "x.json")]) == 2
    assert "is a file: choose a folder" in capsys.readouterr().err


def test_cli_argparse_rejects_non_numbers_without_a_traceback(capsys):
    with pytest.raises(SystemExit) as e:
        main(["demo", "--pretrain-steps", "many"])
    assert e.value.code == 2 and "invalid int value: 'many'" in capsys.readouterr().err


# ==============================================================================================================
# 3. Configs and public arguments: checked where they enter
# ==============================================================================================================

TRAIN_BAD = [
    (dict(steps=-1), "steps must be an integer ≥ 0"),
    (dict(steps=2.5), "steps must be an integer"),
    (dict(lr=0.0), "lr must be a positive finite number"),
    (dict(lr=float("inf")), "lr must be a positive finite number"),
    (dict(lr="0.1"), "lr must be a positive finite number"),
    (dict(warmup_steps=-3), "warmup_steps must be an integer ≥ 0"),
    (dict(momentum=float("nan")), r"momentum must be a finite number in \[0, 1\)"),
    (dict(momentum=1.5), r"momentum must be a finite number in \[0, 1\)"),
    (dict(weight_decay=-0.1), "weight_decay must be a finite number ≥ 0"),
    (dict(grad_clip=float("nan")), "grad_clip must be a finite number ≥ 0"),
    (dict(log_every=0), "log_every must be an integer ≥ 1"),
    (dict(ckpt_every=-1), "ckpt_every must be an integer ≥ 0"),
    (dict(progress="yes"), "progress must be True or False"),
    (dict(out_dir=5), "out_dir must be a folder path or None"),
    (dict(schedule="linear"), "unknown schedule 'linear'"),
]


@pytest.mark.parametrize("kw, msg", TRAIN_BAD, ids=[next(iter(k)) + "=" + repr(v) for k, _ in TRAIN_BAD
                                                   for v in k.values()])
def test_train_config_is_checked(kw, msg):
    with pytest.raises(TinyldError, match=msg):
        TrainConfig(**kw)


GPT_BAD = [
    (dict(layer_norm_eps=0.0), "layer_norm_eps must be a positive finite number"),
    (dict(dropout=float("nan")), r"dropout must be a finite number in \[0, 1\)"),
    (dict(bias="no"), "bias must be True or False"),
    (dict(n_head=3), "n_embd=64 is not divisible by n_head=3"),
    (dict(vocab_size=0), "vocab_size must be a positive integer"),
]


@pytest.mark.parametrize("kw, msg", GPT_BAD, ids=[next(iter(k)) for k, _ in GPT_BAD])
def test_gpt_config_is_checked(kw, msg):
    with pytest.raises(TinyldError, match=msg):
        GPTConfig.preset("tiny", **kw)


def test_world_and_data_arguments_are_checked(world, wtok):
    with pytest.raises(TinyldError, match=r"n_people must be an integer in \[3, 26\]"):
        World(n_people=2)
    with pytest.raises(TinyldError, match="'nobody' is not a person of this world"):
        world.item("nobody", "city")
    with pytest.raises(TinyldError, match="unknown relation 'age'"):
        world.item(world.people[0], "age")
    with pytest.raises(TinyldError, match="batch_size must be an integer ≥ 1"):
        TextStream(wtok, world.pretrain_docs(), 32, 0)
    with pytest.raises(TinyldError, match="batch_size must be an integer ≥ 1"):
        PairData(wtok, [i.example() for i in world.train_items()], 0)
    with pytest.raises(TinyldError, match="not single strings"):
        make_batch(wtok, "question : where", "alice lives in paris .")
    with pytest.raises(TinyldError, match="data source with a .batch"):
        Trainer(GPT(GPTConfig.preset("tiny", vocab_size=wtok.vocab_size)), [1, 2, 3], TrainConfig())


# ==============================================================================================================
# 4. The dynamics engine: refuses what it cannot compute exactly
# ==============================================================================================================


def test_engine_refuses_a_model_with_nan_weights(world, wtok, tiny64):
    _, rows, _ = _item_batches(world, wtok)
    with torch.no_grad():
        tiny64.h[1].attn.c_proj.bias[3] = float("nan")
    with pytest.raises(TinyldError, match=r"'h\.1\.attn\.c_proj\.bias' holds NaN or inf"):
        predict(tiny64, rows, SFTUpdate(rows), 1e-3)


def test_engine_reports_a_prediction_that_overflows(world, wtok):
    torch.manual_seed(0)
    model = GPT(GPTConfig.preset("tiny", vocab_size=wtok.vocab_size)).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(1e37)  # finite weights, logits past float32's range
    _, rows, _ = _item_batches(world, wtok)
    with pytest.raises(TinyldError, match="came out NaN or inf"):
        predict(model, rows, SFTUpdate(rows), 1e-3)


@pytest.mark.parametrize("eta", [0.0, -1e-3, float("nan"), True, "0.1"])
def test_engine_learning_rate_is_checked(world, wtok, tiny64, eta):
    _, rows, _ = _item_batches(world, wtok)
    with pytest.raises(TinyldError, match="eta must be a positive finite number"):
        predict(tiny64, rows, SFTUpdate(rows), eta)


def test_dpo_beta_and_reference_values_are_checked(world, wtok):
    _, c, r = _item_batches(world, wtok)
    with pytest.raises(TinyldError, match="beta must be a positive finite number"):
        DPOUpdate(c, r, -3.0, -4.0, beta=0.0)
    with pytest.raises(TinyldError, match=r"finite log-probabilities \(≤ 0; not a loss\)"):
        DPOUpdate(c, r, 3.0, 4.0)  # a loss (−log π) passed where log π belongs
    with pytest.raises(TinyldError, match="finite log-probabilities"):
        DPOUpdate(c, r, float("nan"), -4.0)
    with pytest.raises(TinyldError, match="must be a tensor of 1 summed log-probs"):
        DPOUpdate(c, r, "ref", -4.0)


def test_residual_update_shape_and_values_are_checked(world, wtok):
    _, rows, _ = _item_batches(world, wtok)
    with pytest.raises(TinyldError, match=r"G has 3 rows but the updating batch has \d+ scored positions"):
        ResidualUpdate(rows, torch.zeros(3, wtok.vocab_size, dtype=torch.float64))
    with pytest.raises(TinyldError, match="G holds NaN or inf"):
        ResidualUpdate(rows, torch.full((rows.n, wtok.vocab_size), float("nan")))
    with pytest.raises(TinyldError, match=r"G must be a float tensor of shape \(N_u, V\)"):
        ResidualUpdate(rows, torch.zeros(rows.n, wtok.vocab_size, dtype=torch.long))


def test_step_size_for_an_update_that_moves_nothing(world, wtok, tiny64):
    _, rows, _ = _item_batches(world, wtok)
    still = ResidualUpdate(rows, torch.zeros(rows.n, wtok.vocab_size, dtype=torch.float64))
    with pytest.raises(TinyldError, match="predicted not to move any observed sequence"):
        step_size_for(tiny64, still, rows)


def test_engine_refuses_things_that_are_not_updates_or_rows(world, wtok, tiny64):
    _, rows, _ = _item_batches(world, wtok)
    with pytest.raises(TinyldError, match="expected an update"):
        predict(tiny64, rows, rows, 1e-3)
    with pytest.raises(TinyldError, match="must be Rows"):
        SFTUpdate(make_batch(wtok, ["question :"], ["alice ."]))


def test_restricted_kernel_selection_is_checked(world, wtok, tiny64):
    _, rows, _ = _item_batches(world, wtok)
    with pytest.raises(TinyldError, match=r"rows in \[0, \d+\) and tokens in \[0, \d+\)"):
        kernel_restricted(tiny64, rows, torch.tensor([[0, 0], [rows.n, 1]]))
    with pytest.raises(TinyldError, match=r"shape \(S, 2\)"):
        kernel_restricted(tiny64, rows, torch.tensor([0, 1]))


# ==============================================================================================================
# 5. Training, checkpoints and resume: no lost or poisoned work
# ==============================================================================================================


def test_a_full_disk_keeps_the_last_good_checkpoint(world, wtok, tmp_path, monkeypatch):
    import tinyld.train as train

    tr = _trainer(world, wtok, tmp_path, steps=6, ckpt_every=2)
    real_save = torch.save

    def disk_full(obj, f, *a, **kw):
        if tr.step >= 4:
            Path(f).write_bytes(b"half a checkpoint")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *a, **kw)

    monkeypatch.setattr(train.torch, "save", disk_full)
    with pytest.raises(TinyldError, match=r"No space left on device.*last\.pt was left as it was"):
        tr.run()
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / "last.pt")["step"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "log.jsonl"]  # no temp file, lock released


def _hold_lock(folder: Path, what: str = "a training run") -> subprocess.Popen:
    """Another process that takes ``folder``'s lock (FolderLock) and keeps it until killed, returned once it holds
    it."""
    code = ("import time; from pathlib import Path; from tinyld.checkpoints import FolderLock; "
            f"FolderLock(Path({str(folder)!r}), {what!r}).__enter__(); print('held', flush=True); time.sleep(60)")
    keeper = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert keeper.stdout.readline().strip() == "held"
    return keeper


def test_two_runs_cannot_write_one_folder(world, wtok, tmp_path):
    keeper = _hold_lock(tmp_path)
    try:
        with pytest.raises(TinyldError, match=f"in use by a training run \\(pid {keeper.pid}\\)"):
            _trainer(world, wtok, tmp_path, steps=2).run()
    finally:
        keeper.kill()
        keeper.wait()
    assert (tmp_path / ".lock").read_text().startswith(str(keeper.pid))  # killed: its lock file is left behind
    _trainer(world, wtok, tmp_path, steps=2).run()  # and taken over: the OS released its lock with the process
    assert load_checkpoint(tmp_path / "last.pt")["step"] == 2 and not (tmp_path / ".lock").exists()


def test_resume_checks_the_data_and_the_optimizer(world, wtok, tmp_path):
    tr = _trainer(world, wtok, tmp_path, steps=2)
    tr.run()
    other_seed = TextStream(wtok, world.pretrain_docs(), 32, 4, seed=1)
    with pytest.raises(TinyldError, match=r"other data .*\['seed'\]"):
        Trainer.resume(tmp_path / "last.pt", other_seed, wtok)
    other_text = TextStream(wtok, world.pretrain_docs()[1:], 32, 4, seed=0)
    with pytest.raises(TinyldError, match=r"other data .*\['tokens'\]"):
        Trainer.resume(tmp_path / "last.pt", other_text, wtok)
    with pytest.raises(TinyldError, match="holds adamw optimizer state; it cannot resume as 'sgd'"):
        Trainer.resume(tmp_path / "last.pt", tr.data, wtok, optimizer="sgd")
    save_checkpoint(tmp_path / "weights.pt", tr.model, wtok)
    with pytest.raises(TinyldError, match="weights only"):
        Trainer.resume(tmp_path / "weights.pt", tr.data, wtok)


def test_checkpoints_never_hold_non_finite_weights(world, wtok, tmp_path):
    tr = _trainer(world, wtok, tmp_path, steps=1)
    with torch.no_grad():
        tr.model.wte.weight[5, 0] = float("inf")
    with pytest.raises(TrainingDiverged, match="'wte.weight' is not finite"):
        save_checkpoint(tmp_path / "x.pt", tr.model, wtok)
    assert not (tmp_path / "x.pt").exists()
    ck = load_checkpoint(save_checkpoint(tmp_path / "ok.pt", _trainer(world, wtok).model, wtok))
    ck["model"]["ln_f.weight"][0] = float("nan")  # written by something else
    torch.save(ck, tmp_path / "nan.pt")
    with pytest.raises(TinyldError, match="non-finite weights"):
        load_model(tmp_path / "nan.pt")


def test_unwritable_out_dir_fails_before_training(world, wtok, tmp_path):
    (tmp_path / "f").write_text("")
    tr = _trainer(world, wtok, tmp_path / "f" / "run", steps=3)
    with pytest.raises(TinyldError, match="cannot write to the TrainConfig.out_dir"):
        tr.run()
    assert tr.step == 0


# ==============================================================================================================
# 6. Files: every bad line is named by file and line; code is called code
# ==============================================================================================================

JSONL_BAD = [
    (b'{"prompt": "q", "chosen": "a"}\n[1, 2]\n', r"d\.jsonl:2: each line must be a JSON object"),
    (b'{"prompt": "q", "chosen": "a"}\n42\n', r"d\.jsonl:2: each line must be a JSON object .* got a int"),
    (b'{"prompt": 7, "chosen": "a"}\n', r"d\.jsonl:1: 'prompt' must be a string, got int"),
    (b'{"prompt": "q", "chosen": ["a"]}\n', r"d\.jsonl:1: 'chosen' must be a string, got list"),
    (b'{"prompt": "q", "chosen": "a", "rejected": 3}\n', r"d\.jsonl:1: 'rejected' must be a string"),
    (b'{"prompt": "", "chosen": "a"}\n', r"d\.jsonl:1: 'prompt' is empty"),
    (b'{"prompt": "q", "chosen": "a"}\n{"prompt": "q\xff", "chosen": "a"}\n', r"d\.jsonl:2: not valid UTF-8"),
    (b'{"prompt": "q", "chosen": "a", "response": "b"}\n', r"d\.jsonl:1: both 'chosen' and 'response'"),
    (b"\n\n", r"d\.jsonl holds no examples"),
    (b'{"prompt": "q", "chosen": "a"}\n{oops\n', r"d\.jsonl:2: not valid JSON"),
]


@pytest.mark.parametrize("raw, msg", JSONL_BAD, ids=[m.split(": ", 1)[-1][:30] for _, m in JSONL_BAD])
def test_jsonl_errors_name_file_and_line(tmp_path, raw, msg):
    p = tmp_path / "d.jsonl"
    p.write_bytes(raw)
    with pytest.raises(TinyldError, match=msg):
        read_jsonl(p)


def test_jsonl_missing_file_or_folder(tmp_path):
    with pytest.raises(TinyldError, match="no JSONL file at"):
        read_jsonl(tmp_path / "none.jsonl")
    with pytest.raises(TinyldError, match="it is a folder"):
        read_jsonl(tmp_path)
    assert read_jsonl(_write(tmp_path / "ok.jsonl", b'{"prompt": "q", "chosen": "a", "x": 1}\n')) == [
        Example("q", "a", None, {"x": 1})]


def _write(p, raw):
    p.write_bytes(raw)
    return p


class _Evil:
    def __reduce__(self):  # would run code when unpickled
        return (print, ("this must never run",))


def test_weights_file_with_code_is_called_code_not_corrupt(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_embd": 48, "n_layer": 2, "n_head": 4,
                                                      "vocab_size": 97, "n_positions": 40}))
    torch.save({"wte.weight": _Evil()}, tmp_path / "pytorch_model.bin")
    with pytest.raises(TinyldError, match="carries Python code"):
        GPT.from_hf(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(TinyldError, match="config.json is not readable JSON"):
        GPT.from_hf(tmp_path)


# ==============================================================================================================
# 7. Found by an adversarial review: each once gave a silent wrong number, lost work, a hang or a traceback
# ==============================================================================================================


def test_resume_overrides_reach_the_optimizer(world, wtok, tmp_path):
    tr = _trainer(world, wtok, tmp_path, steps=2, optimizer="sgd", momentum=0.9)
    tr.run()
    resumed = Trainer.resume(tmp_path / "last.pt", tr.data, wtok, steps=4, momentum=0.0, weight_decay=0.5)
    assert all(g["momentum"] == 0.0 and g["weight_decay"] == 0.5 for g in resumed.opt.param_groups)


def test_resume_refuses_an_incomplete_train_config(world, wtok, tmp_path):
    tr = _trainer(world, wtok, tmp_path, steps=1)
    tr.run()
    ck = load_checkpoint(tmp_path / "last.pt")
    del ck["train_config"]["lr"]
    torch.save(ck, tmp_path / "partial.pt")
    with pytest.raises(TinyldError, match=r"lacks \['lr'\]: resuming would silently use defaults"):
        Trainer.resume(tmp_path / "partial.pt", tr.data, wtok)


def test_trainer_refuses_a_tokenizer_that_did_not_build_the_data(world, wtok):
    from tinyld.tokenizers import WordTokenizer

    other = WordTokenizer([f"x{i}" for i in range(wtok.vocab_size - 3)])  # same size, other words
    tr = _trainer(world, wtok)
    with pytest.raises(TinyldError, match="the data was encoded with tokenizer"):
        Trainer(tr.model, tr.data, tr.cfg, other)
    with pytest.raises(TinyldError, match="the tokenizer has 7 tokens but the model's vocab_size is"):
        Trainer(tr.model, tr.data, tr.cfg, WordTokenizer(["a", "b", "c", "d"]))


def test_numpy_numbers_in_configs_still_give_loadable_checkpoints(world, wtok, tmp_path):
    np = pytest.importorskip("numpy")
    tr = _trainer(world, wtok, tmp_path, steps=np.int64(2), lr=np.float32(1e-3))
    tr.run()
    assert type(tr.cfg.lr) is float and type(tr.cfg.steps) is int
    assert Trainer.resume(tmp_path / "last.pt", tr.data, wtok).step == 2
    with pytest.raises(TinyldError, match="field 'note' holds a PosixPath"):
        save_checkpoint(tmp_path / "x.pt", tr.model, wtok, note=tmp_path)


def test_probes_of_a_response_with_one_repeated_word_do_not_hang(world):
    from tinyld.world import Item

    it = world.train_items()[0]
    odd = Item(it.prompt, "a a a", "b b b", it.name, it.relation, it.value, it.wrong)
    signal.signal(signal.SIGALRM, lambda *a: (_ for _ in ()).throw(TimeoutError("probes() hangs")))
    signal.alarm(10)
    try:
        assert world.probes(odd)["urnd_chosen"] == "a a a"
    finally:
        signal.alarm(0)


def test_a_new_run_never_replaces_another_runs_checkpoint(world, wtok, tmp_path):
    _trainer(world, wtok, tmp_path, steps=5).run()
    with pytest.raises(TinyldError, match="holds a checkpoint of another run: continue it with Trainer.resume"):
        _trainer(world, wtok, tmp_path, steps=1).run()
    assert load_checkpoint(tmp_path / "last.pt")["step"] == 5
    _trainer(world, wtok, tmp_path, steps=1).run(overwrite=True)
    assert load_checkpoint(tmp_path / "last.pt")["step"] == 1
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r.get("event") for r in log].count("start") == 1  # a fresh run, a fresh log


def test_write_jsonl_never_leaves_a_half_written_file(tmp_path):
    from tinyld.data import write_jsonl

    p = tmp_path / "d.jsonl"
    write_jsonl(p, [Example("q", "a")])
    with pytest.raises(TinyldError, match="example 2 cannot be written as JSON"):
        write_jsonl(p, [Example("q1", "a1"), Example("q2", "a2", meta={"t": {1, 2}})])
    assert read_jsonl(p) == [Example("q", "a")]
    with pytest.raises(TinyldError, match="cannot write"):
        write_jsonl(tmp_path / "missing" / "d.jsonl", [Example("q", "a")])


@pytest.mark.parametrize("blocker", ["pretrain/last.pt", "demo.json", "sft"])
def test_demo_output_paths_are_checked_before_pretraining(tmp_path, capsys, blocker):
    target = tmp_path / blocker
    if blocker == "sft":
        target.write_text("")  # a file where the demo needs a folder
    else:
        target.mkdir(parents=True)  # a folder where the demo writes a file
    t0 = time.perf_counter()
    assert main(["demo", "--out", str(tmp_path)]) == 2
    assert time.perf_counter() - t0 < 10 and "error:" in capsys.readouterr().err
    assert not (tmp_path / "pretrain" / "log.jsonl").exists()


def test_engine_checks_widths_and_lengths(world, wtok, tiny64):
    from tinyld.dynamics import sequence_change
    from tinyld.updates import class_rows

    _, rows, _ = _item_batches(world, wtok)
    with pytest.raises(TinyldError, match=r"G has shape \(\d+, 1\) but the logits it pairs with have"):
        predict(tiny64, rows, ResidualUpdate(rows, torch.ones(rows.n, 1, dtype=torch.float64)), 1e-3)
    _, two, _ = _item_batches(world, wtok, n=2)
    with pytest.raises(TinyldError, match="delta must be .* one row per observed row"):
        sequence_change(rows, predict(tiny64, two, SFTUpdate(rows), 1e-3))
    with pytest.raises(TinyldError, match=r"one input x becomes x\[None\]"):
        class_rows(torch.randn(4))
    with pytest.raises(TinyldError, match=r"labels y must be an integer tensor of shape \(5,\)"):
        class_rows(torch.randn(5, 4), torch.tensor([1, 2]))
    with pytest.raises(TinyldError, match="no labelled rows"):
        SFTUpdate(class_rows(torch.randn(2, 4)))


def test_restricted_kernel_honours_sel_u_with_the_same_rows(world, wtok, tiny64):
    _, rows, _ = _item_batches(world, wtok)
    K = kernel_restricted(tiny64, rows, torch.tensor([[0, 5], [1, 6]]), sel_u=torch.tensor([[2, 7]]))
    assert K.shape == (2, 1)


def test_frozen_parameters_are_left_out_of_the_prediction(world, wtok, tiny64):
    _, rows, _ = _item_batches(world, wtok)
    tiny64.wte.weight.requires_grad_(False)  # a frozen embedding: the step cannot move it
    a, b = (one_step(tiny64, SFTUpdate(rows), rows, eta) for eta in (2e-4, 1e-4))
    ratio = (a.pred - a.actual).norm() / (b.pred - b.actual).norm()
    assert 3.5 < ratio < 4.5 and b.err_full < 0.05  # second order: frozen weights are left out of both


def test_generate_and_evaluate_arguments(world, wtok, tiny64):
    from tinyld.evaluate import response_logprobs, text_stats

    x = torch.tensor([wtok.encode("question : where")])
    with pytest.raises(TinyldError, match="temperature must be a finite number ≥ 0"):
        tiny64.generate(x, 3, temperature=-1.0)
    with pytest.raises(TinyldError, match="max_new_tokens must be an integer ≥ 0"):
        tiny64.generate(x, -1)
    with pytest.raises(TinyldError, match="2 prompts but 3 responses"):
        response_logprobs(tiny64, wtok, ["question :", "question :"], ["a .", "b .", "c ."], batch_size=2)
    with torch.no_grad():
        tiny64.ln_f.bias[0] = float("nan")
    with pytest.raises(TinyldError, match="'ln_f.bias' holds NaN or inf"):
        text_stats(tiny64, wtok, world.heldout_text())


DAMAGED = [("rng", 5), ("model_config", [1]), ("tokenizer", "word"), ("optimizer", 5), ("train_config", [1]),
           ("data", "x")]


@pytest.mark.parametrize("field, value", DAMAGED, ids=[f for f, _ in DAMAGED])
def test_damaged_checkpoint_fields_are_named(world, wtok, tmp_path, field, value):
    tr = _trainer(world, wtok, tmp_path, steps=1)
    tr.run()
    ck = load_checkpoint(tmp_path / "last.pt")
    ck[field] = value
    torch.save(ck, tmp_path / "bad.pt")
    with pytest.raises(TinyldError, match=f"damaged fields \\['{field}'\\]"):
        Trainer.resume(tmp_path / "bad.pt", tr.data, wtok)


def test_tokenizers_check_their_inputs(wtok):
    with pytest.raises(TinyldError, match="encode takes a string, got NoneType"):
        wtok.encode(None)
    with pytest.raises(TinyldError, match=r"token id 'a' is not an integer in the vocabulary \[0, 128\)"):
        wtok.decode(["a"])
    with pytest.raises(TinyldError, match=r"token id 999 is not an integer"):
        wtok.decode([999])


def test_measurements_and_batches_check_their_inputs(world, wtok, tiny64):
    from tinyld.data import Batch
    from tinyld.evaluate import response_logprobs, text_stats
    from tinyld.updates import class_rows

    with pytest.raises(TinyldError, match="responses must be a non-empty list of non-empty strings"):
        response_logprobs(tiny64, wtok, ["question :"], None)
    assert text_stats(tiny64, wtok, (t for t in world.heldout_text()))["tokens"] > 0  # a generator is fine
    with pytest.raises(TinyldError, match="targets hold -1"):
        Batch(torch.zeros(1, 4, dtype=torch.long), torch.tensor([[-100, 3, -1, 2]]))
    net = torch.nn.Linear(4, 3).double()
    with pytest.raises(TinyldError, match="the inputs are torch.float32 but the model is torch.float64"):
        predict(net, class_rows(torch.randn(5, 4)), SFTUpdate(class_rows(torch.randn(1, 4), torch.tensor([1]))), 0.1)


def test_ctrl_c_during_the_final_save_still_stops_the_program(world, wtok, tmp_path):
    """A Ctrl-C that lands after the last step boundary (while the final checkpoint is written) is not lost."""
    tr = _trainer(world, wtok, tmp_path, steps=3)
    real_save = tr.save

    def save_with_ctrl_c(path):
        signal.raise_signal(signal.SIGINT)
        return real_save(path)

    tr.save = save_with_ctrl_c
    with pytest.raises(TrainingInterrupted, match=r"interrupted after the last step \(3\)"):
        tr.run()
    assert load_checkpoint(tmp_path / "last.pt")["step"] == 3


# ==============================================================================================================
# 8. The SFT-dynamics experiment and probe files (each found by trying bad input on the new command)
# ==============================================================================================================


def test_a_one_epoch_world_run_finishes_and_writes_its_results(tmp_path, monkeypatch, capsys):
    """One epoch gives two measurements: the summary printed a third epoch and crashed after all the work."""
    monkeypatch.chdir(tmp_path)  # the base model's cache goes here
    rc = main(["sft-dynamics", "--seeds", "0", "--modes", "easy", "--epochs", "1", "--no-attribution",
               "--pretrain-steps", "5", "--threads", "1", "--out", "o"])
    assert rc == 0
    res = json.loads((tmp_path / "o" / "sft_dynamics.json").read_text())
    claims = {c["claim"] for c in res["modes"]["easy"]["claims"]}
    assert "chosen rises" in claims and not any("then falls" in c for c in claims)  # no bell from two points


def test_ctrl_c_outside_training_prints_one_line(monkeypatch, capsys):
    import tinyld.experiments.sft_dynamics as sd

    def interrupted(cfg, **kw):
        raise KeyboardInterrupt  # as Python raises it: no message

    monkeypatch.setattr(sd, "run", interrupted)
    assert main(["sft-dynamics", "--fast"]) == 130
    assert capsys.readouterr().err.strip() == "interrupted"


def test_a_flat_attribution_curve_gives_no_infinite_numbers(world, wtok):
    """R² of a curve that does not move is undefined: None, and the JSON stays strict (no Infinity)."""
    from tinyld.experiments.kit import plain_json
    from tinyld.experiments.sft_dynamics import SFTDynamicsConfig, attribution
    from tinyld.probes import ProbeSet

    torch.manual_seed(0)
    model = GPT(GPTConfig.preset("tiny", vocab_size=wtok.vocab_size))
    ps = ProbeSet(ProbeSet.from_world(world).probes[:8])
    a = attribution(SFTDynamicsConfig(epochs=1, attr_lr=1e-30, attr_prompts=2), 0, model, wtok, ps)
    assert a["r2"] is None or abs(a["r2"]) < float("inf")
    json.dumps(plain_json(a), allow_nan=False)  # raises on NaN or inf
    assert plain_json({"x": [float("inf"), float("nan"), 1.5]}) == {"x": [None, None, 1.5]}


def test_probe_files_that_do_not_fit_the_model_are_named_before_training(tmp_path, wtok):
    from tinyld.probes import ProbeSet

    long = " ".join(["the old river"] * 30)
    lines = [{"prompt": "question : where does alice live ? answer :", "chosen": "alice lives in paris .",
              "rejected": "alice lives in rome .", "hum": "the old river ."},
             {"prompt": "question : what pet does bob have ? answer :", "chosen": "bob has a cat .",
              "rejected": "bob has a dog .", "hum": long},
             {"prompt": "question : what pet does bob have ? answer :", "chosen": "bob has a zebra .",
              "rejected": "bob has a dog .", "hum": "the old river ."}]
    p = tmp_path / "p.jsonl"
    p.write_text("".join(json.dumps(d) + "\n" for d in lines))
    ps = ProbeSet.load(p)
    with pytest.raises(TinyldError, match=r"p\.jsonl:2: prompt \+ 'hum' is \d+ tokens.*block_size=64"):
        ps.check_fits(wtok, 64)
    with pytest.raises(TinyldError, match=r"p\.jsonl:3: prompt \+ 'chosen': word 'zebra'"):
        ProbeSet([ps.probes[0], ps.probes[2]]).check_fits(wtok, 64)


def test_the_models_own_first_answer_always_fits_its_context(world, wtok):
    """y_init is capped at what the context leaves after the prompt: it can never break the tracker."""
    from tinyld.data import encode_example
    from tinyld.probes import ProbeSet

    torch.manual_seed(0)
    model = GPT(GPTConfig.preset("tiny", vocab_size=wtok.vocab_size, block_size=16))
    ps = ProbeSet(ProbeSet.from_world(world).probes[:3]).with_init(model, wtok, max_new_tokens=50)
    for p in ps.probes:
        if "init" in p.responses:
            assert len(encode_example(wtok, p.prompt, p.responses["init"])[0]) <= 16 + 1


@pytest.mark.parametrize("responses, match", [
    ({"chosen": "a", "rejected": "b", "prompt": "x"}, "'prompt' cannot name a family"),
    ({"chosen": "a", "rejected": "b", "split": "x"}, "'split' cannot name a family"),
    ({"chosen": "a", "rejected": "b", "": "x"}, "'' cannot name a family"),
    (None, "responses must be a dict"),
])
def test_probe_family_names_that_would_corrupt_a_file_are_refused(responses, match):
    from tinyld.probes import Probe, ProbeSet

    with pytest.raises(TinyldError, match=match):
        ProbeSet([Probe("question : a", responses)])


def test_sft_dynamics_config_refuses_repeated_or_malformed_modes():
    from tinyld.experiments.sft_dynamics import SFTDynamicsConfig

    for modes, match in ((["easy", "easy"], "repeats a mode"), ("hard", "non-empty list"), ([], "non-empty list"),
                         (0, "non-empty list")):  # None is the default: hard and easy
        with pytest.raises(TinyldError, match=match):
            SFTDynamicsConfig(modes=modes)
    with pytest.raises(TinyldError, match="attribution must be True or False"):
        SFTDynamicsConfig(attribution="no")


# ---- library helpers: one clear error, never a traceback or a wrong number


def test_memorization_threshold_refuses_a_tau_whose_threshold_overflows():
    from tinyld.forecast import memorization_threshold, memorized

    tau_max = math.log(math.log(sys.float_info.max))  # exp(e^τ) is the largest float here
    assert memorization_threshold(tau_max) == pytest.approx(sys.float_info.max, rel=1e-12)
    for tau in (7, 6.57, 1e6):
        with pytest.raises(TinyldError, match=rf"tau = {tau!r} is too large.*largest τ that works is {tau_max!r}"):
            memorization_threshold(tau)
    with pytest.raises(TinyldError, match="largest τ that works"):
        memorized(torch.tensor([1.5]), tau=7)
    for tau in (float("nan"), float("inf"), -float("inf")):
        with pytest.raises(TinyldError, match="tau must be a finite number"):
            memorization_threshold(tau)


@pytest.mark.parametrize("bad, shown", [(["a"], r"list \['a'\]"), (None, "NoneType None"), ({"x": 2.0}, "dict"),
                                        ("1.5", "str '1.5'"), ([[1.0, 2.0], [3.0]], "list"), ([True], "list")])
def test_memorized_refuses_what_is_not_perplexities(bad, shown):
    from tinyld.forecast import memorized

    with pytest.raises(TinyldError, match=rf"perplexity must be a tensor or a list of perplexities.*got {shown}"):
        memorized(bad)
    assert memorized([1.0, 2.0]).tolist() == [True, False]  # a plain list of numbers is fine


@pytest.mark.parametrize("h_plus, what", [([[1.0, 0.0]], "got list"), (None, "got NoneType"),
                                          (torch.ones(1, 2, dtype=torch.long), "got a torch.int64 tensor")])
def test_ches_from_hidden_refuses_what_is_not_a_float_tensor(h_plus, what):
    from tinyld.forecast import ches_from_hidden

    with pytest.raises(TinyldError, match=f"h_plus must be a float tensor of hidden states.*{what}"):
        ches_from_hidden(h_plus, torch.ones(1, 2))
    with pytest.raises(TinyldError, match=f"h_minus must be a float tensor of hidden states.*{what}"):
        ches_from_hidden(torch.ones(1, 2), h_plus)


@pytest.mark.parametrize("lengths", [(3, 2, 3, 3, 3, 3), (3, 1, 3, 3, 3, 3), (1, 1, 1, 1, 1, 4), (2, 2, 1, 2, 2, 2)])
def test_pair_loss_refuses_inputs_of_different_batch_sizes(lengths):
    """A (1,) tensor among (B,) ones would broadcast silently into a wrong loss: every input must be (B,)."""
    from tinyld.losses import pair_loss

    args = [torch.full((n,), -2.0, dtype=torch.float64) for n in lengths]
    for name in ("sigmoid", "ipo", "simpo"):
        loss = pair_loss(name)
        for method in (loss.per_pair, loss.value, loss.coefficients):
            with pytest.raises(TinyldError, match="must all hold one value per pair.*got lengths"):
                method(*args)
    with pytest.raises(TinyldError, match=r"lc must be a 1-D float tensor \(B,\).*got a list"):
        pair_loss().value([-2.0], *args[1:])
    with pytest.raises(TinyldError, match=r"nr must be a 1-D tensor \(B,\).*shape \(2, 1\)"):
        pair_loss().coefficients(*[torch.zeros(2)] * 5, torch.ones(2, 1))
    ok = [torch.full((2,), -2.0, dtype=torch.float64)] * 4 + [torch.tensor([3, 4])] * 2  # integer lengths are fine
    assert pair_loss("ipo").per_pair(*ok).shape == (2,)


def _squeeze_by_hand(z, label, eta, sign):
    """One step on a softmax in float64, written out: (π, π′) as log-probabilities."""
    z = z.double()
    pi = torch.softmax(z, -1)
    e = torch.zeros_like(z)
    e[label] = 1.0
    return torch.log_softmax(z, -1), torch.log_softmax(z + sign * eta * (e - pi), -1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("eta", [1e308, 1e39, 1e20])
@pytest.mark.parametrize("label, sign", [(0, -1), (4, -1), (0, 1), (4, 1)])
def test_who_moves_names_the_labels_that_rise_for_any_step_size(dtype, eta, label, sign):
    """In float32, η′·π overflows (nothing rises); in float64, Δz_i and log Z of the top label agree to every digit
    though they differ by −log π_i: the labels that rise must still be the ones that do."""
    from tinyld.squeeze import who_moves

    z = torch.tensor([3.0, 2.0, 0.0, -1.0, -4.0], dtype=dtype)
    lp, after = _squeeze_by_hand(z, label, eta, sign)
    m = who_moves(z, label, eta, sign)
    assert m["rises"].tolist() == (after > lp).tolist()
    assert int(m["rises"].sum()) == 1  # a huge step puts all the mass on one label
    assert torch.allclose(m["pi_after"], after.exp(), rtol=0, atol=1e-12) and m["pi_after"].dtype == torch.float64
    assert math.isfinite(m["log_Z"]) and math.isfinite(m["threshold"])


def test_who_moves_splits_a_near_tie_by_the_larger_logit():
    """Two logits one ulp apart: with η′ = 1e38 the larger one takes all the mass, whatever rounding does to π."""
    from tinyld.squeeze import who_moves

    z = torch.tensor([1.0, math.nextafter(1.0, 2.0), -3.0], dtype=torch.float64)
    m = who_moves(z, 2, 1e38)
    assert m["rises"].tolist() == [False, True, False]
    assert m["pi_after"].tolist() == [0.0, 1.0, 0.0]


def test_logit_step_stays_finite_or_refuses():
    from tinyld.squeeze import logit_step

    z = torch.tensor([3.0, 2.0, 0.0, -1.0, -4.0])  # float32: 1e308 is beyond its range
    pi = torch.softmax(z.double(), -1)
    want = z.double() + 1e308 * (pi - torch.eye(5, dtype=torch.float64)[0])  # a negative step on label 0, by hand
    out = logit_step(z, 0, 1e308)
    assert bool(torch.isfinite(out).all()) and out.dtype == torch.float64
    assert torch.allclose(out, want, rtol=1e-12, atol=0)
    with pytest.raises(TinyldError, match="overflows float64.*take a smaller eta"):
        logit_step(torch.tensor([1.5e308, 0.0], dtype=torch.float64), 1, 1e308)  # z₀ + η′π₀ > float64's max


# ---- the last update of a run is checked, like every other -----------------------------------------------------


def test_the_last_update_of_a_run_is_checked(world, wtok):
    """Each update is checked by the next step's loss; the last one by the run itself. AdamW at lr 1e6 for a single
    step leaves finite weights whose logits are not: the run stops instead of ending quietly."""
    tr = _trainer(world, wtok, steps=1, lr=1e6)
    tr.model.float()
    tr.opt = torch.optim.AdamW(tr.model.parameters(), lr=1e6)
    with pytest.raises(TrainingDiverged, match=r"logits .* not finite after the last update \(step 0\)"):
        tr.run()
    with pytest.raises(TinyldError, match="half-taken"):  # and nothing is saved from that model
        tr.save("never.pt")


def test_an_experiment_whose_last_update_diverges_fails_instead_of_reporting_nan(tmp_path, capsys):
    """sft-dynamics with one epoch at lr 1e6 on your own probes used to exit 0 with '+nan' claims."""
    from tinyld.__main__ import main

    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    hf_cfg = transformers.GPT2Config(n_embd=16, n_layer=1, n_head=2, n_positions=64)
    transformers.GPT2LMHeadModel(hf_cfg).save_pretrained(tmp_path / "hf")
    probes = tmp_path / "probes.jsonl"
    probes.write_text("".join(json.dumps({"prompt": p, "chosen": c, "rejected": r}) + "\n" for p, c, r in [
        ("What is the capital of France?", "Paris.", "Rome."), ("What color is the sky?", "Blue.", "Green.")]))
    rc = main(["sft-dynamics", "--probes", str(probes), "--model", str(tmp_path / "hf"), "--epochs", "1", "--lr", "1e6",
               "--seeds", "0", "--threads", "1", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2 and "not finite after the last update" in err and "Traceback" not in err
    assert not (tmp_path / "out" / "claims.txt").exists()


# ==============================================================================================================
# 9. An experiment never loses or mixes its results (tinyld.experiments.kit.RunFolder)
# ==============================================================================================================

SFT_RUN = ["sft-dynamics", "--seeds", "0", "1", "--modes", "easy", "--epochs", "1", "--pretrain-steps", "5",
           "--no-attribution", "--threads", "1", "--out", "o"]
TIMING = {"seconds", "runtime_s", "tracker_cost"}  # wall-clock fields: the only ones two runs may differ in


def _without_timing(x):
    if isinstance(x, dict):
        return {k: _without_timing(v) for k, v in x.items() if k not in TIMING}
    if isinstance(x, list):
        return [_without_timing(v) for v in x]
    return x


def _count_training(monkeypatch) -> list:
    """Every SFT run of Trainer.run from now on (pretraining is cached), by its seed."""
    seen, real = [], Trainer.run

    def run(self, *a, **kw):
        if self.cfg.task != "pretrain":
            seen.append(self.cfg.seed)
        return real(self, *a, **kw)
    monkeypatch.setattr(Trainer, "run", run)
    return seen


def _files(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def _stop_at_seed_1(monkeypatch):
    """sft-dynamics from now on stops with Ctrl-C as its second seed starts; returns the real seed_part."""
    import tinyld.experiments.sft_dynamics.command as command

    real = command.seed_part

    def stopped_at_seed_1(cfg, seed, *a):
        if seed == 1:
            raise KeyboardInterrupt  # Ctrl-C as the second seed starts
        return real(cfg, seed, *a)
    monkeypatch.setattr(command, "seed_part", stopped_at_seed_1)
    return real


@pytest.fixture
def finished(tmp_path, monkeypatch, capsys):
    """A finished two-seed sft-dynamics run in ./o (and the base model cached in ./tinyld_out)."""
    monkeypatch.chdir(tmp_path)
    assert main(SFT_RUN) == 0
    capsys.readouterr()
    return tmp_path / "o"


def test_the_manifest_ties_every_file_to_its_run(finished):
    from tinyld.experiments.kit import config_hash
    from tinyld.runtime import versions

    m = json.loads((finished / "manifest.json").read_text())
    assert m["status"] == "finished" and m["command"] == "sft-dynamics" and m["versions"] == versions()
    assert set(m["files"]) == _files(finished) - {"manifest.json"}  # every file the run wrote, and only those
    assert {"sft_dynamics.json", "claims.txt", "track_easy_seed0.csv", "track_easy_seed1.csv"} <= set(m["files"])
    assert m["parts"] == ["easy/seed0", "easy/seed1"] and m["started"] <= m["finished"]
    result = json.loads((finished / "sft_dynamics.json").read_text())
    assert m["config"] == result["config"] and m["config_hash"] == config_hash(result["config"])
    assert "overwrite" not in m["config"] and "resume" not in m["config"]  # the science only
    assert not (finished / ".lock").exists()  # released


def test_a_folder_holding_a_finished_run_is_refused_without_overwrite_or_resume(finished, monkeypatch, capsys):
    trained = _count_training(monkeypatch)
    before = {p: (finished / p).read_bytes() for p in _files(finished)}
    assert main(SFT_RUN) == 2 and trained == []
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds a finished run of sft-dynamics" in err and "--overwrite" in err, err
    assert {p: (finished / p).read_bytes() for p in _files(finished)} == before  # untouched
    assert main([*SFT_RUN, "--resume"]) == 2 and "holds a finished run" in capsys.readouterr().err


def test_overwrite_removes_exactly_the_files_the_old_manifest_lists(finished, capsys):
    (finished / "notes.txt").write_text("mine")  # not the run's: it stays
    assert main([*SFT_RUN[:3], *SFT_RUN[4:], "--overwrite"]) == 0  # now seed 0 alone
    capsys.readouterr()
    files = _files(finished)
    assert "notes.txt" in files and "track_easy_seed1.csv" not in files and "parts/easy__seed1.json" not in files
    m = json.loads((finished / "manifest.json").read_text())
    assert set(m["files"]) == files - {"manifest.json", "notes.txt"} and m["config"]["seeds"] == [0]


def test_a_folder_in_use_is_refused_naming_the_process_and_a_stale_lock_is_taken_over(finished, monkeypatch, capsys):
    keeper = _hold_lock(finished, "tinyld sft-dynamics")
    trained = _count_training(monkeypatch)
    try:
        assert main([*SFT_RUN, "--overwrite"]) == 2 and trained == []  # refused before any work
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"in use by tinyld sft-dynamics (pid {keeper.pid})" in err, err
    finally:
        keeper.kill()
        keeper.wait()
    assert (finished / "sft_dynamics.json").exists()  # the other run's files were not touched
    assert main([*SFT_RUN, "--overwrite"]) == 0 and trained == [0, 1]  # its process is gone: so is its lock
    assert not (finished / ".lock").exists()


def test_every_output_path_is_checked_before_the_first_step(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "o" / "track_easy_seed1.csv").mkdir(parents=True)  # where the second seed's table goes
    trained = _count_training(monkeypatch)
    assert main(SFT_RUN) == 2 and trained == []
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "track_easy_seed1.csv is a folder" in err, err


def test_ctrl_c_between_seeds_keeps_the_finished_ones_and_resume_ends_with_the_same_json(tmp_path, monkeypatch,
                                                                                        capsys):
    """Interrupted after seed 0, continued with --resume: seed 0 is read back, not trained again, and the JSON and
    the claims are those of an uninterrupted run (timings aside)."""
    import tinyld.experiments.sft_dynamics.command as command

    monkeypatch.chdir(tmp_path)
    assert main(SFT_RUN) == 0
    (tmp_path / "o").rename(tmp_path / "whole")
    whole = json.loads((tmp_path / "whole" / "sft_dynamics.json").read_text())
    capsys.readouterr()
    real = _stop_at_seed_1(monkeypatch)
    assert main(SFT_RUN) == 130
    err = capsys.readouterr().err
    again = "python -m tinyld " + " ".join(SFT_RUN) + " --resume"
    assert f"1 finished part is kept in o. Continue with: {again}" in err and "out_dir" not in err, err
    m = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert m["status"] == "interrupted" and m["parts"] == ["easy/seed0"] and not (tmp_path / "o/claims.txt").exists()

    monkeypatch.setattr(command, "seed_part", real)
    assert main(SFT_RUN) == 2 and "continue it with --resume" in capsys.readouterr().err  # neither flag: refused
    trained = _count_training(monkeypatch)
    assert main([*SFT_RUN, "--resume"]) == 0 and trained == [1]  # seed 0 read back
    resumed = json.loads((tmp_path / "o" / "sft_dynamics.json").read_text())
    assert _without_timing(resumed) == _without_timing(whole)
    assert (tmp_path / "o" / "claims.txt").read_text() == (tmp_path / "whole" / "claims.txt").read_text()
    m = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert m["status"] == "finished" and len(m["resumed"]) == 1 and set(m["files"]) == _files(tmp_path / "o") - {
        "manifest.json"}


def test_resume_refuses_another_config_and_names_what_differs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _stop_at_seed_1(monkeypatch)
    assert main(SFT_RUN) == 130
    capsys.readouterr()
    assert main([*SFT_RUN, "--lr", "0.002", "--resume"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "another config (lr 0.001 → 0.002)" in err, err
    assert main([*SFT_RUN, "--resume", "--overwrite"]) == 2 and "give one of them" in capsys.readouterr().err


def test_a_run_that_stopped_before_writing_anything_does_not_block_the_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main([*SFT_RUN, "--lr", "1e6"]) == 2  # diverges in its first seed: nothing kept
    err = capsys.readouterr().err
    assert "lower --lr (now 1e+06)" in err and "out_dir" not in err and "grad_clip" not in err, err
    assert main(SFT_RUN) == 0  # a run with a sane lr takes the folder
    assert json.loads((tmp_path / "o" / "manifest.json").read_text())["status"] == "finished"


def test_ctrl_c_in_a_run_that_saves_nothing_does_not_promise_saving(world, wtok, capsys):
    tr = _trainer(world, wtok, steps=5)

    def press_ctrl_c(trainer, step):
        if step == 1:
            os.kill(os.getpid(), signal.SIGINT)
    with pytest.raises(TrainingInterrupted):
        tr.run(press_ctrl_c)
    err = capsys.readouterr().err
    assert "Ctrl-C: finishing step" in err and "then stopping" in err and "saving" not in err, err


def test_dpo_divergence_before_any_update_blames_beta_not_the_learning_rate(world, wtok, tiny64):
    from tinyld.experiments.dpo_dynamics import DPODynamicsConfig, dpo
    from tinyld.probes import ProbeSet

    cfg = DPODynamicsConfig(beta=1e300, dpo_epochs=1, seeds=[0], modes=["easy"])
    probes = ProbeSet(ProbeSet.from_world(world).probes[:12])
    with pytest.raises(TrainingDiverged) as e:
        dpo(cfg, 0, tiny64, wtok, probes, world)
    assert "learning rate is not the cause: lower --beta (now 1e+300)" in str(e.value) and e.value.updates == 0
    assert "out_dir" not in str(e.value) and "grad_clip" not in str(e.value)


def test_a_batch_larger_than_the_data_is_recorded_as_used_and_announced(tmp_path, monkeypatch, capsys):
    """--batch-size 100000 used to train with the 40 prompts and record 100000."""
    monkeypatch.chdir(tmp_path)
    args = [*SFT_RUN[:3], *SFT_RUN[4:], "--batch-size", "100000"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "note: batch_size 100000 → 40: there are 40 training prompts" in out, out
    res = json.loads((tmp_path / "o" / "sft_dynamics.json").read_text())
    assert res["config"]["batch_size"] == 40 and res["modes"]["easy"]["runs"][0]["steps_per_epoch"] == 1


def test_racing_runs_never_hold_one_folder_at_once(tmp_path):
    """Six processes start together and each holds the lock for 0.3 s if it gets it: no two hold times overlap
    (the pid written after an exclusive create once let a reader take an empty lock file for a stale one)."""
    code = ("import sys, time; from pathlib import Path; from tinyld.checkpoints import FolderLock; "
            "from tinyld.runtime import TinyldError\n"
            "go = float(sys.argv[1])\n"
            "time.sleep(max(0.0, go - time.time()))\n"
            f"lock = FolderLock(Path({str(tmp_path)!r}), 'racer')\n"
            "try:\n    lock.__enter__()\nexcept TinyldError:\n    sys.exit(0)\n"
            "t0 = time.time(); time.sleep(0.3); t1 = time.time(); lock.__exit__(); print(t0, t1)\n")
    go = time.time() + 4  # after every racer has imported torch
    racers = [subprocess.Popen([sys.executable, "-c", code, str(go)], stdout=subprocess.PIPE, text=True)
              for _ in range(6)]
    spans = sorted(tuple(map(float, out.split())) for out in (r.communicate(timeout=60)[0] for r in racers) if out)
    assert spans, "no racer took the lock"
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:])), spans


def test_a_manifest_tinyld_did_not_write_is_never_acted_on(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "mydata.csv").write_text("precious")
    (tmp_path / "o" / "manifest.json").write_text(json.dumps({"name": "my dataset", "files": ["mydata.csv"]}))
    for flags in ([], ["--overwrite"], ["--resume"]):
        assert main([*SFT_RUN, *flags]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "is not a tinyld run manifest" in err, err
    assert (tmp_path / "o" / "mydata.csv").read_text() == "precious"
    assert json.loads((tmp_path / "o" / "manifest.json").read_text())["name"] == "my dataset"


def test_overwrite_checks_every_entry_first_and_never_follows_a_link(finished, capsys):
    (finished.parent / "mine.txt").write_text("precious")
    (finished / "claims.txt").unlink()
    (finished / "claims.txt").symlink_to(finished.parent / "mine.txt")  # an entry that is a link to a user file
    m = json.loads((finished / "manifest.json").read_text())
    (finished / "manifest.json").write_text(json.dumps({**m, "files": [*m["files"], "../mine.txt"]}))
    before = _files(finished)
    assert main([*SFT_RUN, "--overwrite"]) == 2  # an entry outside the folder: refused before any removal
    assert "'../mine.txt', which is not a file inside o: nothing was removed" in capsys.readouterr().err
    assert _files(finished) == before
    (finished / "manifest.json").write_text(json.dumps(m))
    assert main([*SFT_RUN, "--overwrite"]) == 0
    assert (finished.parent / "mine.txt").read_text() == "precious"  # the link went, not its target
    assert not (finished / "claims.txt").is_symlink()  # and the new claims were not written through it


def test_a_part_changed_since_it_was_written_is_computed_again_on_resume(tmp_path, monkeypatch, capsys):
    import tinyld.experiments.sft_dynamics.command as command

    monkeypatch.chdir(tmp_path)
    real = _stop_at_seed_1(monkeypatch)
    assert main(SFT_RUN) == 130
    (tmp_path / "o" / "parts" / "easy__seed0.json").write_text('{"x": 1}')  # damaged
    monkeypatch.setattr(command, "seed_part", real)
    capsys.readouterr()
    trained = _count_training(monkeypatch)
    assert main([*SFT_RUN, "--resume"]) == 0 and trained == [0, 1]
    assert "parts/easy__seed0.json is missing or was changed since it was written: computing it again" in \
        capsys.readouterr().out


def test_the_python_api_takes_a_path_and_checks_its_switches(tmp_path, monkeypatch):
    from tinyld.experiments.sft_dynamics import SFTDynamicsConfig, run

    monkeypatch.chdir(tmp_path)
    cfg = SFTDynamicsConfig(seeds=[0], modes=["easy"], epochs=1, pretrain_steps=5, attribution=False, threads=1,
                            out=tmp_path / "api")
    assert cfg.out == str(tmp_path / "api")
    with pytest.raises(TinyldError, match="overwrite must be True or False"):
        run(cfg, overwrite="no")
    assert run(cfg)["config"]["out"] == str(tmp_path / "api")
    with pytest.raises(TinyldError, match="holds a finished run .* give overwrite=True to replace it"):
        run(cfg)
