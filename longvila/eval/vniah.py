"""V-NIAH: visual needle-in-a-haystack over a grid of haystack lengths (frames) x needle depths.

    longvila vniah --model runs/tiny/s5_long_video_sft --output_dir runs/vniah
    longvila vniah --model DIR --haystack movie.mp4 --fps 1 --needles photos --min_frames 300 --max_frames 6000 \\
        --frames_step 300 --output_dir runs/vniah-movie
    torchrun --nproc_per_node 4 -m longvila.eval.vniah --model DIR --seq_parallel_size 4 --output_dir ...

Haystack
    ``--haystack FILE``: a video decoded with decord at ``--fps`` frames per second (frame ``round(k * native_fps /
    fps)`` for k = 0, 1, ...); the first ``--max_frames`` of them form the haystack, and grid point N uses the
    first N (a prefix). A video too short for ``--max_frames`` is looped (logged, and recorded in the JSON).
    Without ``--haystack``: a synthetic video of flat grey frames (grey 128) is written to
    ``<output_dir>/synthetic_haystack.mp4`` and decoded through the same path, the haystack of the stage-5
    synthetic training data (:func:`longvila.data.synthetic.make_video_data`).

Needles (``--needles``; an image, a question and an answer each)
    ``synthetic`` (default): a coloured shape on the haystack grey, one per palette colour, asked exactly like the
    stage-5 training data ("What colour is the shape that appears in the video?" -> "Red."). ``photos``: real
    photographs bundled with scikit-image (astronaut, cat, coffee, rocket) with one-word answers. ``all``: both.
    Or a JSON file: ``[{"image": "needle.png", "question": "...", "answer": "...", "name": "optional"}, ...]`` (or
    ``{"needles": [...]}``), image paths relative to the JSON file.

Grid and scoring (see :mod:`longvila.eval.grid` and :mod:`longvila.eval.scoring`)
    Frames N in ``range(min_frames, max_frames + 1, frames_step)`` x depth d in percent. The needle frame goes
    before haystack frame ``floor(d * N / 100)``, so the model sees N + 1 frames and the needle is frame
    ``floor(d * N / 100)`` of them. One teacher-forced forward per (cell, needle); the argmax at the answer
    positions must decode to the answer (case and whitespace ignored). ``--scoring generate``: greedy decoding
    instead, correct when the answer occurs in the output.

Feature cache
    Haystack frames go through the vision tower + projector ONCE (``model.frame_encoder``; under SP each rank
    encodes 1/SP of them and the features are all-gathered, since every rank splices from the whole cache), in
    batches of ``--encode_batch_size``; needles once each. A cell's video is the cached haystack prefix with the
    needle's features spliced in at the depth. The cached features enter the model through its own forward (per
    frame: the tokens, then the "\\n" embedding) by temporarily pointing ``model.frame_encoder`` at them
    (:func:`cached_frame_features`); the pixels handed to it are (frames, 1, 1, 1) placeholders numbering the
    frames.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from longvila.config import flag
from longvila.constants import DEFAULT_SYSTEM, IGNORE_INDEX, VIDEO_TOKEN
from longvila.data.image import pixel_values
from longvila.eval.command import (EvalConfig, base_config, check_common, cli_main, parse_config, publish,
                                   runtime_from_args)
from longvila.eval.grid import GridSpec, insert_needle, run_grid, value_range
from longvila.errors import EvalError
from longvila.eval.runtime import EvalRuntime
from longvila.eval.scoring import score_sample, swapped
from longvila.model.media_expansion import video_positions

logger = logging.getLogger("longvila.eval")

SYNTHETIC_GREY = 128
SYNTHETIC_SIZE = 64
NEEDLE_RADIUS = 0.22  # synthetic needle shapes: radius as a fraction of the frame size
COLOUR_QUESTION = "What colour is the shape that appears in the video?"  # the stage-5 training question
NEEDLE_SETS = ("synthetic", "photos", "all")
PHOTO_NEEDLES = (  # (skimage.data function, name, question, answer)
    ("astronaut", "astronaut", "Who appears in the video? Answer with one word.", "Astronaut"),
    ("chelsea", "cat", "What animal appears in the video? Answer with one word.", "Cat"),
    ("coffee", "coffee", "What drink appears in the video? Answer with one word.", "Coffee"),
    ("rocket", "rocket", "What vehicle appears in the video? Answer with one word.", "Rocket"),
)


@dataclass(frozen=True)
class Needle:
    name: str
    image: Image.Image  # RGB
    question: str
    answer: str

    def describe(self) -> dict:
        return {"name": self.name, "question": self.question, "answer": self.answer}


# -------------------------------------------------------------------------------------------------- needles
def synthetic_needles(grey: int = SYNTHETIC_GREY, size: int = SYNTHETIC_SIZE, seed: int = 0) -> list[Needle]:
    """One needle per palette colour: a shape of that colour on a ``grey`` card, asked as in stage-5 training."""
    from longvila.data.synthetic import PALETTE, SHAPES, random_shape, render_shape_image

    needles = []
    for k, colour in enumerate(PALETTE):
        rng = np.random.default_rng([seed, k, 99])
        spec = random_shape(rng, size, background="grey")
        r = NEEDLE_RADIUS * size  # a clearly visible, mid-sized shape (training radii span 0.14-0.30 x size)
        spec.update(colour=colour, shape=SHAPES[k % len(SHAPES)], r=r,
                    cx=float(rng.uniform(r, size - r)), cy=float(rng.uniform(r, size - r)))
        image = render_shape_image(spec, size, background_rgb=(grey, grey, grey))
        needles.append(Needle(f"{colour}-{spec['shape']}", image, COLOUR_QUESTION, f"{colour.capitalize()}."))
    return needles


def photo_needles() -> list[Needle]:
    """Real photographs bundled with scikit-image (no download), each with a one-word answer."""
    try:
        from skimage import data as skdata
    except ImportError as error:
        raise EvalError("--needles photos needs scikit-image (pip install scikit-image)") from error
    return [Needle(name, Image.fromarray(getattr(skdata, fn)()).convert("RGB"), question, answer)
            for fn, name, question, answer in PHOTO_NEEDLES]


def load_needle_file(path) -> list[Needle]:
    """Needles from a JSON list (or ``{"needles": [...]}``) of ``{"image", "question", "answer"[, "name"]}``."""
    path = Path(path)
    if not path.is_file():
        raise EvalError(f"needle file not found: {path}")
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise EvalError(f"needle file {path} is not valid JSON: {error}") from error
    if isinstance(raw, dict):
        raw = raw.get("needles")
    if not isinstance(raw, list) or not raw:
        raise EvalError(f"needle file {path} must hold a non-empty list of needles (or {{\"needles\": [...]}})")
    needles = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            raise EvalError(f"needle {i} of {path} must be an object, got {type(item).__name__}")
        missing = [k for k in ("image", "question", "answer") if not isinstance(item.get(k), str) or not item[k]]
        if missing:
            raise EvalError(f"needle {i} of {path} needs non-empty string(s): {', '.join(missing)}")
        image_path = Path(item["image"]) if Path(item["image"]).is_absolute() else path.parent / item["image"]
        try:
            with Image.open(image_path) as img:
                image = img.convert("RGB")
        except Exception as error:  # missing, truncated, not an image
            raise EvalError(f"needle {i} of {path}: cannot read image {image_path}: {error}") from error
        needles.append(Needle(str(item.get("name") or f"needle{i}"), image, item["question"], item["answer"]))
    return needles


def resolve_needles(spec: str, grey: int = SYNTHETIC_GREY, seed: int = 0) -> list[Needle]:
    """``synthetic`` | ``photos`` | ``all`` | a needle JSON file (``seed`` places the synthetic shapes)."""
    if spec == "synthetic":
        return synthetic_needles(grey, seed=seed)
    if spec == "photos":
        return photo_needles()
    if spec == "all":
        return synthetic_needles(grey, seed=seed) + photo_needles()
    return load_needle_file(spec)


# ------------------------------------------------------------------------------------------------- haystack
def fps_frame_indices(total: int, native_fps: float, fps: float | None, max_frames: int) -> tuple[np.ndarray, int]:
    """Frame indices of a ``total``-frame video decoded at ``fps``: ``round(k * native_fps / fps)``.

    Returns (indices of the distinct sampled frames, at most ``max_frames``; how many there are). ``fps=None``
    (or an unknown native rate) takes every frame.
    """
    if total < 1:
        raise EvalError("haystack video has no frames")
    if fps is None or native_fps <= 0:
        available = total
        indices = np.arange(min(total, max_frames))
    else:
        available = max(1, math.floor(total / native_fps * fps + 1e-9))
        k = np.arange(min(available, max_frames))
        indices = np.minimum(total - 1, np.round(k * native_fps / fps)).astype(np.int64)
    return indices, available


def write_synthetic_haystack(path, num_frames: int, fps: float, grey: int = SYNTHETIC_GREY,
                             size: int = SYNTHETIC_SIZE) -> Path:
    """A flat-grey mp4 of ``num_frames`` frames at ``fps`` (written in chunks: long haystacks stay small)."""
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    frame = av.VideoFrame.from_ndarray(np.full((size, size, 3), grey, dtype=np.uint8), format="rgb24")
    rate = Fraction(fps).limit_denominator(1000)
    with av.open(str(tmp), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "18"}
        for _ in range(num_frames):
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    tmp.replace(path)
    return path


def encode_images(runtime: EvalRuntime, images) -> torch.Tensor:
    """(N, T, H) projected features of PIL images / uint8 arrays through ``model.frame_encoder``."""
    from longvila.distributed.mmsp import encode_frames_sharded

    pixels = pixel_values(runtime.image_processor, images).to(runtime.device, runtime.dtype)
    layout = getattr(runtime, "layout", None)
    with torch.no_grad():
        if layout is None or not layout.sp.enabled:
            return runtime.model.frame_encoder(pixels)
        return encode_frames_sharded(pixels, runtime.model.frame_encoder, layout.groups.sp_group)


@dataclass
class Haystack:
    features: torch.Tensor  # (max_frames, T, H): the cached haystack, grid point N uses features[:N]
    source: str
    fps: float | None
    available_frames: int  # distinct frames the video gives at this fps
    looped: bool


def encode_haystack(runtime: EvalRuntime, path, fps: float | None, max_frames: int,
                    batch_size: int = 32, disable_tqdm: bool = False) -> Haystack:
    """Decode ``max_frames`` haystack frames at ``fps`` with decord and encode them once, in batches."""
    from tqdm.auto import tqdm

    from longvila.errors import MediaError

    path = Path(path)
    if not path.is_file():
        raise EvalError(f"haystack video not found: {path}")
    try:
        from decord import VideoReader, cpu

        reader = VideoReader(str(path), ctx=cpu(0), num_threads=1)
        indices, available = fps_frame_indices(len(reader), float(reader.get_avg_fps()), fps, max_frames)
        chunks = []
        for start in tqdm(range(0, len(indices), batch_size), desc="encode haystack", unit="batch",
                          disable=disable_tqdm or not runtime.is_main, dynamic_ncols=True):
            frames = reader.get_batch(indices[start:start + batch_size].tolist()).asnumpy()
            chunks.append(encode_images(runtime, frames))
    except (EvalError, MediaError):
        raise
    except Exception as error:  # decord raises DECORDError / RuntimeError on corrupt files
        raise MediaError(f"cannot decode haystack video {path}: {error}") from error
    features = torch.cat(chunks)
    looped = features.shape[0] < max_frames
    if looped:
        logger.warning("haystack %s gives %d frames at fps %s; looping it to %d frames", path,
                       features.shape[0], fps, max_frames)
        features = features.repeat(math.ceil(max_frames / features.shape[0]), 1, 1)[:max_frames]
    return Haystack(features, str(path), fps, available, looped)


@contextmanager
def cached_frame_features(model, features: torch.Tensor):
    """Make ``model.frame_encoder`` return precomputed (N, T, H) features. It is handed (a rank's share of) the
    :func:`frame_placeholder` frames, each of which carries its frame number."""

    def frame_encoder(frames: torch.Tensor) -> torch.Tensor:
        index = frames.reshape(frames.shape[0], -1)[:, 0].round().long()
        if frames.shape[0] and int(index.max()) >= features.shape[0]:
            raise ValueError(f"cached features hold {features.shape[0]} frames, the sequence asks for frame "
                             f"{int(index.max())}")
        return features[index.to(features.device)]

    with swapped(model, frame_encoder=frame_encoder):
        yield


def frame_placeholder(num_frames: int) -> torch.Tensor:
    """What the model needs to know about a video whose features are cached: its frame count, and under SP which
    frames a rank's share holds (each placeholder frame is its own number; a padding frame is 0)."""
    return torch.arange(num_frames, dtype=torch.float32).view(num_frames, 1, 1, 1)


def needle_prompt(tokenizer, question: str, answer: str, system: str | None = DEFAULT_SYSTEM):
    """(input_ids, labels) of "<video>\\n{question}" + answer in the chat format, labels on the answer only.

    Identical to the training encoding (:func:`longvila.data.template.encode_conversation`) up to the answer.
    """
    from longvila.data.template import encode_prompt

    prompt = encode_prompt(tokenizer, [{"from": "human", "value": f"{VIDEO_TOKEN}\n{question}"}], system=system)
    answer_ids = list(tokenizer.encode(answer, add_special_tokens=False))
    if not answer_ids:
        raise EvalError(f"answer {answer!r} encodes to no tokens")
    ids = torch.tensor(prompt + answer_ids)
    labels = torch.tensor([IGNORE_INDEX] * len(prompt) + answer_ids)
    return ids, labels


# -------------------------------------------------------------------------------------------------- the run
@dataclass(kw_only=True)
class VNIAHConfig(EvalConfig):
    """V-NIAH: the haystack, the needles and the frames axis of the grid."""

    haystack: str | None = flag(None, "Haystack video (default: a synthetic grey video).")
    fps: float = flag(1.0, "Frames per second decoded from the haystack.")
    needles: str = flag("synthetic", "synthetic | photos | all | needle JSON file (see module doc).")
    min_frames: int = 8
    max_frames: int = 128
    frames_step: int = 8
    encode_batch_size: int = flag(32, "Haystack frames per vision batch.")


def validate(cfg: VNIAHConfig) -> tuple[list[int], list[float]]:
    """Every check that needs no model: one-line EvalErrors."""
    depths = check_common(cfg)
    frames = value_range(cfg.min_frames, cfg.max_frames, cfg.frames_step, "frames")
    if cfg.haystack is not None and not Path(cfg.haystack).is_file():
        raise EvalError(f"--haystack file not found: {cfg.haystack}")
    if cfg.fps is not None and not cfg.fps > 0:
        raise EvalError(f"--fps must be > 0, got {cfg.fps}")
    if cfg.encode_batch_size < 1:
        raise EvalError(f"--encode_batch_size must be >= 1, got {cfg.encode_batch_size}")
    if cfg.needles not in NEEDLE_SETS and not Path(cfg.needles).is_file():
        raise EvalError(f"--needles must be one of {', '.join(NEEDLE_SETS)} or a needle JSON file; "
                        f"{cfg.needles!r} is neither")
    return frames, depths


def run_vniah(cfg: VNIAHConfig, runtime: EvalRuntime | None = None) -> dict:
    """Evaluate the grid, write ``vniah_results.json`` + ``vniah_heatmap.png`` (rank 0), return the results."""
    import torch.distributed as dist

    frames, depths = validate(cfg)
    needles = resolve_needles(cfg.needles, seed=cfg.seed)  # before loading the model: a bad needle file costs one line
    if runtime is None:
        runtime = runtime_from_args(cfg)
    model, tokenizer = runtime.model, runtime.tokenizer

    haystack_path = cfg.haystack
    if haystack_path is None:
        haystack_path = Path(cfg.output_dir) / "synthetic_haystack.mp4"
        if runtime.is_main:
            write_synthetic_haystack(haystack_path, cfg.max_frames, cfg.fps)
        if dist.is_initialized():
            dist.barrier()
    haystack = encode_haystack(runtime, haystack_path, cfg.fps, cfg.max_frames, cfg.encode_batch_size,
                               cfg.disable_tqdm)
    needle_features = encode_images(runtime, [n.image for n in needles])
    prompts = [needle_prompt(tokenizer, n.question, n.answer) for n in needles]
    tokens_per_frame = haystack.features.shape[1]

    def evaluate(num_frames: int, depth: float) -> list[dict]:
        samples = []
        for k, needle in enumerate(needles):
            features, index = insert_needle(haystack.features[:num_frames], needle_features[k:k + 1], depth)
            ids, labels = prompts[k]
            with cached_frame_features(model, features):
                scored = score_sample(runtime, ids, labels, needle.answer, cfg.scoring, cfg.max_new_tokens,
                                      media=[[frame_placeholder(len(features))]])
            samples.append({"needle": needle.name, "needle_frame": index, "num_frames": len(features),
                            "seq_len": len(ids) - 1 + video_positions(len(features), tokens_per_frame), **scored})
        return samples

    spec = GridSpec("vniah", "frames", "Haystack frames", tuple(frames), tuple(depths))
    cells = run_grid(spec, evaluate, runtime, cfg.disable_tqdm)
    config = {
        **base_config(cfg, runtime),
        "haystack": cfg.haystack or "synthetic",
        "haystack_file": str(haystack_path),
        "fps": cfg.fps,
        "haystack_available_frames": haystack.available_frames,
        "haystack_looped": haystack.looped,
        "min_frames": cfg.min_frames, "max_frames": cfg.max_frames, "frames_step": cfg.frames_step,
        "needle_set": cfg.needles,
        "needles": [n.describe() for n in needles],
        "tokens_per_frame": tokens_per_frame,
        "insertion_rule": "needle inserted before haystack frame floor(depth * frames / 100); frames + 1 in all",
    }
    return publish(spec, cells, config, cfg, runtime, "V-NIAH")


def parse_args(argv: Sequence[str]) -> VNIAHConfig:
    return parse_config("longvila vniah", "Visual needle-in-a-haystack over frames x depth.", VNIAHConfig, validate,
                        argv)


def main(argv: Sequence[str] | None = None) -> None:
    cli_main("longvila vniah", lambda a: run_vniah(parse_args(a)), argv)


if __name__ == "__main__":
    main()
