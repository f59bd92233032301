"""Data pipeline: chat template + label masking, media loading, datasets, packing, collation, synthetic data."""

from longvila.data.collate import collate
from longvila.data.datasets import ConversationDataset
from longvila.errors import MediaError
from longvila.data.image import load_image
from longvila.data.packing import PackedTextDataset
from longvila.data.synthetic import ensure_synthetic_data
from longvila.data.template import encode_conversation, encode_prompt
from longvila.data.video import load_video

__all__ = [
    "ConversationDataset", "MediaError", "PackedTextDataset", "collate", "encode_conversation", "encode_prompt",
    "ensure_synthetic_data", "load_image", "load_video",
]
