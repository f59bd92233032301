"""longvila: a trainer for long-context vision-language models (VILA / LongVILA recipe)."""

__version__ = "0.1.0"
