"""Constants shared by data, model and engine, kept in one place so every part agrees on them."""

IGNORE_INDEX = -100
"""Label value that cross-entropy skips; used for prompts, media placeholders and padding."""

IMAGE_TOKEN = "<image>"
VIDEO_TOKEN = "<video>"
VILA_VIDEO_TOKEN = "<vila/video>"
"""VILA's own video placeholder (``llava/constants.py``); ``<video>`` is accepted as its alias in text."""
VIDEO_TOKENS = (VILA_VIDEO_TOKEN, VIDEO_TOKEN)
MEDIA_TOKENS = (IMAGE_TOKEN, *VIDEO_TOKENS)

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
PAD_TOKEN = "<|endoftext|>"
DEFAULT_SYSTEM = "You are a helpful assistant"
