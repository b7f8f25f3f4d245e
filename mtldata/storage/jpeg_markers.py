"""Whether a JPEG is whole: an end-of-image marker (EOI) follows its first scan.

`--validate header` needs a JPEG's EOI to tell a whole file from a cut one, and the last two bytes
cannot always tell. Phones append data after EOI (a motion photo's video, a maker's trailer),
which libjpeg never reads, so those files decode; and the last EOI can belong to an EXIF thumbnail
(a whole JPEG inside an APP1 segment) when the file was cut right after it. So the header's
segments are walked by their lengths, as libjpeg reads them, up to the first start of scan, and an
EOI is looked for after it. Inside entropy-coded data 0xFF is only ever followed by 0x00 or a
restart marker, so 0xFF 0xD9 there is a marker; a file cut anywhere after the header has none
(anything appended after the image went with the cut). The search runs from the end, where the
EOI of a file without a trailer lies. Only marker bytes are read; the file's own lengths move
the walk, never allocate.
"""

from __future__ import annotations

_EOI = b"\xff\xd9"
_SOS = 0xDA


def has_end_marker(data: bytes) -> bool:
    """Whether an EOI follows the image's first scan; False for a cut file or one with no scan.
    `data` must start with SOI (0xFF 0xD8)."""
    pos, end = 2, len(data)
    while pos + 4 <= end:
        if data[pos] != 0xFF:  # not a marker where one belongs: libjpeg skips to the next 0xFF
            pos = data.find(b"\xff", pos)
            if pos < 0:
                return False
            continue
        marker = data[pos + 1]
        if marker == 0xFF:  # a fill byte before the marker
            pos += 1
        elif marker == 0x00 or marker == 0x01 or 0xD0 <= marker <= 0xD9:  # none, or no length
            pos += 2
        else:
            length = (data[pos + 2] << 8) | data[pos + 3]
            if length < 2:
                return False  # libjpeg stops here ("Bogus marker length")
            pos += 2 + length
            if marker == _SOS:
                return data.rfind(_EOI, pos) >= 0
    return False
