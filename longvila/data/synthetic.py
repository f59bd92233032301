"""Synthetic data for every stage, so each stage runs out of the box with no download.

All generators are deterministic: sample ``i`` depends only on (seed, i, kind), never on ``n``, so a larger set
extends a smaller one and media files are shared between them. Each writes into the given directory and returns
the path of its dataset file; if that file already exists nothing is generated. Every file (media included) is
written to a temporary name and moved into place with ``os.replace``, and the dataset file is written last, so an
interrupted run never leaves a half-written dataset behind and concurrent callers (several ranks) at worst
duplicate work. Still, call it on one rank and barrier when you can.

Stages (``ensure_synthetic_data``): s1_align / s2_pretrain = captions, s3_sft = image QA, s4_context_ext =
passkey documents, s5_long_video_sft = needle-in-a-video clips of varying length.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm.auto import tqdm

from longvila.constants import IMAGE_TOKEN, VIDEO_TOKEN

PALETTE = {
    "red": (220, 40, 40),
    "green": (40, 170, 70),
    "blue": (40, 90, 225),
    "yellow": (240, 205, 30),
    "purple": (145, 70, 195),
    "orange": (245, 135, 25),
}
SHAPES = ("circle", "square", "triangle", "star")
BACKGROUNDS = {"white": (255, 255, 255), "black": (0, 0, 0), "grey": (128, 128, 128)}

CAPTION_PROMPTS = (
    "Describe the image.",
    "Describe the image briefly.",
    "What is shown in this picture?",
    "Give a short caption for the image.",
    "Write a one-sentence caption.",
)

FILLER = (
    "The grass is green.", "The sky is blue.", "The sun is yellow.", "Here we go.", "There and back again.",
    "The river flows to the sea.", "Clouds drift slowly over the hills.", "A bird sings in the morning.",
)
CHARS_PER_TOKEN = 4  # rough average for BPE tokenizers on English; doc_tokens_approx is only approximate

_KIND = {"caption": 1, "instruction": 2, "passkey": 3, "video": 4}


def _rng(seed: int, index: int, kind: str) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(index), _KIND[kind]])


def _atomic(path: Path, write) -> None:
    """Run ``write(tmp_path)`` then move the result to ``path`` (atomic on one filesystem)."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _write_json(path: Path, obj) -> None:
    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            if path.suffix == ".jsonl":
                f.writelines(json.dumps(r) + "\n" for r in obj)
            else:
                json.dump(obj, f, indent=1)
    _atomic(path, write)


# ----------------------------------------------------------------------------------------------------- shapes
def random_shape(rng: np.random.Generator, size: int, background: str | None = None) -> dict:
    """A random shape spec: shape, colour (palette name), background name, centre (cx, cy) and radius r."""
    r = float(rng.uniform(0.14, 0.3) * size)
    return {
        "shape": SHAPES[rng.integers(len(SHAPES))],
        "colour": list(PALETTE)[rng.integers(len(PALETTE))],
        "background": background or list(BACKGROUNDS)[rng.integers(len(BACKGROUNDS))],
        "cx": float(rng.uniform(r, size - r)),
        "cy": float(rng.uniform(r, size - r)),
        "r": r,
    }


def draw_shape(draw: ImageDraw.ImageDraw, spec: dict) -> None:
    """Draw ``spec`` (from ``random_shape``) filled with its palette colour."""
    cx, cy, r, fill = spec["cx"], spec["cy"], spec["r"], PALETTE[spec["colour"]]
    if spec["shape"] == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif spec["shape"] == "square":
        s = r * 0.85
        draw.rectangle([cx - s, cy - s, cx + s, cy + s], fill=fill)
    elif spec["shape"] == "triangle":
        draw.polygon([(cx, cy - r), (cx + r * 0.95, cy + r * 0.8), (cx - r * 0.95, cy + r * 0.8)], fill=fill)
    elif spec["shape"] == "star":
        pts = []
        for k in range(10):
            rad = r if k % 2 == 0 else r * 0.45
            a = -math.pi / 2 + k * math.pi / 5
            pts.append((cx + rad * math.cos(a), cy + rad * math.sin(a)))
        draw.polygon(pts, fill=fill)
    else:
        raise ValueError(f"unknown shape {spec['shape']!r}")


