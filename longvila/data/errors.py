"""Error type for unreadable media, so datasets can tell "this sample is bad" apart from programming errors."""


class MediaError(RuntimeError):
    """A media file (image or video) is missing, unreadable or corrupt.

    Datasets catch exactly this type to turn one bad file into a skipped sample (``None``) instead of a crashed
    run; any other exception is a bug and must propagate.
    """
