"""LLaVA-style conversation datasets (images, videos, text) producing contract samples.

A record looks like ``{"id": ..., "image": "a.png" | ["a.png", ...], "video": "v.mp4" | [...],
"conversations": [{"from": "human", "value": "<image>\\nWhat is this?"}, {"from": "gpt", "value": "A cat."}]}``.

Sample (what ``longvila/data/collate.py`` and the model expect): ``input_ids``/``labels`` LongTensor (L,) with each medium as ONE placeholder
token, and ``media``: one FloatTensor (T,3,H,W) per placeholder in text order (an image is T=1), already run
through the image processor.

Failure policy (nothing is silent):
- malformed JSON lines, records without a valid conversation, records whose placeholder count disagrees with
  their media list: skipped when the file is loaded, one warning each, counted in ``num_malformed``;
- an empty file or a file with no usable record: ValueError;
- a missing or corrupt media file: ``__getitem__`` returns None and logs a warning once per index (the
  collator drops it and counts it in ``num_skipped``);
- a sample whose expanded sequence exceeds ``model_max_length`` is truncated (warning once per index); see
  ``_truncate``.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import torch
from torch.utils.data import Dataset

from longvila.constants import DEFAULT_SYSTEM, IGNORE_INDEX, IMAGE_TOKEN, VIDEO_TOKENS
from longvila.errors import MediaError
from longvila.data.image import load_image, open_image, pixel_values
from longvila.data.records import read_records
from longvila.data.template import encode_conversation, normalize_turns, special_token_id, video_token_id
from longvila.data.video import load_video, open_video
from longvila.model.media_expansion import video_positions

logger = logging.getLogger(__name__)


def _as_path_list(value, key: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise ValueError(f"'{key}' must be a path or a list of paths, got {value!r}")


def validate_record(obj) -> dict:
    """Normalise one LLaVA record or raise ValueError saying why it is unusable.

    If the text has no placeholder for a medium kind the record carries, "<image>\\n" / "<video>\\n" (one per
    file, images first) is prepended to the first human turn, the LLaVA convention. If it has some but not one
    per file, the record is rejected: guessing where the rest go would silently change the sample.
    """
    if not isinstance(obj, dict):
        raise ValueError(f"record must be a JSON object, got {type(obj).__name__}")
    if "conversations" not in obj:
        raise ValueError("record has no 'conversations'")
    turns = normalize_turns(obj["conversations"])
    images = _as_path_list(obj.get("image", obj.get("images")), "image")
    videos = _as_path_list(obj.get("video", obj.get("videos")), "video")

    prefix = ""
    for spellings, files in (((IMAGE_TOKEN,), images), (VIDEO_TOKENS, videos)):
        token = spellings[-1]
        count = sum(text.count(spelling) for _, text in turns for spelling in spellings)
        if count == 0:
            prefix += f"{token}\n" * len(files)
        elif count != len(files):
            raise ValueError(f"{count} {token} placeholder(s) in the text but {len(files)} file(s) in the record")
    if prefix:
        first_user = next((i for i, (role, _) in enumerate(turns) if role == "user"), None)
        if first_user is None:
            raise ValueError("record has media but no human turn to attach the placeholder to")
        turns[first_user] = ("user", prefix + turns[first_user][1])
    return {
        "id": obj.get("id"),
        "images": images,
        "videos": videos,
        "conversations": [{"from": role, "value": text} for role, text in turns],
    }


class ConversationDataset(Dataset):
    """Conversations with optional images/videos from a LLaVA JSON list or a JSONL file.

    Args:
        path: the JSON / JSONL file.
        tokenizer: any HF tokenizer with <image>, <video>, <|im_start|>, <|im_end|> as single tokens.
        image_processor: HF image processor (SigLIP); called on a list of frames, returns ``pixel_values``.
        media_root: directory relative media paths are resolved against (default: the file's directory).
        num_video_frames: frames sampled uniformly per video; ``fps`` caps them (see ``load_video``).
        model_max_length: limit on the sequence the LLM sees. With ``tokens_per_frame`` (the model's visual tokens
            per image or frame) each placeholder is budgeted at its expanded size: an ``<image>`` as T tokens, a
            ``<video>`` as ``num_video_frames`` x (T + 1) (every frame is followed by a newline embedding; the
            fps cap can only make it fewer). Without it, a placeholder counts as one token, i.e. the limit is on
            text tokens only.
        tokens_per_frame: visual tokens per image/frame after the projector (``VILAModel.tokens_per_frame``).
        system: system prompt of the chat template (None omits it).
        lazy_media: hand out media opened but not decoded (``ImageFile`` / ``VideoClip``), for a collator that
            decodes only the frames its sequence-parallel rank encodes (``longvila/data/rank_media.py``). A file
            that cannot even be opened still skips the sample here, on every rank alike.
    """

    def __init__(self, path, tokenizer, image_processor, media_root=None, num_video_frames: int = 8,
                 fps: float | None = None, model_max_length: int | None = None,
                 system: str | None = DEFAULT_SYSTEM, tokens_per_frame: int | None = None, lazy_media: bool = False):
        if not isinstance(num_video_frames, int) or num_video_frames < 1:
            raise ValueError(f"num_video_frames must be a positive int, got {num_video_frames!r}")
        if fps is not None and not fps > 0:
            raise ValueError(f"fps must be > 0 or None, got {fps!r}")
        if model_max_length is not None and (not isinstance(model_max_length, int) or model_max_length < 1):
            raise ValueError(f"model_max_length must be a positive int or None, got {model_max_length!r}")
        if tokens_per_frame is not None and (not isinstance(tokens_per_frame, int) or tokens_per_frame < 1):
            raise ValueError(f"tokens_per_frame must be a positive int or None, got {tokens_per_frame!r}")
        self.path = os.fspath(path)
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.media_root = os.fspath(media_root) if media_root is not None else os.path.dirname(os.path.abspath(path))
        self.num_video_frames = num_video_frames
        self.fps = fps
        self.model_max_length = model_max_length
        self.system = system
        self.lazy_media = lazy_media
        self.image_token_id = special_token_id(tokenizer, IMAGE_TOKEN)
        self.video_token_id = video_token_id(tokenizer)
        self.placeholder_cost = {  # sequence positions each placeholder becomes once the model expands it
            self.image_token_id: tokens_per_frame or 1,
            self.video_token_id: video_positions(num_video_frames, tokens_per_frame) if tokens_per_frame else 1,
        }
        self.records, self.num_malformed = read_records(self.path, validate_record)
        self._warned: set[int] = set()

    def __len__(self) -> int:
        return len(self.records)

    def _warn_once(self, index: int, message: str, *args) -> None:
        if index not in self._warned:
            self._warned.add(index)
            logger.warning(message, *args)

    def _resolve(self, rel: str) -> str:
        return rel if os.path.isabs(rel) else os.path.join(self.media_root, rel)

    def _truncate(self, index: int, ids: list[int], labels: list[int]):
        """Cut the sample so its expanded sequence fits ``model_max_length``.

        The cut falls between tokens, so a media expansion is never split: a placeholder is either kept whole
        (its medium is loaded) or dropped with its medium and everything after it. A sample left with no
        supervised token teaches nothing and is skipped (None) with a warning.
        """
        limit = self.model_max_length
        if limit is None:
            return ids, labels
        cost = self.placeholder_cost
        used, keep = 0, 0
        for tid in ids:
            if used + cost.get(tid, 1) > limit:
                break
            used += cost.get(tid, 1)
            keep += 1
        if keep == len(ids):
            return ids, labels
        total = sum(cost.get(tid, 1) for tid in ids)
        if not any(lab != IGNORE_INDEX for lab in labels[:keep]):
            self._warn_once(index, "skipping sample %d (%s) of %s: %d sequence positions (media expanded) > "
                            "model_max_length=%d and no supervised token survives truncation", index,
                            self.records[index]["id"], self.path, total, limit)
            return None, None
        self._warn_once(index, "truncating sample %d (%s) of %s from %d to %d sequence positions (media "
                        "expanded; model_max_length=%d)", index, self.records[index]["id"], self.path, total, used,
                        limit)
        return ids[:keep], labels[:keep]

    def _image(self, path: str):
        return open_image(path) if self.lazy_media else pixel_values(self.image_processor, [load_image(path)])

    def _video(self, path: str):
        if self.lazy_media:
            return open_video(path, self.num_video_frames, self.fps)
        frames = load_video(path, self.num_video_frames, self.fps)
        return pixel_values(self.image_processor, list(np.ascontiguousarray(frames)))

    def __getitem__(self, index: int):
        rec = self.records[index]
        ids, labels = encode_conversation(self.tokenizer, rec["conversations"], system=self.system)
        ids, labels = self._truncate(index, ids, labels)
        if ids is None:
            return None

        images, videos = iter(rec["images"]), iter(rec["videos"])
        media = []
        try:
            for tid in ids:
                if tid == self.image_token_id:
                    media.append(self._image(self._resolve(next(images))))
                elif tid == self.video_token_id:
                    media.append(self._video(self._resolve(next(videos))))
        except MediaError as e:
            self._warn_once(index, "skipping sample %d (%s) of %s: %s", index, rec["id"], self.path, e)
            return None
        return {
            "input_ids": torch.tensor(ids, dtype=torch.long),
            "labels": torch.tensor(labels, dtype=torch.long),
            "media": media,
        }