def render_shape_image(spec: dict, size: int, background_rgb=None) -> Image.Image:
    img = Image.new("RGB", (size, size), background_rgb or BACKGROUNDS[spec["background"]])
    draw_shape(ImageDraw.Draw(img), spec)
    return img


def _save_png(path: Path, img: Image.Image) -> None:
    if not path.exists():  # deterministic content: an existing file is already right
        _atomic(path, lambda tmp: img.save(tmp, format="PNG"))


def _location(spec: dict, size: int) -> str:
    v = "top" if spec["cy"] < size / 3 else "bottom" if spec["cy"] > 2 * size / 3 else ""
    h = "left" if spec["cx"] < size / 3 else "right" if spec["cx"] > 2 * size / 3 else ""
    parts = " ".join(p for p in (v, h) if p)
    return f"In the {parts} part of the image." if parts else "In the centre of the image."


def describe(colour: str, shape: str) -> str:
    """'A red circle' / 'An orange star' (the article follows the colour word)."""
    return f"{'An' if colour[0] in 'aeiou' else 'A'} {colour} {shape}"


def _check_n(n, name="n"):
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"{name} must be a positive int, got {n!r}")


def _shape_image_set(directory, out_name: str, media: str, n: int, seed: int, size: int, kind: str, id_prefix: str,
                     conversation) -> Path:
    """Write ``n`` one-shape PNGs and a LLaVA JSON whose record ``i`` holds ``conversation(rng, spec)``.

    The shared body of the image stages: each record is seeded by (seed, i, kind) alone, so any prefix of a set is
    the same whatever ``n`` is, and an existing JSON is reused as is.
    """
    _check_n(n)
    directory = Path(directory)
    out = directory / out_name
    if out.exists():
        return out
    (directory / media).mkdir(parents=True, exist_ok=True)
    records = []
    for i in tqdm(range(n), desc=f"synthetic {kind}s", unit="img"):
        rng = _rng(seed, i, kind)
        spec = random_shape(rng, size)
        rel = f"{media}/{i:06d}.png"
        _save_png(directory / rel, render_shape_image(spec, size))
        records.append({"id": f"{id_prefix}-{seed}-{i}", "image": rel,
                        **{k: spec[k] for k in ("shape", "colour", "background")},
                        "conversations": conversation(rng, spec)})
    _write_json(out, records)
    return out


# ----------------------------------------------------------------------------------------- stage 1/2: captions
def make_caption_data(directory, n: int, seed: int = 0, size: int = 64) -> Path:
    """Caption conversations over PNGs of one coloured shape: "<image>\\nDescribe the image." -> "A red circle."."""

    def caption(rng, spec):
        prompt = CAPTION_PROMPTS[rng.integers(len(CAPTION_PROMPTS))]
        return [{"from": "human", "value": f"{IMAGE_TOKEN}\n{prompt}"},
                {"from": "gpt", "value": describe(spec["colour"], spec["shape"]) + "."}]

    return _shape_image_set(directory, f"captions_n{n}_seed{seed}_{size}px.json", f"images_seed{seed}_{size}px", n,
                            seed, size, "caption", "caption", caption)


# ------------------------------------------------------------------------------------------ stage 3: image QA
def _qa_pairs(spec: dict, size: int) -> list[tuple[str, str]]:
    c, s, b = spec["colour"], spec["shape"], spec["background"]
    return [
        ("What colour is the shape?", f"{c.capitalize()}."),
        ("What shape is shown in the image?", f"A {s}."),
        ("What is in the image?", f"{describe(c, s)} on a {b} background."),
        ("Where is the shape?", _location(spec, size)),
        ("What colour is the background?", f"{b.capitalize()}."),
    ]


