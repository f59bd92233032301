"""A small BPE tokenizer trained locally, saved so that plain ``AutoTokenizer`` reloads identical ids.

The tiny default model must work offline, so we train on text generated here (the words the synthetic data uses
plus generic English filler). Two kinds, because transformers 5 picks the tokenizer class partly from the *model*
config that sits beside the tokenizer in ``llm/``:

* ``"qwen2"`` (default, used by the tiny Qwen2 model): byte-level BPE trained with ``tokenizers`` in exactly
  Qwen2Tokenizer's pipeline (NFC, Qwen2's pre-tokenize regex, ByteLevel). For ``model_type == "qwen2"``
  AutoTokenizer *always* instantiates Qwen2Tokenizer (qwen2 is in MODELS_WITH_INCORRECT_HUB_TOKENIZER_CLASS), which
  rebuilds that pipeline around the saved vocab/merges, so a sentencepiece (Metaspace) vocabulary cannot survive
  a reload there ("\n" would encode to []). Qwen2's regex splits digits one by one (passkeys tokenize per digit)
  and "\n" is the single byte token "Ċ", like the real Qwen2 tokenizer.
* ``"llama"``: sentencepiece BPE (split_digits, byte_fallback, no dummy prefix, whitespace kept) converted the one
  faithful way (DESIGN): ``LlamaTokenizer.from_pretrained(dir with tokenizer.model)`` then ``save_pretrained``.
  Newlines are left out of the sentencepiece training text and come back through byte fallback as ``<0x0A>``, a
  single, *non-special* id (so ``skip_special_tokens=True`` keeps them).
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from pathlib import Path

from longvila.constants import DEFAULT_SYSTEM, IM_END, IM_START, IMAGE_TOKEN, PAD_TOKEN, VIDEO_TOKEN

TOKENIZER_KINDS = ("qwen2", "llama")
SPECIAL_SYMBOLS = (IMAGE_TOKEN, VIDEO_TOKEN, IM_START, IM_END, PAD_TOKEN)

QWEN2_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '" + IM_START + "system\\n" + DEFAULT_SYSTEM + IM_END + "\\n' }}"
    "{% endif %}"
    "{{ '" + IM_START + "' + message['role'] + '\\n' + message['content'] + '" + IM_END + "' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '" + IM_START + "assistant\\n' }}{% endif %}"
)
"""Qwen2's chat format (DESIGN): system turn inserted when the conversation has none."""

