"""Packed long-text dataset for context extension (stage 4).

Documents are tokenised once up front (with a progress bar), each followed by EOS, and packed in file order into
sequences of exactly ``model_max_length`` tokens. Every packed sample carries ``position_ids`` that restart at 0
at each document start; the model derives segments from them (segment = cumsum(position_ids == 0)) so attention
and the shifted targets never cross a document boundary.

Packing policy (``split_documents``):
- False (default): a document that fits in ``model_max_length`` is never split. It goes into the current
  sequence if it fits, else the current sequence is closed (padded) and a new one starts. Keeping documents whole
  matters for retrieval data such as passkey, whose answer is only learnable with the key in context.
- True: dense streaming; every sequence is filled completely and a document crossing a sequence end continues as
  a new document (positions restart) in the next sequence. Only the last sequence has padding.
In both modes no document piece exceeds ``model_max_length``: in whole mode a longer document is cut into
``model_max_length``-token chunks, each its own document (the first chunks fill whole sequences).
Padding (pad id, labels IGNORE_INDEX) is its own position run starting at 0, so it never joins a real document.
Nothing is dropped: the last partial sequence is padded.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from longvila.constants import IGNORE_INDEX, PAD_TOKEN
from longvila.data.records import read_records


def _validate_text(obj) -> str:
    if not isinstance(obj, dict):
        raise ValueError(f"line must be a JSON object, got {type(obj).__name__}")
    if not isinstance(obj.get("text"), str):
        raise ValueError("line has no string 'text'")
    return obj["text"]


def resolve_pad_id(tokenizer) -> int:
    """pad_token_id, else the id of <|endoftext|> (Qwen2's pad), else EOS."""
    if tokenizer.pad_token_id is not None:
        return int(tokenizer.pad_token_id)
    tid = tokenizer.convert_tokens_to_ids(PAD_TOKEN)
    if isinstance(tid, int) and tid != getattr(tokenizer, "unk_token_id", None):
        return tid
    if tokenizer.eos_token_id is not None:
        return int(tokenizer.eos_token_id)
    raise ValueError("tokenizer has no pad, <|endoftext|> or eos token to pad with")


def pack_documents(docs: list[list[int]], max_len: int, split_documents: bool = False) -> list[list[list[int]]]:
    """Pack token lists into sequences; returns, per sequence, its list of documents (each <= max_len tokens).

    Pure function (no tokenizer) so the packing policy is testable on its own. See the module docstring.
    """
    if not isinstance(max_len, int) or max_len < 1:
        raise ValueError(f"model_max_length must be a positive int, got {max_len!r}")
    sequences: list[list[list[int]]] = []
    current: list[list[int]] = []
    used = 0
    for doc in docs:
        # Whole mode pre-cuts over-long documents; dense mode cuts wherever a sequence ends anyway.
        chunks = [doc] if split_documents else [doc[i:i + max_len] for i in range(0, len(doc), max_len)]
        for chunk in chunks:
            while chunk:
                room = max_len - used
                if len(chunk) <= room:
                    take = chunk
                elif split_documents:
                    take = chunk[:room]
                else:  # keep the document whole: close this sequence, the chunk goes to a fresh one
                    sequences.append(current)
                    current, used = [], 0
                    continue
                current.append(take)
                used += len(take)
                chunk = chunk[len(take):]
                if used == max_len:
                    sequences.append(current)
                    current, used = [], 0
    if current:
        sequences.append(current)
    return sequences


class PackedTextDataset(Dataset):
    """JSONL of ``{"text": ...}`` documents packed into fixed-length, fully supervised sequences.

    Sample: ``input_ids``, ``labels`` (= input_ids; IGNORE_INDEX on padding), ``position_ids`` (restart at 0 per
    document and for the padding run), ``media`` = []. Each sequence is exactly ``model_max_length`` long.
    ``num_malformed`` counts skipped lines (bad JSON, no string "text"); ``num_documents`` the documents read.
    """

    def __init__(self, path_jsonl, tokenizer, model_max_length: int, split_documents: bool = False,
                 batch_size: int = 256):
        if not isinstance(model_max_length, int) or model_max_length < 1:
            raise ValueError(f"model_max_length must be a positive int, got {model_max_length!r}")
        if tokenizer.eos_token_id is None:
            raise ValueError("tokenizer has no eos_token_id; packed documents need an end-of-document token")
        self.path = os.fspath(path_jsonl)
        self.model_max_length = model_max_length
        self.pad_id = resolve_pad_id(tokenizer)
        texts, self.num_malformed = read_records(self.path, _validate_text)
        self.num_documents = len(texts)

        eos = int(tokenizer.eos_token_id)
        docs: list[list[int]] = []
        with tqdm(total=len(texts), desc=f"tokenizing {os.path.basename(self.path)}", unit="doc") as bar:
            for start in range(0, len(texts), batch_size):
                batch = texts[start:start + batch_size]
                encoded = tokenizer(batch, add_special_tokens=False)["input_ids"]
                docs.extend(list(ids) + [eos] for ids in encoded)
                bar.update(len(batch))
        self.num_tokens = sum(len(d) for d in docs)

        # Store flat int arrays per sequence (compact, and cheap to pickle into DataLoader workers).
        self._ids: list[np.ndarray] = []
        self._pos: list[np.ndarray] = []
        for seq in pack_documents(docs, model_max_length, split_documents):
            self._ids.append(np.concatenate([np.asarray(d, dtype=np.int64) for d in seq]))
            self._pos.append(np.concatenate([np.arange(len(d), dtype=np.int64) for d in seq]))

    def __len__(self) -> int:
        return len(self._ids)

    def __getitem__(self, index: int) -> dict:
        ids = torch.from_numpy(self._ids[index])
        pos = torch.from_numpy(self._pos[index])
        n_pad = self.model_max_length - ids.numel()
        labels = ids.clone()
        if n_pad:
            ids = torch.cat([ids, torch.full((n_pad,), self.pad_id, dtype=torch.long)])
            labels = torch.cat([labels, torch.full((n_pad,), IGNORE_INDEX, dtype=torch.long)])
            pos = torch.cat([pos, torch.arange(n_pad, dtype=torch.long)])
        return {"input_ids": ids.clone(), "labels": labels, "position_ids": pos.clone(), "media": []}