def make_instruction_data(directory, n: int, seed: int = 0, size: int = 64) -> Path:
    """Image QA about colour, shape, content and position; about 40% of samples are multi-turn (2-3 turns)."""

    def qa(rng, spec):
        pairs = _qa_pairs(spec, size)
        turns = int(rng.choice([1, 2, 3], p=[0.6, 0.25, 0.15]))
        conv = []
        for k, j in enumerate(rng.permutation(len(pairs))[:turns]):
            q, a = pairs[j]
            conv.append({"from": "human", "value": f"{IMAGE_TOKEN}\n{q}" if k == 0 else q})
            conv.append({"from": "gpt", "value": a})
        return conv

    return _shape_image_set(directory, f"instruct_n{n}_seed{seed}_{size}px.json",
                            f"instruct_images_seed{seed}_{size}px", n, seed, size, "instruction", "instruct", qa)


# ------------------------------------------------------------------------------------- stage 4: passkey text
def passkey_document(rng: np.random.Generator, doc_tokens_approx: int) -> dict:
    """Filler text with "The pass key is N. Remember it." at a random depth and the question at the end."""
    passkey = int(rng.integers(10000, 100000))
    depth = float(rng.uniform(0.0, 1.0))
    intro = "There is important information hidden in this text. Find it and remember it."
    question = f"What is the pass key? The pass key is {passkey}."
    budget = max(0, doc_tokens_approx * CHARS_PER_TOKEN - len(intro) - len(question) - 40)
    filler, length = [], 0
    while length < budget:
        sentence = FILLER[rng.integers(len(FILLER))]
        filler.append(sentence)
        length += len(sentence) + 1
    at = int(round(depth * len(filler)))
    body = filler[:at] + [f"The pass key is {passkey}. Remember it."] + filler[at:]
    return {"text": " ".join([intro, *body, question]), "passkey": passkey, "depth": depth}


def make_long_text_data(directory, n_docs: int, doc_tokens_approx: int, seed: int = 0) -> Path:
    """JSONL of passkey documents (``{"text", "passkey", "depth"}``), about ``doc_tokens_approx`` tokens each."""
    _check_n(n_docs, "n_docs")
    _check_n(doc_tokens_approx, "doc_tokens_approx")
    directory = Path(directory)
    out = directory / f"passkey_n{n_docs}_t{doc_tokens_approx}_seed{seed}.jsonl"
    if out.exists():
        return out
    directory.mkdir(parents=True, exist_ok=True)
    records = []
    for i in tqdm(range(n_docs), desc="synthetic passkey docs", unit="doc"):
        records.append({"id": f"passkey-{seed}-{i}", **passkey_document(_rng(seed, i, "passkey"), doc_tokens_approx)})
    _write_json(out, records)
    return out


# ------------------------------------------------------------------------------------ stage 5: needle videos
def write_video(path, frames: np.ndarray, fps: int = 8, crf: int = 18) -> None:
    """Write uint8 RGB frames (T,H,W,3) as an H.264 yuv420p mp4 with PyAV (H and W must be even)."""
    import av  # lazy: only video generation needs it

    frames = np.asarray(frames, dtype=np.uint8)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[1] % 2 or frames.shape[2] % 2:
        raise ValueError(f"frames must be (T, H, W, 3) with even H and W, got {frames.shape}")
    with av.open(os.fspath(path), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(crf)}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def needle_video(rng: np.random.Generator, num_frames: int, size: int) -> tuple[np.ndarray, dict]:
    """Grey frames; exactly one (the needle, random index) shows a coloured shape. Returns (frames, metadata)."""
    grey = int(rng.integers(100, 157))
    spec = random_shape(rng, size, background="grey")
    needle = int(rng.integers(num_frames))
    frames = np.full((num_frames, size, size, 3), grey, dtype=np.uint8)
    frames[needle] = np.asarray(render_shape_image(spec, size, background_rgb=(grey, grey, grey)))
    return frames, {"needle_frame": needle, "needle_colour": spec["colour"], "needle_shape": spec["shape"],
                    "grey": grey}