LLAMA3_CHAT_TEMPLATE = (
    "{{ '<|begin_of_text|>' }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)
"""Llama-3 Instruct's chat format, for LLM folders that ship without a chat template."""

CHAT_TEMPLATES = {"qwen2": QWEN2_CHAT_TEMPLATE, "llama3": LLAMA3_CHAT_TEMPLATE}

COLOURS = ("red", "green", "blue", "yellow", "purple", "orange", "white", "black")
SHAPES = ("circle", "square", "triangle", "star")
DOMAIN_WORDS = (
    "passkey pass key frame frames video videos image images picture clip scene colour color colours colors shape "
    "shapes object objects background foreground left right top bottom middle center corner first second third last "
    "number count how many which what where when who why whose is are was were does do did can could show shows "
    "shown appear appears appeared moving moves static describe answer question needle haystack remember hidden "
    "find retrieve the a an of in on at to and or with without there here this that these those it its large small "
    "big tiny bright dark single multiple every each all none some yes no true false user assistant system helpful"
).split()
FILLER_WORDS = (
    "time year people way day man thing woman life child world school state family student group country problem "
    "hand part place case week company system program work government night point home water room mother area money "
    "story fact month lot right study book eye job word business issue side kind head house service friend father "
    "power hour game line end member law car city community name president team minute idea kid body information "
    "back parent face others level office door health person art war history party result change morning reason "
    "research girl guy moment air teacher force education foot boy age policy process music market sense nation "
    "plan college interest death experience effect use class control care field development role effort rate heart "
    "drug leader light voice wife police mind price report decision son view relationship town road arm difference "
    "value building action model season society tax director position player record paper space ground form event "
    "official matter center couple site project activity table court oil situation cost industry figure street "
    "stage sky sun grass tree river mountain garden flower bird dog cat horse fish animal window kitchen morning "
    "evening summer winter spring autumn rain snow wind cloud ocean island forest bridge train plane boat ship "
    "computer phone letter picture camera screen music song dance story poem language science math history "
    "go come make take see know get give find think tell become leave feel put bring begin keep hold write stand "
    "hear let mean set meet run pay sit speak lie lead read grow lose fall send build understand draw break spend "
    "cut rise drive buy wear choose seek throw catch deal win forget teach sell walk talk play move live believe "
    "happen provide include continue learn add open start turn help call try ask need seem look want use follow "
    "good new old great high long little own other different important large young early public bad able best "
    "better sure free low late hard real strong possible whole special clear recent certain personal open red "
    "easy simple quiet warm cold happy sad quick slow full empty soft loud heavy light rich poor safe fresh "
    "again also just very often always never sometimes today tomorrow yesterday soon already still almost about "
    "after before during under over between through across behind above below into onto from until while because "
    "although if then than so but not only even more most less least much many few several both either neither "
    "he she they we you i me him her them us my your his their our mine yours hers theirs ours one two three four "
    "five six seven eight nine ten eleven twelve hundred thousand million zero once twice half quarter "
    "go here we there and back again the grass is green the sky is blue the sun is yellow"
).split()
SUFFIXES = ("", "", "", "s", "ed", "ing", "er", "ly")
TEMPLATES = (
    "What {c} {s} appears in the {m}?",
    "Which frame of the video shows the {c} {s}?",
    "How many {s}s are in the image?",
    "The {s} in frame {n} is {c}.",
    "The passkey is {n}. Remember it. {n} is the passkey.",
    "The pass key is {n}. Remember it. {n} is the pass key.",
    "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.",
    "What is the passkey? The passkey is {n}.",
    "Describe the {m} in detail.",
    "There is a {c} {s} at the {p} of the {m}.",
    "Answer with a single word. What colour is the {s}?",
    "The needle is hidden in frame {n} of the video.",
)


def build_corpus(num_sentences: int = 6000, seed: int = 0) -> list[str]:
    """Deterministic training sentences: task templates plus random English-like filler; no newlines."""
    rng = random.Random(seed)
    words = list(DOMAIN_WORDS) + list(FILLER_WORDS) + list(COLOURS) + list(SHAPES)
    lines: list[str] = []
    for i in range(num_sentences):
        if i % 3 == 0:
            line = rng.choice(TEMPLATES).format(
                c=rng.choice(COLOURS),
                s=rng.choice(SHAPES),
                m=rng.choice(("image", "video", "picture", "frame", "scene")),
                n=rng.randint(0, 10 ** rng.randint(1, 7)),
                p=rng.choice(("left", "right", "top", "bottom", "center")),
            )
        else:
            n = rng.randint(4, 18)
            toks = [rng.choice(words) + rng.choice(SUFFIXES) for _ in range(n)]
            if rng.random() < 0.2:
                toks.insert(rng.randint(0, n), str(rng.randint(0, 99999)))
            line = " ".join(toks)
            line = line[:1].upper() + line[1:] + rng.choice((".", ".", "?", "!", ",", ";", ":"))
        lines.append(line)
    return lines


def build_chat_corpus(num_sentences: int = 6000, seed: int = 0) -> list[str]:
    """The same sentences grouped into Qwen2-formatted conversations (newlines, chat markers, media tokens)."""
    lines = build_corpus(num_sentences, seed)
    rng = random.Random(seed + 1)
    docs = []
    for i in range(0, len(lines) - 1, 2):
        media = rng.choice(("", IMAGE_TOKEN + "\n", VIDEO_TOKEN + "\n"))
        docs.append(
            f"{IM_START}system\n{DEFAULT_SYSTEM}{IM_END}\n{IM_START}user\n{media}{lines[i]}{IM_END}\n"
            f"{IM_START}assistant\n{lines[i + 1]}{IM_END}\n"
        )
    return docs


def train_bytelevel_bpe(vocab_size: int = 2000, seed: int = 0):
    """Byte-level BPE in Qwen2Tokenizer's exact pipeline (see module docstring); returns a ``tokenizers.Tokenizer``."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    tok = Tokenizer(models.BPE(unk_token=None, byte_fallback=False, fuse_unk=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[PAD_TOKEN, IM_START, IM_END, IMAGE_TOKEN, VIDEO_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte representable
        show_progress=False,
    )
    tok.train_from_iterator(build_chat_corpus(seed=seed), trainer)
    return tok


def train_sentencepiece(model_prefix: str | os.PathLike, vocab_size: int = 2000, seed: int = 0) -> Path:
    """Train a BPE sentencepiece model; returns the path of ``<prefix>.model``.

    BPE (not unigram) because transformers' LlamaTokenizer is a BPE tokenizer: converting a BPE model keeps the
    ids and segmentation identical. ``hard_vocab_limit=False`` lets a small corpus stop short of ``vocab_size``.
    """
    import sentencepiece as spm

    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(build_corpus(seed=seed)),
        model_prefix=str(model_prefix),
        vocab_size=vocab_size,
        model_type="bpe",
        hard_vocab_limit=False,
        byte_fallback=True,
        split_digits=True,
        add_dummy_prefix=False,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        allow_whitespace_only_pieces=True,
        user_defined_symbols=list(SPECIAL_SYMBOLS),
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        num_threads=1,  # deterministic merges
        minloglevel=2,
    )
    return Path(f"{model_prefix}.model")


def train_tokenizer(out_dir: str | os.PathLike, vocab_size: int = 2000, seed: int = 0, kind: str = "qwen2"):
    """Train, wrap and save a tokenizer into ``out_dir``; returns it reloaded through ``AutoTokenizer``.

    Returning the reloaded copy (not the in-memory one) guarantees callers use exactly what a later
    ``AutoTokenizer.from_pretrained(out_dir)`` gives. eos = <|im_end|>, pad = <|endoftext|>, no BOS (Qwen2 style).
    """
    from transformers import AutoTokenizer, LlamaTokenizer, Qwen2Tokenizer

    if kind not in TOKENIZER_KINDS:
        raise ValueError(f"unknown tokenizer kind {kind!r}; expected one of {TOKENIZER_KINDS}")
    if vocab_size < 300:
        raise ValueError(f"vocab_size {vocab_size} too small: the byte alphabet alone needs 256 + specials")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="tok-") as tmp:
        if kind == "qwen2":
            train_bytelevel_bpe(vocab_size, seed).save(str(Path(tmp) / "tokenizer.json"))
            tok = Qwen2Tokenizer.from_pretrained(
                tmp, bos_token=None, eos_token=IM_END, pad_token=PAD_TOKEN, padding_side="right"
            )
        else:
            train_sentencepiece(Path(tmp) / "tokenizer", vocab_size=vocab_size, seed=seed)
            tok = LlamaTokenizer.from_pretrained(
                tmp, add_prefix_space=False, legacy=False, add_bos_token=False, add_eos_token=False, eos_token=IM_END,
                pad_token=PAD_TOKEN, padding_side="right")
        tok.chat_template = QWEN2_CHAT_TEMPLATE
        tok.save_pretrained(out)
        if kind == "llama":  # the sentencepiece model itself, for slow (transformers 4.x / VILA) loading
            shutil.copyfile(Path(tmp) / "tokenizer.model", out / "tokenizer.model")
    reloaded = AutoTokenizer.from_pretrained(out)
    check_tokenizer(reloaded)
    return reloaded


def newline_token_id(tokenizer) -> int:
    """Id of "\\n" on its own: the embedding VILA appends after every video frame."""
    ids = tokenizer.encode("\n", add_special_tokens=False)
    if len(ids) != 1:
        raise ValueError(f"tokenizer encodes '\\n' to {len(ids)} ids {ids}; need exactly one")
    return ids[0]


def single_token_id(tokenizer, token: str) -> int:
    """Id of a token that must encode as one id (media placeholders, chat markers)."""
    ids = tokenizer.encode(token, add_special_tokens=False)
    if len(ids) != 1:
        raise ValueError(f"tokenizer encodes {token!r} to {len(ids)} ids {ids}; need exactly one")
    return ids[0]


def check_tokenizer(tokenizer) -> None:
    """Fail loudly if a tokenizer lacks what the model and data code rely on."""
    for token in SPECIAL_SYMBOLS:
        single_token_id(tokenizer, token)
    newline_token_id(tokenizer)
    text = "a\nb"
    if tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) != text:
        raise ValueError("tokenizer does not round-trip 'a\\nb'")
