"""How much of an input file mtldata reads: past these, a sample is bad, refused before any allocation.

Kept apart from storage.image (Pillow, numpy) so the command line can show them without loading those.
"""

DEFAULT_MAX_FILE_BYTES = 256 << 20  # an image file larger than this is never read (`--max-file-mb`)
DEFAULT_MAX_PIXELS = 100_000_000  # an image of more pixels is never decoded (`--max-pixels`)
