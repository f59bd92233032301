"""``longvila chat``: one greedy answer from a trained checkpoint to a question about an image, a video or nothing.

    longvila chat --model runs/tiny/s5_long_video_sft --video clip.mp4 \\
        "What colour is the shape that appears in the video?"
    longvila chat --model DIR --image photo.png "What is in the image?"
    longvila chat --model DIR "What is the pass key?"

Why a module of its own: the evaluations score a grid of prompts; this asks one, so a trained model can be tried
by hand. It shares every step with them and with training, so it sees what the model was trained on:

- the prompt is the training chat format (:func:`longvila.data.template.encode_prompt`) of one user turn, with the
  media placeholder prepended as the training data has it (``"<image>\\n{question}"`` / ``"<video>\\n..."``);
- an image is read by :func:`longvila.data.image.load_image`; a video by :func:`longvila.data.video.load_video`
  (decord, ``--num_video_frames`` uniformly sampled frames, default the checkpoint's ``num_video_frames``, under
  the checkpoint's ``fps`` cap when it records one); both go through the checkpoint's image processor
  (:func:`longvila.data.image.pixel_values`);
- decoding is greedy with a KV cache (:func:`longvila.eval.decode.cached_greedy_generate`), stopping at EOS or
  ``<|im_end|>`` (:func:`longvila.eval.scoring.stop_token_ids`).

Only the answer goes to stdout; progress and logging go to stderr. Bad requests (missing or non-VILA model
folder, missing media file, both ``--image`` and ``--video``) stop with one line on stderr and exit code 2.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from longvila.constants import DEFAULT_SYSTEM, IMAGE_TOKEN, MEDIA_TOKENS, VIDEO_TOKEN
from longvila.eval.command import OneLineParser, cli_main
from longvila.errors import EvalError
from longvila.eval.runtime import check_model_dir
from longvila.eval.scoring import stop_token_ids

logger = logging.getLogger("longvila.chat")

PROG = "longvila chat"


def prompt_ids(tokenizer, question: str, medium: str | None = None, system: str | None = DEFAULT_SYSTEM):
    """1-D ids of one user turn ``"<image>\\n{question}"`` (``medium="image"``), ``"<video>\\n..."`` or the bare
    question, followed by the open assistant header."""
    from longvila.data.template import encode_prompt

    placeholder = {None: "", "image": f"{IMAGE_TOKEN}\n", "video": f"{VIDEO_TOKEN}\n"}[medium]
    turn = {"from": "human", "value": placeholder + question}
    return torch.tensor(encode_prompt(tokenizer, [turn], system=system))


def load_media(image_processor, image=None, video=None, num_video_frames: int = 8, fps: float | None = None):
    """``media`` for a batch of one: ``[[(1, 3, H, W)]]`` for an image, ``[[(T, 3, H, W)]]`` for a video, else
    None. Unreadable files raise :class:`longvila.errors.MediaError`."""
    from longvila.data.image import load_image, pixel_values
    from longvila.data.video import load_video

    if image is not None:
        return [[pixel_values(image_processor, [load_image(image)])]]
    if video is not None:
        frames = load_video(video, num_video_frames, fps)
        return [[pixel_values(image_processor, list(frames))]]
    return None


def answer(model, tokenizer, image_processor, question: str, *, image=None, video=None,
           num_video_frames: int | None = None, max_new_tokens: int = 64,
           system: str | None = DEFAULT_SYSTEM) -> str:
    """The greedy answer of a loaded model (``load_vila``) to ``question`` about ``image`` or ``video`` (paths).

    ``num_video_frames`` defaults to the checkpoint's; its ``fps`` (0: none) caps the sampled frames as in training.
    """
    from longvila.eval.decode import cached_greedy_generate

    if image is not None and video is not None:
        raise ValueError("give an image or a video, not both")
    medium = "image" if image is not None else "video" if video is not None else None
    frames = num_video_frames or int(model.config["num_video_frames"])
    media = load_media(image_processor, image, video, frames, model.config.get("fps") or None)
    ids = prompt_ids(tokenizer, question, medium, system)
    generated = cached_greedy_generate(model, ids, stop_token_ids(tokenizer), max_new_tokens, media=media)
    return tokenizer.decode(generated, skip_special_tokens=True).strip()


# ------------------------------------------------------------------------------------------------------ CLI
def parse_args(argv: Sequence[str]):
    parser = OneLineParser(prog=PROG, allow_abbrev=False,
                           description="Answer one question (about an image, a video, or text only) from a "
                                       "VILA-layout checkpoint with greedy decoding; prints only the answer.")
    parser.add_argument("--model", required=True, help="VILA-layout checkpoint folder (any stage's output).")
    media = parser.add_mutually_exclusive_group()
    media.add_argument("--image", default=None, help="Image file the question is about.")
    media.add_argument("--video", default=None, help="Video file the question is about (decoded with decord).")
    parser.add_argument("--num_video_frames", type=int, default=None,
                        help="Frames sampled uniformly from --video. Default: the checkpoint's num_video_frames.")
    parser.add_argument("--max_new_tokens", type=int, default=64, help="Answer length cap in tokens.")
    parser.add_argument("--system", default=DEFAULT_SYSTEM, help="System prompt ('' omits it).")
    parser.add_argument("question", help="The question.")
    args = parser.parse_args(list(argv))
    validate(args)
    return args


def validate(args) -> None:
    """Every check that needs no model: one-line EvalErrors."""
    if not Path(args.model).is_dir():
        raise EvalError(f"--model folder not found: {args.model}")
    check_model_dir(args.model)
    for flag in ("image", "video"):
        path = getattr(args, flag)
        if path is not None and not Path(path).is_file():
            raise EvalError(f"--{flag} file not found: {path}")
    if args.num_video_frames is not None and args.num_video_frames < 1:
        raise EvalError(f"--num_video_frames must be >= 1, got {args.num_video_frames}")
    if args.max_new_tokens < 1:
        raise EvalError(f"--max_new_tokens must be >= 1, got {args.max_new_tokens}")
    if not args.question.strip():
        raise EvalError("the question is empty")
    if any(token in args.question for token in MEDIA_TOKENS):
        raise EvalError(f"the question must not contain a media placeholder ({', '.join(MEDIA_TOKENS)}); "
                        "pass the file with --image or --video")


def load_model(path: str):
    """``load_vila`` on CUDA in bfloat16 when there is a GPU, else on CPU in float32; a folder that is not a VILA
    checkpoint becomes one EvalError line."""
    from longvila.model.checkpoint import load_vila

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    started = time.perf_counter()
    try:
        model, tokenizer, image_processor = load_vila(path, dtype=dtype, flag="--model")
    except (ValueError, OSError) as error:
        raise EvalError(" ".join(str(error).split())) from error
    logger.info("loaded %s on %s (%s) in %.1f s", path, device, str(dtype).replace("torch.", ""),
                time.perf_counter() - started)
    return model.to(device).eval(), tokenizer, image_processor


def run(argv: Sequence[str]) -> str:
    args = parse_args(argv)
    model, tokenizer, image_processor = load_model(args.model)
    started = time.perf_counter()
    text = answer(model, tokenizer, image_processor, args.question, image=args.image, video=args.video,
                  num_video_frames=args.num_video_frames, max_new_tokens=args.max_new_tokens,
                  system=args.system or None)
    logger.info("answered in %.1f s", time.perf_counter() - started)
    print(text, flush=True)
    return text


def main(argv: Sequence[str] | None = None) -> None:
    cli_main(PROG, run, argv)


if __name__ == "__main__":
    main()
