"""Chat format and label masking: Qwen2's markup, or Llama-3's when the tokenizer speaks that instead.

The rendered text of a conversation (Qwen2) is::

    <|im_start|>system\\n{system}<|im_end|>\\n
    <|im_start|>user\\n{human}<|im_end|>\\n
    <|im_start|>assistant\\n{gpt}<|im_end|>\\n ...

Only assistant content and the ``<|im_end|>`` that closes it are supervised; the role headers, the system and
user turns, the newline after each ``<|im_end|>`` and every media placeholder get ``IGNORE_INDEX``. Llama-3
(``<|begin_of_text|>``, ``<|start_header_id|>role<|end_header_id|>\\n\\n``, ``<|eot_id|>``) is labelled by the same
rule; ``chat_format`` picks the markup from the tokenizer's special tokens.

Why segment-wise encoding: each piece is tokenised on its own and the ids are concatenated, so the label of every
token is known by construction (no offset mapping, works with slow and fast tokenizers). Special tokens
(``<|im_start|>``, ``<|im_end|>``, ``<image>``, ``<video>``) are inserted by id, never re-parsed from text, so they
are always exactly one token. For byte-level BPE tokenizers (Qwen2) the result equals tokenising the rendered
string; sentencepiece tokenizers with a dummy prefix get a leading "▁" per segment. Training and generation must
therefore both go through this module (``encode_conversation`` / ``encode_prompt``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from dataclasses import dataclass

from longvila.constants import DEFAULT_SYSTEM, IGNORE_INDEX, IM_END, IM_START, IMAGE_TOKEN, MEDIA_TOKENS, VIDEO_TOKENS

ROLE_ALIASES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}
"""Accepted role names (LLaVA "from" values and OpenAI-style names) -> Qwen2 role."""

_MEDIA_SPLIT = re.compile("(" + "|".join(re.escape(token) for token in MEDIA_TOKENS) + ")")


def special_token_id(tokenizer, token: str) -> int:
    """Id of a token that must exist as ONE vocabulary entry; ValueError naming the token otherwise."""
    tid = tokenizer.convert_tokens_to_ids(token)
    unk = getattr(tokenizer, "unk_token_id", None)
    if tid is None or isinstance(tid, list) or (unk is not None and tid == unk and token != tokenizer.unk_token):
        raise ValueError(f"tokenizer has no single-token entry for {token!r}; add it as a special token")
    return int(tid)


def video_token_id(tokenizer) -> int:
    """Id of the tokenizer's video placeholder: VILA's ``<vila/video>`` if it has one, else ``<video>``.

    Both spellings in text map to this one id, so VILA data (``<vila/video>``) and ours (``<video>``) train alike.
    """
    for token in VIDEO_TOKENS:
        try:
            return special_token_id(tokenizer, token)
        except ValueError:
            continue
    raise ValueError(f"tokenizer has no single-token entry for any of {VIDEO_TOKENS}; add one as a special token")


def normalize_turns(conversations) -> list[tuple[str, str]]:
    """Validate a conversation and return [(role, text)] with role in {"user", "assistant"}.

    Accepts LLaVA turns ``{"from": "human"|"gpt", "value": str}`` and ``{"role": ..., "content": ...}``.
    """
    if not isinstance(conversations, (list, tuple)) or len(conversations) == 0:
        raise ValueError(f"conversations must be a non-empty list of turns, got {type(conversations).__name__}")
    turns = []
    for i, turn in enumerate(conversations):
        if not isinstance(turn, dict):
            raise ValueError(f"turn {i} must be a dict, got {type(turn).__name__}")
        raw_role = turn.get("from", turn.get("role"))
        role = ROLE_ALIASES.get(raw_role) if isinstance(raw_role, str) else None
        if role is None:
            raise ValueError(f"turn {i} has unknown role {raw_role!r}; expected one of {sorted(ROLE_ALIASES)}")
        text = turn.get("value", turn.get("content"))
        if not isinstance(text, str):
            raise ValueError(f"turn {i} value must be a string, got {type(text).__name__}")
        turns.append((role, text))
    return turns


@dataclass(frozen=True)
class ChatFormat:
    """One chat markup: a turn is ``open`` role [``close``] ``suffix`` content ``end`` ``after_end``.

    Special tokens (``begin``, ``open``, ``close``, ``end``) go in by id; the rest is text.
    """

    name: str
    open: str
    end: str
    suffix: str
    after_end: str
    close: str | None = None
    begin: str | None = None


QWEN2 = ChatFormat("qwen2", open=IM_START, end=IM_END, suffix="\n", after_end="\n")
LLAMA3 = ChatFormat("llama3", open="<|start_header_id|>", close="<|end_header_id|>", end="<|eot_id|>",
                    suffix="\n\n", after_end="", begin="<|begin_of_text|>")
CHAT_FORMATS = (QWEN2, LLAMA3)


def chat_format(tokenizer) -> ChatFormat:
    """The markup a tokenizer speaks, read off its special tokens (Qwen2's ``<|im_start|>`` or Llama-3's)."""
    for fmt in CHAT_FORMATS:
        try:
            special_token_id(tokenizer, fmt.open)
            return fmt
        except ValueError:
            continue
    raise ValueError(f"tokenizer has no single-token entry for {IM_START!r} (Qwen2 chat format) or "
                     f"{LLAMA3.open!r} (Llama-3); add one as a special token")


class _Encoder:
    """Resolves the special ids once and appends (ids, labels) segments."""

    def __init__(self, tokenizer):
        self.tok = tokenizer
        self.fmt = chat_format(tokenizer)
        self.im_start = special_token_id(tokenizer, self.fmt.open)
        self.im_end = special_token_id(tokenizer, self.fmt.end)
        self.close = [special_token_id(tokenizer, self.fmt.close)] if self.fmt.close else []
        self.begin = [special_token_id(tokenizer, self.fmt.begin)] if self.fmt.begin else []
        image = special_token_id(tokenizer, IMAGE_TOKEN)
        self.media = {IMAGE_TOKEN: image, **dict.fromkeys(VIDEO_TOKENS, video_token_id(tokenizer))}
        self.newline = self._text(self.fmt.after_end)
        self.ids: list[int] = []
        self.labels: list[int] = []

    def _text(self, text: str) -> list[int]:
        return list(self.tok.encode(text, add_special_tokens=False)) if text else []

    def add(self, ids: Sequence[int], supervised: bool) -> None:
        self.ids.extend(ids)
        self.labels.extend(ids if supervised else [IGNORE_INDEX] * len(ids))

    def add_content(self, text: str, supervised: bool) -> None:
        """Text with media placeholders: placeholders become their single id and are never supervised."""
        for part in _MEDIA_SPLIT.split(text):
            if part in self.media:
                self.add([self.media[part]], supervised=False)
            elif part:
                self.add(self._text(part), supervised)

    def header(self, role: str) -> None:
        if self.close:
            self.add([self.im_start] + self._text(role) + self.close + self._text(self.fmt.suffix), supervised=False)
        else:
            self.add([self.im_start] + self._text(f"{role}{self.fmt.suffix}"), supervised=False)


def encode_conversation(tokenizer, conversations, system: str | None = DEFAULT_SYSTEM) -> tuple[list[int], list[int]]:
    """Encode a conversation in the Qwen2 chat format.

    Returns (input_ids, labels), labels UNSHIFTED: equal to input_ids on assistant content and its closing
    <|im_end|>, IGNORE_INDEX elsewhere (system, user turns, role headers, the "\\n" after <|im_end|>, media
    placeholders). ``system=None`` or "" omits the system block. Raises ValueError for unknown roles.
    """
    turns = normalize_turns(conversations)
    enc = _Encoder(tokenizer)
    enc.add(enc.begin, supervised=False)
    if system:
        enc.header("system")
        enc.add_content(system, supervised=False)
        enc.add([enc.im_end] + enc.newline, supervised=False)
    for role, text in turns:
        enc.header(role)
        sup = role == "assistant"
        enc.add_content(text, supervised=sup)
        enc.add([enc.im_end], supervised=sup)
        enc.add(enc.newline, supervised=False)
    return enc.ids, enc.labels


def encode_prompt(tokenizer, conversations, system: str | None = DEFAULT_SYSTEM) -> list[int]:
    """Ids for generation: the conversation so far followed by the open "<|im_start|>assistant\\n" header.

    Uses exactly the same segment encoding as training, so a model sees the same ids at eval time.
    """
    ids, _ = encode_conversation(tokenizer, conversations, system=system)
    enc = _Encoder(tokenizer)
    enc.header("assistant")
    return ids + enc.ids
