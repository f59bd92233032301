"""Constants shared by data, model and engine, kept in one place so every part agrees on them."""

IGNORE_INDEX = -100
"""Label value that cross-entropy skips; used for prompts, media placeholders and padding."""

IMAGE_TOKEN = "<image>"
VIDEO_TOKEN = "<video>"
MEDIA_TOKENS = (IMAGE_TOKEN, VIDEO_TOKEN)

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
PAD_TOKEN = "<|endoftext|>"
DEFAULT_SYSTEM = "You are a helpful assistant"

CHAT_SPECIAL_TOKENS = (IM_START, IM_END, PAD_TOKEN)
