import pytest

from longvila.constants import DEFAULT_SYSTEM, IGNORE_INDEX
from longvila.data.template import encode_conversation, encode_prompt, normalize_turns

CONV = [
    {"from": "human", "value": "<image>\nDescribe the image."},
    {"from": "gpt", "value": "A red circle."},
    {"from": "human", "value": "What colour is the shape?"},
    {"from": "gpt", "value": "Red, and the sky is blue."},
    {"from": "human", "value": "Hello world"},
    {"from": "gpt", "value": "The pass key is 48213."},
]


def supervised_runs(ids, labels):
    """Contiguous runs of supervised token ids."""
    runs, cur = [], []
    for i, lab in zip(ids, labels):
        if lab == IGNORE_INDEX:
            if cur:
                runs.append(cur)
            cur = []
        else:
            assert lab == i
            cur.append(i)
    if cur:
        runs.append(cur)
    return runs


def test_only_assistant_content_and_im_end_are_supervised(tokenizer):
    ids, labels = encode_conversation(tokenizer, CONV)
    assert len(ids) == len(labels)
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    runs = supervised_runs(ids, labels)
    answers = [t["value"] for t in CONV if t["from"] == "gpt"]
    assert len(runs) == len(answers)
    for run, answer in zip(runs, answers):
        assert run[-1] == im_end
        assert tokenizer.decode(run[:-1]) == answer
    # Each <|im_end|> closing an assistant turn is supervised, the newline after it is not.
    newline = tokenizer.convert_tokens_to_ids("\n")
    for k, (i, lab) in enumerate(zip(ids, labels)):
        if i == im_end and lab != IGNORE_INDEX:
            assert ids[k + 1] == newline and labels[k + 1] == IGNORE_INDEX
    assert ids[-2:] == [im_end, newline]


def qwen2_text(conversations) -> str:
    """The Qwen2 chat markup written out by hand: the text the encoded ids must decode to."""
    text = f"<|im_start|>system\n{DEFAULT_SYSTEM}<|im_end|>\n"
    return text + "".join(f"<|im_start|>{role}\n{value}<|im_end|>\n" for role, value in normalize_turns(conversations))


def test_structure_matches_qwen2_format(tokenizer):
    ids, _ = encode_conversation(tokenizer, CONV)
    text = qwen2_text(CONV)
    assert text.startswith(f"<|im_start|>system\n{DEFAULT_SYSTEM}<|im_end|>\n<|im_start|>user\n<image>\nDescribe")
    assert text.endswith("<|im_start|>assistant\nThe pass key is 48213.<|im_end|>\n")
    # Segment-wise encoding may add a sentencepiece dummy-prefix space per segment; otherwise identical.
    assert tokenizer.decode(ids).replace(" ", "") == text.replace(" ", "")
    im_start = tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert ids[0] == im_start and ids.count(im_start) == 1 + len(CONV)


def test_media_placeholders_are_single_ignored_tokens(tokenizer):
    conv = [{"from": "human", "value": "<image>\n<video>\nand <image> again"},
            {"from": "gpt", "value": "Yes <image> here."}]
    ids, labels = encode_conversation(tokenizer, conv)
    img, vid = tokenizer.convert_tokens_to_ids("<image>"), tokenizer.convert_tokens_to_ids("<video>")
    assert ids.count(img) == 3 and ids.count(vid) == 1
    for i, lab in zip(ids, labels):
        if i in (img, vid):
            assert lab == IGNORE_INDEX
    # the assistant text around the placeholder is still supervised
    assert [tokenizer.decode(r) for r in supervised_runs(ids, labels)][0] == "Yes "


def test_role_aliases_and_system(tokenizer):
    a = encode_conversation(tokenizer, [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}])
    b = encode_conversation(tokenizer, [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}])
    c = encode_conversation(tokenizer, [{"from": "user", "value": "Hi"}, {"from": "assistant", "value": "Hello"}])
    assert a == b == c
    no_sys, _ = encode_conversation(tokenizer, [{"from": "human", "value": "Hi"}], system=None)
    assert "system" not in tokenizer.decode(no_sys)
    other, _ = encode_conversation(tokenizer, [{"from": "human", "value": "Hi"}], system="Be brief")
    assert "Be brief" in tokenizer.decode(other)


@pytest.mark.parametrize("bad", [
    [{"from": "system", "value": "x"}],
    [{"from": "bot", "value": "x"}],
    [{"value": "x"}],
    [{"from": "human", "value": 3}],
    [],
    "not a list",
])
def test_invalid_conversations_raise(tokenizer, bad):
    with pytest.raises(ValueError):
        encode_conversation(tokenizer, bad)


def test_encode_prompt_matches_training_prefix(tokenizer):
    full, labels = encode_conversation(tokenizer, CONV[:2])
    prompt = encode_prompt(tokenizer, CONV[:1])
    first_supervised = next(k for k, lab in enumerate(labels) if lab != IGNORE_INDEX)
    assert prompt == full[:first_supervised]
    assert tokenizer.decode(prompt).replace(" ", "").endswith("<|im_start|>assistant\n")


def test_missing_special_token_is_a_clear_error():
    class NoMedia:
        unk_token, unk_token_id = "<unk>", 0

        def convert_tokens_to_ids(self, t):
            return {"<|im_start|>": 5, "<|im_end|>": 6}.get(t, 0)

    with pytest.raises(ValueError, match="<image>"):
        encode_conversation(NoMedia(), [{"from": "human", "value": "hi"}])


def llama3_tokenizer():
    """Byte-level tokenizer that speaks Llama-3's markup only (no <|im_start|>), as a Llama-3 folder does."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from longvila.model.tokenizer import LLAMA3_CHAT_TEMPLATE

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    raw = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(sorted(alphabet))}, merges=[]))
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=raw)
    tok.add_tokens(["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<image>",
                    "<vila/video>"], special_tokens=True)
    tok.chat_template = LLAMA3_CHAT_TEMPLATE
    return tok


def test_llama3_markup_matches_its_chat_template_and_labels_answers():
    from longvila.data.template import LLAMA3, chat_format

    tok = llama3_tokenizer()
    assert chat_format(tok) is LLAMA3
    ids, labels = encode_conversation(tok, CONV)
    messages = [{"role": "system", "content": DEFAULT_SYSTEM}] + [
        {"role": "user" if t["from"] == "human" else "assistant", "content": t["value"]} for t in CONV]
    rendered = tok.apply_chat_template(messages, tokenize=False)
    assert ids == tok.encode(rendered, add_special_tokens=False)
    eot = tok.convert_tokens_to_ids("<|eot_id|>")
    runs = supervised_runs(ids, labels)
    answers = [t["value"] for t in CONV if t["from"] == "gpt"]
    assert [tok.decode(run[:-1]) for run in runs] == answers and all(run[-1] == eot for run in runs)
    prompt = encode_prompt(tok, CONV[:1])
    assert prompt == tok.encode(tok.apply_chat_template(messages[:2], tokenize=False, add_generation_prompt=True),
                                add_special_tokens=False)