def make_video_data(directory, n: int, num_frames: int, size: int = 64, seed: int = 0, fps: int = 8,
                    min_frames: int | None = None) -> Path:
    """Needle-in-a-video clips: "<video>\\nWhat colour is the shape that appears in the video?" -> "Red."."

    Every clip has ``num_frames`` frames, or with ``min_frames`` a length drawn uniformly from
    ``[min_frames, num_frames]`` per clip (the needle at a uniformly random frame of it). Read such a set with an
    fps cap equal to ``fps`` (``--fps 8`` for the default) so every clip yields each of its own frames exactly once:
    the model then sees haystacks of every length up to ``num_frames`` instead of one fixed length, which is what
    lets the embedded default learn the needle task quickly (short clips make the needle easy to find early on)
    and generalise to longer haystacks (stage 5's recipe and ``longvila vniah``).
    """
    _check_n(n)
    _check_n(num_frames, "num_frames")
    if min_frames is not None:
        _check_n(min_frames, "min_frames")
        if min_frames > num_frames:
            raise ValueError(f"min_frames {min_frames} > num_frames {num_frames}")
    if size % 2:
        raise ValueError(f"size must be even for yuv420p video, got {size}")
    directory = Path(directory)
    span = f"f{num_frames}" if min_frames is None else f"f{min_frames}-{num_frames}"
    out = directory / f"videos_n{n}_{span}_seed{seed}_{size}px.json"
    if out.exists():
        return out
    media = f"videos_{span}_fps{fps}_seed{seed}_{size}px"
    (directory / media).mkdir(parents=True, exist_ok=True)
    records = []
    for i in tqdm(range(n), desc="synthetic needle videos", unit="video"):
        rng = _rng(seed, i, "video")
        length = num_frames if min_frames is None else int(rng.integers(min_frames, num_frames + 1))
        frames, meta = needle_video(rng, length, size)
        rel = f"{media}/{i:06d}.mp4"
        path = directory / rel
        if not path.exists():
            _atomic(path, lambda tmp: write_video(tmp, frames, fps=fps))
        records.append({
            "id": f"video-{seed}-{i}", "video": rel, "num_frames": length, "fps": fps, **meta,
            "conversations": [
                {"from": "human", "value": f"{VIDEO_TOKEN}\nWhat colour is the shape that appears in the video?"},
                {"from": "gpt", "value": f"{meta['needle_colour'].capitalize()}."},
            ],
        })
    _write_json(out, records)
    return out


# ------------------------------------------------------------------------------------------------- dispatch
STAGE_DEFAULTS = {
    "s1_align": (make_caption_data, {"n": 256, "seed": 0}),
    "s2_pretrain": (make_caption_data, {"n": 256, "seed": 1}),
    "s3_sft": (make_instruction_data, {"n": 256, "seed": 2}),
    "s4_context_ext": (make_long_text_data, {"n_docs": 64, "doc_tokens_approx": 1024, "seed": 3}),
    # Clips of 1-32 frames (read with stage 5's fps cap of 8): the embedded default learns the needle task from
    # them and finds the needle in haystacks of 512 frames (benchmarks/vniah_tiny.py).
    "s5_long_video_sft": (make_video_data, {"n": 1024, "num_frames": 32, "min_frames": 1, "size": 64, "seed": 4}),
}


def ensure_synthetic_data(stage: str, data_dir, **overrides) -> Path:
    """Generate (once) the default synthetic dataset of ``stage`` under ``data_dir/<stage>``; return its file.

    ``overrides`` replace the generator's defaults (e.g. ``n=16`` or ``doc_tokens_approx=4096``).
    """
    if stage not in STAGE_DEFAULTS:
        raise ValueError(f"unknown stage {stage!r}; expected one of {', '.join(STAGE_DEFAULTS)}")
    make, defaults = STAGE_DEFAULTS[stage]
    return make(Path(data_dir) / stage, **{**defaults, **overrides})
