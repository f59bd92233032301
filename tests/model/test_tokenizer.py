import pytest
from transformers import AutoTokenizer

from longvila.constants import IM_END, IM_START, IMAGE_TOKEN, PAD_TOKEN, VIDEO_TOKEN
from longvila.model.tokenizer import (
    build_corpus,
    newline_token_id,
    single_token_id,
    train_tokenizer,
)

TEXTS = [
    "a\nb",
    "What colour is the purple triangle in frame 7?",
    "The passkey is 90210. Remember it. 90210 is the passkey.",
    f"{IM_START}user\n{VIDEO_TOKEN}\nDescribe the video.{IM_END}\n{IM_START}assistant\nA red star.{IM_END}\n",
    "  two  spaces,\ttab and unseen words: zyzzyva, naïve café 😀\n\n",
]


@pytest.fixture(scope="module", params=["qwen2", "llama"])
def trained(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(f"tok-{request.param}")
    return request.param, out, train_tokenizer(out, kind=request.param)


def test_reload_gives_identical_ids_and_text(trained):
    kind, out, tok = trained
    again = AutoTokenizer.from_pretrained(out)
    assert type(again).__name__ == {"qwen2": "Qwen2Tokenizer", "llama": "LlamaTokenizer"}[kind]
    for text in TEXTS:
        ids = tok.encode(text, add_special_tokens=False)
        assert again.encode(text, add_special_tokens=False) == ids
        assert tok.encode(text) == ids, "no BOS/EOS may be added implicitly"
        assert again.decode(ids) == text


def test_vocab_size_near_target(trained):
    _, _, tok = trained
    assert 1500 <= len(tok) <= 2100


def test_special_tokens_are_single_distinct_ids(trained):
    _, _, tok = trained
    ids = [single_token_id(tok, t) for t in (IMAGE_TOKEN, VIDEO_TOKEN, IM_START, IM_END, PAD_TOKEN)]
    assert len(set(ids)) == 5
    assert tok.pad_token == PAD_TOKEN and tok.pad_token_id == ids[4]
    assert tok.eos_token == IM_END and tok.eos_token_id == ids[3]
    assert tok.padding_side == "right"
    # A placeholder inside text stays one id, never split into characters.
    ids_in_text = tok.encode(f"look{IMAGE_TOKEN}here", add_special_tokens=False)
    assert ids_in_text.count(ids[0]) == 1


def test_newline_is_one_stable_id(trained):
    _, _, tok = trained
    nl = newline_token_id(tok)
    assert tok.encode("a\nb", add_special_tokens=False)[1] == nl
    assert tok.decode([nl]) == "\n"
    assert tok.decode(tok.encode("a\nb", add_special_tokens=False), skip_special_tokens=True) == "a\nb"
    assert nl not in (tok.pad_token_id, tok.eos_token_id)


def test_digits_tokenize_one_by_one(trained):
    _, _, tok = trained
    pieces = [tok.decode([i]) for i in tok.encode("90210", add_special_tokens=False)]
    assert [p.strip() for p in pieces if p.strip()] == list("90210")


def test_domain_words_are_single_tokens(trained):
    kind, _, tok = trained
    for word in ("red", "purple", "triangle", "circle", "passkey", "frame", "video", "image"):
        assert len(tok.encode(" " + word, add_special_tokens=False)) <= 2, word


def test_chat_template_is_qwen2(trained):
    _, _, tok = trained
    text = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}], tokenize=False
    )
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant<|im_end|>\n"
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nyo<|im_end|>\n"
    )


@pytest.mark.parametrize("kind", ["qwen2", "llama"])
def test_training_is_deterministic(tmp_path, kind):
    a = train_tokenizer(tmp_path / "a", kind=kind)
    b = train_tokenizer(tmp_path / "b", kind=kind)
    assert a.get_vocab() == b.get_vocab()
    assert (tmp_path / "a" / "tokenizer.json").read_text() == (tmp_path / "b" / "tokenizer.json").read_text()


def test_corpus_has_no_newlines_and_is_seeded():
    corpus = build_corpus(500, seed=3)
    assert corpus == build_corpus(500, seed=3) != build_corpus(500, seed=4)
    assert not any("\n" in line for line in corpus)


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="sentencepiece2"):
        train_tokenizer(tmp_path, kind="sentencepiece2")
    with pytest.raises(ValueError, match="vocab_size 100"):
        train_tokenizer(tmp_path, vocab_size=100)
