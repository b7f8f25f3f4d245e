"""Image decode, Caffe/OpenCV-exact resize and encode: what ``convert_imageset`` stores for a file.

Caffe's ``convert_imageset`` reads each file with OpenCV (``cv::imread``, then ``cv::resize`` with
``INTER_LINEAR`` when both ``--resize_width`` and ``--resize_height`` are > 0) and stores either the
planar BGR pixels or encoded bytes. This module reproduces that with Pillow and numpy only.

Decoding (colour, ``IMREAD_COLOR``) gives an ``HxWx3`` BGR ``uint8`` array:

* JPEG, RGB PNG and most other formats: Pillow's ``convert("RGB")`` with the channels reversed.
  This is byte-exact against OpenCV for baseline JPEGs and 8-bit PNGs.
* RGBA / LA: the alpha channel is dropped (not composited), as OpenCV does.
* Palette (``P``): expanded through its palette; any transparency is dropped.
* 16-bit (``I;16*``, ``I``): reduced to 8 bits by keeping the high byte (OpenCV/libpng
  ``png_set_strip_16``), i.e. ``value >> 8`` after clipping to 0..65535.
* CMYK (JPEG): Pillow's CMYK -> RGB conversion (OpenCV's own formula may differ slightly).
* 1-bit: 0 / 255.
* A grayscale file gives B = G = R.
* The EXIF orientation is applied (``ImageOps.exif_transpose``) as ``cv::imread`` does by default.

Decoding in gray (``--gray``, ``IMREAD_GRAYSCALE``) gives an ``HxW`` ``uint8`` array:

* JPEG (YCbCr): libjpeg's luma (Y) plane, obtained with ``draft("L", size)`` before loading, which is
  what OpenCV asks libjpeg for. Gray JPEGs are returned as stored.
* PNG with colour (RGB, RGBA, palette): libpng's rgb-to-gray, as OpenCV's PNG decoder asks for it
  (``png_set_rgb_to_gray(.., 0.299, 0.587)``, libpng 1.6): coefficients
  ``rc = 29900*32768//100000 = 9797``, ``gc = 58700*32768//100000 = 19234``, ``bc = 32768 - rc - gc =
  3737``; a pixel with R == G == B keeps its value. Without a file gamma,
  ``gray = (rc*R + gc*G + bc*B) >> 15`` (truncating). When the file states a gamma that is not about
  1 (a ``gAMA`` chunk, or ``sRGB``, which means 0.45455; the two are read in file order by libpng's
  colour-space rules, see ``png16.png_file_gamma``), libpng converts in linear light through its
  8-bit gamma tables: ``gray = from_1[(rc*to_1[R] + gc*to_1[G] + bc*to_1[B] + 16384) >> 15]``, with
  ``to_1[v] = floor(255*(v/255)**(1/file_gamma) + 0.5)`` and ``from_1`` the inverse power (0 and 255
  map to themselves); this lifts saturated colours by tens of levels (pure red: 147 instead of 76).
  Alpha is dropped first. 16-bit colour PNGs are converted at 16 bits, as libpng does before OpenCV's
  strip to 8 bits (``mtldata.storage.png16``; an EXIF-rotated one takes the 8-bit path and may be a
  few levels off). Byte-exact against libpng 1.6 (tested on non-interlaced files). ICC profiles are
  not looked at.
* Anything else with colour (CMYK JPEG, BMP, TIFF, ...): OpenCV's fixed-point BT.601 luma
  ``(4899*R + 9617*G + 1868*B + 8192) >> 14`` on the RGB pixels described above.

Resizing (``resize_mode``):

* ``"caffe"`` (default): :func:`caffe_resize`, a bit-exact re-implementation of OpenCV 4's 8-bit
  ``INTER_LINEAR`` (half-pixel centres, edge clamping, no antialiasing, 11-bit fixed-point weights,
  the truncating 16-bit vertical arithmetic of OpenCV's SIMD kernel, which its 8-bit scalar loop
  shares, and the switch of an exact 2x reduction to ``INTER_AREA``). It reproduces every resized
  record of the Caffe golden fixtures (OpenCV 4.6) bit for bit. JPEG DCT-domain downscaling
  (Pillow's ``draft``) is *never* used in this mode: it changes pixels and would break parity.
* ``"antialias"``: JPEGs are first reduced by libjpeg in the DCT domain (``draft``) to no less than
  twice the target size in each dimension, then Pillow's antialiased ``BILINEAR`` (triangle filter
  scaled to the reduction factor) resize produces the target size. This is faster and alias-free
  but deliberately *not* Caffe-identical.

Errors (missing file, not an image, truncated or corrupt data) raise :class:`ImageDecodeError` with
the reason only; callers add the file and line. Pillow's global state (``LOAD_TRUNCATED_IMAGES``)
is never changed, so a truncated image raises instead of being grey-padded.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import io
import math
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np
from PIL import Image, ImageOps, PngImagePlugin, UnidentifiedImageError

from mtldata.errors import MtlDataError
from mtldata.storage.jpeg_markers import has_end_marker
from mtldata.storage.planes import DecodeBuffer, planar_shape, planes_into
from mtldata.storage.png16 import libpng_gray16, png_file_gamma, png_sig_bit
from mtldata.storage.png_chunks import PNG_SIGNATURE, PngChunkError, libpng_chunks
from mtldata.storage.read_limits import DEFAULT_MAX_FILE_BYTES, DEFAULT_MAX_PIXELS
from mtldata.storage.records import ImagePayload

__all__ = [
    "ImageDecodeError",
    "DecodeBuffer",
    "ImageOptions",
    "caffe_resize",
    "decode_bytes",
    "encode_image",
    "header_shape",
    "load_image",
    "planes_into",
    "prepare_image",
    "to_chw",
]

RESIZE_MODES = ("caffe", "antialias")
VALIDATE_MODES = ("decode", "header")
JPEG_QUALITY = 95  # OpenCV's imencode default (IMWRITE_JPEG_QUALITY)


_EXIF_ORIENTATION = 0x0112
_FORMAT_NAMES = {"jpg": "jpeg", "jpeg": "jpeg", "jpe": "jpeg", "png": "png"}


class ImageDecodeError(MtlDataError):
    """An image file (or encoded buffer) could not be read or decoded; the message says why."""


@dataclass(frozen=True)
class ImageOptions:
    """How ``convert_imageset`` is asked to store an image (its ``--gray``, ``--resize_*``, ``--encode*``)."""

    gray: bool = False
    resize_width: int = 0  # resize only when BOTH are > 0 (convert_imageset rule)
    resize_height: int = 0
    resize_mode: str = "caffe"  # "caffe": OpenCV INTER_LINEAR parity; "antialias": Pillow, antialiased
    encoded: bool = False
    encode_type: str = ""  # "", "jpg", "png"; non-empty implies encoded (as in Caffe)
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES  # a larger file is a bad sample, never read
    max_pixels: int = DEFAULT_MAX_PIXELS  # a larger image (width x height) is a bad sample, never decoded
    # How an image stored verbatim (encoded, not resized) is checked: "decode" decodes it whole;
    # "header" reads only its header and end marker (see `header_shape`: misses corrupt middles).
    validate: str = "decode"

    def __post_init__(self) -> None:
        if self.resize_mode not in RESIZE_MODES:
            raise ValueError(f"resize_mode must be one of {RESIZE_MODES}, not {self.resize_mode!r}")
        if self.validate not in VALIDATE_MODES:
            raise ValueError(f"validate must be one of {VALIDATE_MODES}, not {self.validate!r}")
        if self.resize_width < 0 or self.resize_height < 0:
            raise ValueError("resize_width and resize_height must be >= 0")
        if self.max_file_bytes < 1 or self.max_pixels < 1:
            raise ValueError("max_file_bytes and max_pixels must be >= 1")

    @property
    def resizes(self) -> bool:
        """True when convert_imageset would resize (both target sizes > 0)."""
        return self.resize_width > 0 and self.resize_height > 0

    @property
    def stores_encoded(self) -> bool:
        """True when the Datum holds encoded bytes (``--encoded`` or a non-empty ``--encode_type``)."""
        return self.encoded or bool(self.encode_type)


# --------------------------------------------------------------------------------------------------
# Decoding


@contextlib.contextmanager
def _own_pixel_limit(max_pixels: int | None) -> Iterator[None]:
    """With our own limit, Pillow's (a warning past 89 MP, an error past twice that) stands aside."""
    if max_pixels is None:
        yield
        return
    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def _check_pixels(width: int, height: int, max_pixels: int | None) -> None:
    if max_pixels is not None and width * height > max_pixels:
        raise ImageDecodeError(
            f"image is {width}x{height} = {width * height:,} pixels, over the limit of {max_pixels:,} "
            f"(a decompression bomb?); raise it with --max-pixels"
        )


def _open_png_bytes(data: bytes, max_pixels: int | None) -> Image.Image | None:
    """A PNG buffer opened with Pillow's PNG plugin directly; None when that fails or the image is
    over a pixel limit, for Image.open to do it again and word the outcome.

    Image.open would pick the same plugin from the signature, after its plugin set-up and format
    probing: 9 of the 37 us it takes for a 28 px digit, where a whole ds[i] takes about 240 us.
    """
    try:
        im = PngImagePlugin.PngImageFile(io.BytesIO(data))
    except Exception:  # noqa: BLE001 - Image.open's path reports it
        return None
    pixels = im.size[0] * im.size[1]
    limit = max_pixels if max_pixels is not None else Image.MAX_IMAGE_PIXELS
    if limit is not None and pixels > limit:  # Image.open's warning, error or our own refusal
        im.close()
        return None
    return im


def _open(source: str | os.PathLike | bytes, max_pixels: int | None = None) -> Image.Image:
    """Open (parse the header of) a file or buffer, mapping failures to ImageDecodeError."""
    if isinstance(source, bytes) and source[:8] == PNG_SIGNATURE:
        im = _open_png_bytes(source, max_pixels)
        if im is not None:
            return im
    try:
        with _own_pixel_limit(max_pixels):
            if isinstance(source, (bytes, bytearray, memoryview)):
                im = Image.open(io.BytesIO(bytes(source)))
            else:
                im = Image.open(source)
        _check_pixels(im.size[0], im.size[1], max_pixels)
        return im
    except ImageDecodeError:
        raise
    except (FileNotFoundError, IsADirectoryError, PermissionError) as exc:
        raise _file_error(exc) from None
    except UnidentifiedImageError:
        raise ImageDecodeError("not a recognised image file (unknown or invalid format)") from None
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(f"image too large: {exc}") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageDecodeError(f"cannot read image: {exc}") from None


FILE_NOT_FOUND = "file not found"  # the reason of an image file that is not there


def _file_error(exc: OSError) -> ImageDecodeError:
    """The reason a file could not be read, as the error reports give it."""
    if isinstance(exc, FileNotFoundError):
        return ImageDecodeError(FILE_NOT_FOUND)
    if isinstance(exc, IsADirectoryError):
        return ImageDecodeError("is a directory, not an image file")
    if isinstance(exc, PermissionError):
        return ImageDecodeError("permission denied")
    return ImageDecodeError(f"cannot read file: {exc.strerror or exc}")


_FILE_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def _not_regular(mode: int) -> ImageDecodeError:
    kind = next((name for test, name in _FILE_KINDS if test(mode)), "not a regular file")
    if kind == "a directory":
        return ImageDecodeError("is a directory, not an image file")
    return ImageDecodeError(f"is {kind}, not a regular file")


def _read_file(path: str | os.PathLike, max_bytes: int | None = None) -> bytes:
    """The bytes of a regular file of at most `max_bytes`; anything else is an ImageDecodeError.

    O_NONBLOCK: opening a FIFO must not wait for a writer; fstat then tells it is no file to read.
    """
    try:
        fd = os.open(os.fspath(path), os.O_RDONLY | os.O_NONBLOCK)
    except ValueError:
        raise ImageDecodeError("the path holds a NUL byte") from None
    except OSError as exc:
        if exc.errno == errno.ENXIO:  # a socket (or a device without a driver)
            try:
                raise _not_regular(os.stat(os.fspath(path)).st_mode) from None
            except OSError:
                pass
        raise _file_error(exc) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise _not_regular(info.st_mode)
        if max_bytes is not None and info.st_size > max_bytes:
            raise ImageDecodeError(_too_large(info.st_size, max_bytes))
        limit = info.st_size if max_bytes is None else max_bytes
        # os.read straight from the descriptor (a buffered file object costs more than reading a
        # small image); each read is sized by what is still allowed, so a file that grows while it
        # is read is still bounded by `limit + 1`.
        parts: list[bytes] = []
        have = 0
        while have <= limit:
            part = os.read(fd, min(limit + 1 - have, 1 << 20) if parts else min(limit, info.st_size) + 1)
            if not part:
                break
            parts.append(part)
            have += len(part)
        data = parts[0] if len(parts) == 1 else b"".join(parts)
    except OSError as exc:
        raise _file_error(exc) from None
    finally:
        os.close(fd)
    if max_bytes is not None and len(data) > max_bytes:
        raise ImageDecodeError(_too_large(len(data), max_bytes))
    return data


def _too_large(size: int, max_bytes: int) -> str:
    return f"file is {size:,} bytes, over the limit of {max_bytes:,}; raise it with --max-file-mb"


def _orientation(im: Image.Image) -> int:
    try:
        return int(im.getexif().get(_EXIF_ORIENTATION, 1) or 1)
    except Exception:  # noqa: BLE001 - a broken EXIF block must not make an image unreadable
        return 1


# Where a PNG can carry an orientation for Pillow: an eXIf chunk, a "Raw profile type exif" text
# chunk, or XMP in an iTXt chunk. Bytes holding none of these names cannot rotate.
_PNG_ORIENTATION_MARKERS = (b"eXIf", b"Raw profile type exif", b"XML:com.adobe.xmp")


def _png_may_rotate(data: bytes) -> bool:
    return any(marker in data for marker in _PNG_ORIENTATION_MARKERS)


def _load(im: Image.Image, may_rotate: bool = True) -> Image.Image:
    """Decode the pixel data and apply the EXIF orientation (when `may_rotate`: reading it costs
    more than decoding a small PNG)."""
    try:
        im.load()
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(f"image too large: {exc}") from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        msg = str(exc)
        if "truncated" in msg:
            raise ImageDecodeError(f"truncated image data ({msg})") from None
        raise ImageDecodeError(f"corrupt image data: {msg}") from None
    if may_rotate and _orientation(im) != 1:
        try:
            im = ImageOps.exif_transpose(im)
        except Exception as exc:  # noqa: BLE001
            raise ImageDecodeError(f"cannot apply EXIF orientation: {exc}") from None
    return im


_PNG_FP_1 = 100000  # libpng's fixed-point 1.0


def _read_png_chunks(source: str | os.PathLike | bytes, read: Callable[[BinaryIO], int | None]) -> int | None:
    """What `read` (png16's png_file_gamma or png_sig_bit) finds in a PNG file's or buffer's chunks."""
    if not isinstance(source, (str, os.PathLike)):
        return read(io.BytesIO(bytes(source)))
    try:
        with open(source, "rb") as fh:
            return read(fh)
    except OSError as exc:
        raise _file_error(exc) from None


def _png_reciprocal(a: int) -> int:
    return int(math.floor(1e10 / a + 0.5))  # libpng's png_reciprocal, floating-point build


def _png_gamma_table(gamma: int) -> np.ndarray:
    """libpng's png_build_8bit_table: identity unless the gamma is off 1.0 by more than 0.05."""
    table = np.arange(256, dtype=np.uint8)
    if abs(gamma - _PNG_FP_1) > 5000:  # png_gamma_significant
        v = np.arange(1, 255, dtype=np.float64)
        table[1:255] = np.floor(255 * np.power(v / 255, gamma * 0.00001) + 0.5).astype(np.uint8)
    return table


def _libpng_gray(rgb: np.ndarray, file_gamma: int | None = None) -> np.ndarray:
    """libpng's png_do_rgb_to_gray for 8-bit data with OpenCV's 0.299/0.587 weights (see the module doc)."""
    rc, gc = 9797, 19234  # (29900 * 32768) // 100000, (58700 * 32768) // 100000
    bc = 32768 - rc - gc
    r = rgb[..., 0].astype(np.int32)
    g = rgb[..., 1].astype(np.int32)
    b = rgb[..., 2].astype(np.int32)
    # Tables exist only for a significant file gamma; the screen gamma is then its reciprocal.
    if file_gamma is None or abs(file_gamma - _PNG_FP_1) <= 5000:
        return ((rc * r + gc * g + bc * b) >> 15).astype(np.uint8)
    screen_gamma = _png_reciprocal(file_gamma)
    to_1 = _png_gamma_table(_png_reciprocal(file_gamma)).astype(np.int32)
    from_1 = _png_gamma_table(_png_reciprocal(screen_gamma))
    same = _png_gamma_table(int(math.floor(1e15 / file_gamma / screen_gamma + 0.5)))  # for R == G == B
    gray = from_1[(rc * to_1[r] + gc * to_1[g] + bc * to_1[b] + 16384) >> 15]
    neutral = (r == g) & (r == b)
    return np.where(neutral, same[r], gray).astype(np.uint8)


def _bt601_gray(rgb: np.ndarray) -> np.ndarray:
    """OpenCV's fixed-point RGB -> gray (14-bit BT.601 weights, rounded)."""
    r = rgb[..., 0].astype(np.int32)
    g = rgb[..., 1].astype(np.int32)
    b = rgb[..., 2].astype(np.int32)
    return ((4899 * r + 9617 * g + 1868 * b + 8192) >> 14).astype(np.uint8)


def _to_8bit_array(im: Image.Image) -> np.ndarray:
    """Pixels of a loaded image as HxW (gray) or HxWx3 (RGB) uint8, per the module's rules."""
    mode = im.mode
    if mode in ("L", "RGB"):
        # read-only, as np.asarray(im) gives, which goes through the same tobytes (4 us slower)
        width, height = im.size
        shape = (height, width) if mode == "L" else (height, width, 3)
        return np.frombuffer(im.tobytes(), np.uint8).reshape(shape)
    if mode.startswith("I;16") or mode == "I":
        a = np.asarray(im).astype(np.int64)  # any byte order -> native integers
        return (np.clip(a, 0, 65535) >> 8).astype(np.uint8)
    if mode == "F":
        return np.clip(np.asarray(im), 0, 255).astype(np.uint8)
    if mode in ("1", "LA", "La"):
        return np.asarray(im.convert("L"))
    # P, PA, RGBA, RGBa, RGBX, CMYK, YCbCr, LAB, HSV ...: Pillow's RGB conversion, alpha dropped.
    return np.asarray(im.convert("RGB"))


def _decoded_to_array(
    im: Image.Image, gray: bool, is_png_colour: bool, file_gamma: int | None = None
) -> np.ndarray:
    a = _to_8bit_array(im)
    if gray:
        if a.ndim == 3:
            a = _libpng_gray(a, file_gamma) if is_png_colour else _bt601_gray(a)
        return np.ascontiguousarray(a)
    if a.ndim == 2:
        return np.ascontiguousarray(np.repeat(a[:, :, None], 3, axis=2))
    return np.ascontiguousarray(a[:, :, ::-1])


def _decode(
    source: str | os.PathLike | bytes,
    gray: bool,
    draft_size: tuple[int, int] | None = None,
    max_pixels: int | None = None,
) -> np.ndarray:
    """Open, decode and orient a file or buffer: HxWx3 BGR or HxW gray uint8, per the module rules.

    ``draft_size`` (antialias mode only) lets libjpeg downscale in the DCT domain to at least that size.
    """
    if isinstance(source, bytes) and source[:8] == PNG_SIGNATURE:
        try:
            source = libpng_chunks(source)  # decodes only what OpenCV's libpng decodes
        except PngChunkError as exc:
            raise ImageDecodeError(str(exc)) from None
    im = _open(source, max_pixels)
    with im:
        fmt = im.format
        is_png_colour = fmt == "PNG" and im.mode not in ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L")
        if fmt == "JPEG":
            orient = _orientation(im)
            if draft_size is not None:
                w, h = draft_size
                if orient in (5, 6, 7, 8):  # the stored image is transposed relative to the result
                    w, h = h, w
                req = (max(1, w), max(1, h))
            else:
                req = im.size
            if gray and im.mode in ("RGB", "YCbCr"):
                im.draft("L", req)
            elif draft_size is not None and im.mode in ("RGB", "L"):
                im.draft(im.mode, req)
        # the file gamma libpng converts to gray with (only gray needs it)
        file_gamma = _read_png_chunks(source, png_file_gamma) if gray and is_png_colour else None
        may_rotate = not (fmt == "PNG" and isinstance(source, bytes) and not _png_may_rotate(source))
        if gray and is_png_colour and _rawmode(im) in ("RGB;16B", "RGBA;16B") and _orientation(im) == 1:
            return _png16_gray(source, _load(im, may_rotate), file_gamma, max_pixels)
        return _decoded_to_array(_load(im, may_rotate), gray, is_png_colour, file_gamma)


def _rawmode(im: Image.Image) -> object:
    """How Pillow's decoder unpacks the file ("RGB;16B" for 16-bit RGB PNGs), None if not one tile."""
    return im.tile[0][3] if len(im.tile) == 1 and len(im.tile[0]) > 3 else None


def _png16_gray(
    source: str | os.PathLike | bytes, high: Image.Image, file_gamma: int | None, max_pixels: int | None
) -> np.ndarray:
    """A 16-bit colour PNG in gray from its whole samples, as libpng converts it (mtldata.storage.png16).

    Pillow keeps the high byte of each sample; a second decode told the samples are little-endian
    keeps the low byte instead.
    """
    low = _open(source, max_pixels)
    with low:
        tile = low.tile[0]
        rawmode = str(tile[3]).replace(";16B", ";16L")
        low.tile = [tile._replace(args=rawmode) if hasattr(tile, "_replace") else (*tile[:3], rawmode)]
        lo = np.asarray(_load(low))[..., :3].astype(np.uint16)
    rgb = (np.asarray(high)[..., :3].astype(np.uint16) << 8) | lo
    sig_bit = _read_png_chunks(source, png_sig_bit) or 0
    return np.ascontiguousarray(libpng_gray16(rgb, file_gamma, sig_bit))


def load_image(path: str | os.PathLike, gray: bool = False) -> np.ndarray:
    """Decode a file as ``cv::imread(path, IMREAD_COLOR / IMREAD_GRAYSCALE)`` would.

    Returns HxWx3 BGR uint8, or HxW uint8 when ``gray``. Raises ImageDecodeError.
    """
    return _decode(_read_file(path), gray)


def _has_app1(data: bytes) -> bool:
    """Whether a JPEG's header holds an APP1 segment (EXIF or XMP, either of which may carry an
    orientation), walking the marker segments up to the start of scan; True when unsure."""
    pos, end = 2, len(data)
    while pos + 4 <= end:
        if data[pos] != 0xFF:
            return True  # not a marker where one belongs: let Pillow judge
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0xDA:  # start of scan: the header is over
            return False
        if marker == 0xE1:
            return True
        if 0xD0 <= marker <= 0xD8 or marker == 0x01:  # markers without a length
            pos += 2
            continue
        pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
    return True


def _plain_jpeg_header(data: bytes, max_pixels: int | None) -> tuple[Any, int, int] | None:
    """(the simplejpeg module, height, width) for a JPEG simplejpeg can decode (YCbCr, RGB or gray,
    not a decompression bomb), from its header in microseconds; None otherwise, for Pillow to
    decode or to word the error. Raises ImageDecodeError over `max_pixels`."""
    if data[:3] != b"\xff\xd8\xff":
        return None
    try:
        import simplejpeg
    except ImportError:
        return None
    try:
        height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
    except (ValueError, RuntimeError):
        return None
    _check_pixels(width, height, max_pixels)
    if colorspace not in ("YCbCr", "RGB", "Gray") or height * width > (Image.MAX_IMAGE_PIXELS or 1 << 62):
        return None
    return simplejpeg, height, width


def _decode_simplejpeg(
    data: bytes, gray: bool, out: np.ndarray | DecodeBuffer | None = None, max_pixels: int | None = None
) -> np.ndarray | None:
    """Decode a plain (non-rotated, YCbCr/gray) JPEG with simplejpeg; None when it is not applicable.
    Writes into `out` (see decode_bytes) when its shape is the image's, or into a DecodeBuffer."""
    header = _plain_jpeg_header(data, max_pixels)
    if header is None:
        return None
    simplejpeg, height, width = header
    # Only a file carrying EXIF (which may rotate it) needs Pillow's parser to read the orientation.
    if _has_app1(data):
        try:
            im = Image.open(io.BytesIO(data))
        except Exception:  # noqa: BLE001 - let the Pillow path produce the error message
            return None
        with im:
            if _orientation(im) != 1:
                return None
    shape = (height, width) if gray else (height, width, 3)
    colorspace = "GRAY" if gray else "BGR"
    if isinstance(out, DecodeBuffer):
        out, colorspace = (out.array(shape), colorspace) if gray else (out.bgrx(height, width), "BGRX")
    elif out is not None and (out.shape != shape or out.dtype != np.uint8 or not out.flags.c_contiguous):
        out = None
    try:
        decoded = simplejpeg.decode_jpeg(
            data,
            colorspace=colorspace,
            fastdct=False,
            fastupsample=False,
            strict=True,
            buffer=out,
        )
    except (ValueError, RuntimeError):
        # strict=True also rejects data libjpeg only warns about (e.g. extraneous bytes before a
        # marker), which Pillow decodes; let the Pillow path decide, like load_image would.
        return None
    if out is not None:
        return out
    return np.ascontiguousarray(decoded.reshape(shape))


def jpeg_decodes(data: bytes, gray: bool, max_pixels: int | None = None) -> tuple[int, int, int] | None:
    """(C, H, W) of a plain JPEG (as `_decode_simplejpeg` would take it) that decodes cleanly,
    found by decoding it at 1/8 scale; None when this check does not apply or the JPEG does not
    decode strictly (a full decode then decides, and words the error).

    libjpeg's 1/8-scale decode still runs the entropy decoder over every block of every component
    (the bitstream must be read to its end), where all of a JPEG's damage shows; it skips only the
    full-size inverse DCT, upsampling and colour conversion, which cannot fail. So it accepts the
    same files as a full strict decode, at under half the cost (`tests/test_image_validation.py`
    checks the two agree on damaged files); an encoded conversion stores the file's bytes and
    never needs the pixels.
    """
    header = _plain_jpeg_header(data, max_pixels)
    if header is None:
        return None
    simplejpeg, height, width = header
    if _has_app1(data):
        return None  # may carry an EXIF orientation, which changes the shape: decode it whole
    try:
        simplejpeg.decode_jpeg(data, colorspace="GRAY", min_height=1, min_width=1, strict=True)
    except (ValueError, RuntimeError):
        return None
    return (1 if gray else 3), height, width


def decode_bytes(
    data: bytes,
    gray: bool = False,
    out: np.ndarray | DecodeBuffer | None = None,
    max_pixels: int | None = None,
) -> np.ndarray:
    """Decode encoded Datum bytes to HxWx3 BGR (or HxW gray) uint8, the same pixels as load_image.

    Uses simplejpeg for JPEG when it is installed (and the image needs no EXIF rotation), Pillow otherwise.
    `out`, a C-contiguous uint8 array, receives the pixels when it has the image's shape and the
    simplejpeg path applies (a loader decodes straight into its batch so); the result is then `out`
    itself, else a new array, with `out` left in an unspecified state. With a DecodeBuffer as `out`,
    a colour JPEG comes back as an HxWx4 BGRX view of it (see DecodeBuffer). An image of more than
    `max_pixels` pixels is refused from its header, before any pixel memory is allocated.
    """
    data = bytes(data)
    decoded = _decode_simplejpeg(data, gray, out, max_pixels)
    if decoded is not None:
        return decoded
    return _decode(data, gray, max_pixels=max_pixels)


def to_chw(img: np.ndarray) -> np.ndarray:
    """HxWxC or HxW uint8 -> CxHxW contiguous uint8."""
    a = np.asarray(img)
    if a.ndim == 2:
        a = a[None, :, :]
    elif a.ndim == 3:
        a = a.transpose(2, 0, 1)
    else:
        raise ValueError(f"expected an HxW or HxWxC image, got shape {a.shape}")
    return np.ascontiguousarray(a, dtype=np.uint8)


def chw_bytes(img: np.ndarray) -> bytearray:
    """HxWxC, HxWx4 BGRX or HxW uint8 -> its CxHxW bytes, in one copy (no intermediate array)."""
    a = np.asarray(img, dtype=np.uint8)
    shape = planar_shape(a)
    out = bytearray(shape[0] * shape[1] * shape[2])
    planes_into(a, np.frombuffer(out, np.uint8).reshape(shape))
    return out


# --------------------------------------------------------------------------------------------------
# The light check: header and end marker only


def header_shape(data: bytes, gray: bool, max_pixels: int | None = None) -> tuple[int, int, int] | None:
    """(C, H, W) a JPEG or PNG decodes to, read from its header, after checking its end marker.

    The `--validate header` check for trusted files: it catches a file that is not a JPEG or PNG,
    a broken header and a truncated file (no end-of-image marker in a JPEG, no IEND chunk in a PNG).
    Bytes after either marker are accepted, as libjpeg and libpng accept them (they never read
    them). In a PNG it also checks every chunk's CRC as libpng does, which finds damage anywhere; in
    a JPEG it does NOT find damage between the header and the end (corrupt entropy-coded data):
    only a decode does.
    Raises ImageDecodeError; None for what it cannot judge this way (another format, a rotating
    EXIF orientation or an eXIf chunk): decode those.
    """
    limit = 2 * (Image.MAX_IMAGE_PIXELS or 1 << 62)  # where Pillow's decode refuses a "bomb"
    channels = 1 if gray else 3
    if data[:3] == b"\xff\xd8\xff":
        # An EOI after the first scan, not in the last bytes: data may follow it, and an EXIF
        # thumbnail's EOI may end a cut file (see jpeg_markers).
        if not has_end_marker(data):
            raise ImageDecodeError("truncated image data (no JPEG end-of-image marker after its scan)")
        height, width = _jpeg_size(data)
        if _has_app1(data):
            try:
                im = Image.open(io.BytesIO(data))
            except Exception as exc:  # noqa: BLE001
                raise ImageDecodeError(f"cannot read image: {exc}") from None
            with im:
                if _orientation(im) != 1:
                    return None
    elif data[:8] == PNG_SIGNATURE:
        if data[12:16] != b"IHDR" or len(data) < 33:
            raise ImageDecodeError("corrupt image data: PNG without an IHDR header")
        # Every chunk up to IEND, as libpng reads them: a PNG cut short has no IEND, and a CRC shows
        # damage anywhere in it, for a fraction of a decode (bytes after IEND are never read).
        try:
            libpng_chunks(data)
        except PngChunkError as exc:
            raise ImageDecodeError(str(exc)) from None
        if data.find(b"eXIf") >= 0:
            return None  # an EXIF orientation may rotate it
        width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    else:
        return None
    if width <= 0 or height <= 0:
        raise ImageDecodeError(f"corrupt image data: the header gives a {width}x{height} image")
    if width * height > limit:
        raise ImageDecodeError(f"image too large: {width}x{height} pixels")
    _check_pixels(width, height, max_pixels)  # the conversion's own limit, as a decode applies it
    return channels, height, width


def _jpeg_size(data: bytes) -> tuple[int, int]:
    """(height, width) from a JPEG's frame header (simplejpeg when installed, else Pillow's parser)."""
    try:
        import simplejpeg
    except ImportError:
        simplejpeg = None
    if simplejpeg is not None:
        try:
            height, width, _, _ = simplejpeg.decode_jpeg_header(data)
            return height, width
        except (ValueError, RuntimeError) as exc:
            raise ImageDecodeError(f"corrupt image data: {exc}") from None
    im = _open(data)
    with im:
        return im.size[1], im.size[0]


# --------------------------------------------------------------------------------------------------
# OpenCV INTER_LINEAR (8-bit)

_COEF_BITS = 11
_COEF_SCALE = 1 << _COEF_BITS  # INTER_RESIZE_COEF_SCALE


def _linear_taps(dst: int, src: int, zero_fraction_at_edges: bool):
    """Source indices (clamped) and 11-bit weights of OpenCV's INTER_LINEAR along one axis.

    As in resize.cpp: ``scale = 1 / (dst / src)`` in double; ``f = float((d + 0.5) * scale - 0.5)``;
    ``s = floor(f)``; ``f -= s``; weights ``saturate_cast<short>((1 - f) * 2048)`` and
    ``saturate_cast<short>(f * 2048)`` (float arithmetic, round half to even). Indices are clamped to
    the image. Horizontally OpenCV also zeroes ``f`` where the left tap is outside (or at the last
    column), vertically it only clamps the row indices and keeps both weights.
    """
    scale = 1.0 / (dst / src)
    f = ((np.arange(dst, dtype=np.float64) + 0.5) * scale - 0.5).astype(np.float32)
    s = np.floor(f)
    f = (f - s).astype(np.float32)
    s = s.astype(np.intp)
    if zero_fraction_at_edges:
        f[(s < 0) | (s >= src - 1)] = 0
    i0 = np.clip(s, 0, src - 1)
    i1 = np.clip(s + 1, 0, src - 1)
    w0 = np.rint((np.float32(1) - f) * np.float32(_COEF_SCALE)).astype(np.int32)
    w1 = np.rint(f * np.float32(_COEF_SCALE)).astype(np.int32)
    return i0, i1, w0, w1


def _resize_area_2x(img: np.ndarray) -> np.ndarray:
    """OpenCV's INTER_AREA fast path for an exact 2x reduction (which INTER_LINEAR switches to).

    For 1, 3 or 4 channels OpenCV rounds the 2x2 sum as ``(s + 2) >> 2``; otherwise the generic
    area code computes ``cvRound(s * 0.25f)`` (ties to even).
    """
    a = img.astype(np.uint16)
    s = a[0::2, 0::2] + a[0::2, 1::2] + a[1::2, 0::2] + a[1::2, 1::2]
    channels = 1 if img.ndim == 2 else img.shape[2]
    if channels in (1, 3, 4):
        return ((s + 2) >> 2).astype(np.uint8)
    return np.rint(s.astype(np.float32) * np.float32(0.25)).astype(np.uint8)


_RESIZE_BLOCK = 1 << 16  # int32 values of one block of caffe_resize's horizontal pass


@functools.lru_cache(maxsize=64)
def _resize_plan(sh: int, sw: int, height: int, width: int, channels: int) -> tuple[Any, ...]:
    """What caffe_resize needs besides the pixels, for one source and target size (a list's images
    mostly share a few sizes: working it out costs as much as a 64x64 resize itself).

    (the source rows read, or None for all; the flat column of each output value's left and right
    tap, and their weights; each output row's two rows among those read, and their weights).
    Both row indices only grow down the image.
    """
    x0, x1, ax0, ax1 = _linear_taps(width, sw, zero_fraction_at_edges=True)
    y0, y1, by0, by1 = _linear_taps(height, sh, zero_fraction_at_edges=False)
    rows, inverse = np.unique(np.concatenate([y0, y1]), return_inverse=True)
    lanes = np.arange(channels, dtype=np.intp)
    plan = (
        rows if rows.size != sh else None,
        (x0[:, None] * channels + lanes).ravel(),
        (x1[:, None] * channels + lanes).ravel(),
        np.repeat(ax0, channels),
        np.repeat(ax1, channels),
        inverse[:height],
        inverse[height:],
        by0[:, None],
        by1[:, None],
    )
    for part in plan:
        if part is not None:
            part.setflags(write=False)  # shared by every call with these sizes
    return plan


def caffe_resize(img: np.ndarray, width: int, height: int) -> np.ndarray:
    """``cv::resize(img, Size(width, height), 0, 0, INTER_LINEAR)`` for uint8 HxW or HxWxC images."""
    a = np.asarray(img)
    if a.dtype != np.uint8:
        raise ValueError(f"caffe_resize needs a uint8 image, got {a.dtype}")
    if a.ndim not in (2, 3):
        raise ValueError(f"expected an HxW or HxWxC image, got shape {a.shape}")
    if width <= 0 or height <= 0:
        raise ValueError(f"target size must be positive, got {width}x{height}")
    sh, sw = a.shape[:2]
    if sh == 0 or sw == 0:
        raise ValueError("cannot resize an empty image")
    if sw == width and sh == height:
        return a.copy()
    if sw == 2 * width and sh == 2 * height:
        return _resize_area_2x(a)
    squeeze = a.ndim == 2
    channels = 1 if squeeze else a.shape[2]
    rows, c0, c1, w0, w1, y0, y1, by0, by1 = _resize_plan(sh, sw, height, width, channels)
    flat = a.reshape(sh, sw * channels)
    if rows is not None:
        flat = flat[rows]  # only the source rows the vertical pass reads
    out = np.empty((height, width * channels), np.uint8)
    # A few output rows at a time: the int32 intermediates of a whole 224 px image (600 KB each)
    # fall out of the cache and are page-faulted anew on every call; in blocks of about 256 KB a
    # 256 -> 224 px resize costs 1.8 instead of 3 ms in a conversion's worker.
    step = max(1, _RESIZE_BLOCK // (width * channels))
    for top in range(0, height, step):
        bottom = min(height, top + step)
        first, last = int(y0[top]), int(y1[bottom - 1])  # the taps only move down the rows
        src = flat[first : last + 1]
        # Horizontal pass: exact int32 sums S = src[x0] * a0 + src[x1] * a1 (at most 255 * 2048),
        # kept as S >> 4 (what the vertical pass uses).
        hor = np.take(src, c0, axis=1).astype(np.int32)
        hor *= w0
        tmp = np.take(src, c1, axis=1).astype(np.int32)
        tmp *= w1
        hor += tmp
        hor >>= 4
        # Vertical pass, OpenCV's 8-bit arithmetic (VResizeLinearVec_32s8u and the uchar scalar
        # loop share it): ((S0 >> 4) * b0 >> 16) + ((S1 >> 4) * b1 >> 16), then (v + 2) >> 2. The
        # scalar remainder loop for uchar is specialised to the same formula; the generic
        # fixed-point rounding (S0*b0 + S1*b1 + 2**21) >> 22 is NOT what OpenCV computes here (with
        # it, the 4 tail values of each 20-pixel gray row of the Caffe fixtures come out one level
        # off). The result is <= 255 by construction (S >> 4 <= 32640 and b0 + b1 == 2048), so no
        # clipping is needed.
        block = hor[y0[top:bottom] - first]
        block *= by0[top:bottom]
        block >>= 16
        tmp = hor[y1[top:bottom] - first]
        tmp *= by1[top:bottom]
        tmp >>= 16
        block += tmp
        block += 2
        block >>= 2
        out[top:bottom] = block
    return out.reshape(height, width) if squeeze else out.reshape(height, width, channels)


# --------------------------------------------------------------------------------------------------
# Encoding


def encode_image(img: np.ndarray, fmt: str) -> bytes:
    """Encode a BGR HxWx3 or gray HxW uint8 image as "jpg"/"jpeg" (quality 95, 4:2:0) or "png"."""
    a = np.asarray(img)
    if a.dtype != np.uint8:
        raise ValueError(f"encode_image needs uint8 pixels, got {a.dtype}")
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim == 2:
        im = Image.fromarray(np.ascontiguousarray(a))  # 2-D uint8 -> mode "L"
    elif a.ndim == 3 and a.shape[2] == 3:
        im = Image.fromarray(np.ascontiguousarray(a[:, :, ::-1]))  # HxWx3 uint8 -> mode "RGB"
    else:
        raise ValueError(f"expected BGR HxWx3 or gray HxW, got shape {a.shape}")
    kind = _FORMAT_NAMES.get(fmt.lower().lstrip("."))
    buf = io.BytesIO()
    if kind == "jpeg":
        im.save(buf, format="JPEG", quality=JPEG_QUALITY, subsampling=2)
    elif kind == "png":
        im.save(buf, format="PNG", compress_level=1)
    else:
        raise ValueError(f"unsupported encoding {fmt!r} (use 'jpg' or 'png')")
    return buf.getvalue()


# --------------------------------------------------------------------------------------------------
# convert_imageset's ReadImageToDatum


def _antialias_resize(data: bytes, opts: ImageOptions) -> np.ndarray:
    w, h = opts.resize_width, opts.resize_height
    draft = (2 * w, 2 * h)
    # Below twice the draft size each way, libjpeg's DCT-domain reduction does not apply and a plain
    # decode gives the same pixels: simplejpeg's, three times faster than Pillow's (None when it
    # does not apply: another format, an EXIF rotation).
    a = None
    if not _draft_may_reduce(data, draft):
        a = _decode_simplejpeg(data, opts.gray, max_pixels=opts.max_pixels)
    if a is None:
        a = _decode(data, opts.gray, draft_size=draft, max_pixels=opts.max_pixels)
    pil = Image.fromarray(a if a.ndim == 2 else np.ascontiguousarray(a[:, :, ::-1]))
    out = np.asarray(pil.resize((w, h), Image.Resampling.BILINEAR))
    return np.ascontiguousarray(out if out.ndim == 2 else out[:, :, ::-1])


def _draft_may_reduce(data: bytes, draft: tuple[int, int]) -> bool:
    """Whether Pillow's draft to `draft` may shrink this image (a JPEG at least twice that size each
    way); True for anything whose size the JPEG header does not give. (An EXIF-rotated JPEG, whose
    draft request is transposed, never takes the simplejpeg path this guards.)"""
    try:
        header = _plain_jpeg_header(data, None)
    except ImageDecodeError:
        return True
    if header is None:
        return True
    _, height, width = header
    dw, dh = draft
    return min(width // dw, height // dh) >= 2


def _caffe_ext(path) -> str:
    """The lower-cased text after the last '.' of the path (Caffe's matchExt; the whole path if none)."""
    s = os.fspath(path)
    p = s.rfind(".")
    return (s[p + 1 :] if p >= 0 else s).lower()


def _match_ext(ext: str, encoding: str) -> bool:
    """Caffe's matchExt: equal, or the encoding is "jpg" and the file ends in ".jpeg"."""
    return ext == encoding or (encoding == "jpg" and ext == "jpeg")


def _sniff_format(data: bytes, fallback: str) -> str:
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if data[:8] == PNG_SIGNATURE:
        return "png"
    return _FORMAT_NAMES.get(fallback, fallback or "unknown")


def prepare_image(
    path: str | os.PathLike,
    opts: ImageOptions,
    *,
    planar: bool = True,
    out: np.ndarray | DecodeBuffer | None = None,
) -> ImagePayload:
    """What ``convert_imageset`` stores for ``path`` under ``opts`` (Caffe's ReadImageToDatum).

    With ``planar=False`` a raw payload's ``data`` is the decoded HxWxC (or HxW) array itself, not
    yet CHW bytes: the converter's workers split it (:func:`planes_into`) straight into shared
    memory. ``out`` (see decode_bytes) may then receive the pixels, so that a worker decodes every
    image into one buffer; with a :class:`DecodeBuffer` the array may be HxWx4 BGRX.

    * Decode (gray or colour) and resize when both target sizes are > 0 (every image, even one that
      already has the target size).
    * Encoded (``opts.encoded`` or ``opts.encode_type``): the encoding is ``encode_type`` or else the
      file's lower-cased extension (the text after the path's last '.'). The original file bytes are
      stored verbatim when ``resize_width == resize_height == 0`` (Caffe tests ``!height && !width``,
      so a single non-zero size prevents it although it does not resize), ``(channels == 3) ==
      (not gray)``, and the extension matches the encoding (Caffe's matchExt: equal, or encoding
      "jpg" with extension "jpeg"; not the reverse). Caffe quirk, mirrored: in gray mode the decoded
      image has one channel, so the condition holds and a *colour* file is stored verbatim too (it
      decodes to colour unless the reader asks for gray). Otherwise the decoded (resized) pixels are
      re-encoded with :func:`encode_image` (jpg or png only; anything else raises).
    * Raw: the planar CHW BGR (or gray) bytes.
    * ``opts.validate == "header"``: a JPEG or PNG stored verbatim is checked by
      :func:`header_shape` (header and end marker) instead of being decoded.
    * A JPEG stored verbatim under the default validation is decoded at 1/8 scale
      (:func:`jpeg_decodes`: the same files pass as with a full decode, for less than half its cost).
    """
    # Read once (bounded, regular files only): decoded from, and stored verbatim when the rules say so.
    data = _read_file(path, opts.max_file_bytes)
    no_resize = opts.resize_width == 0 and opts.resize_height == 0  # Caffe: `!height && !width`
    if opts.stores_encoded and no_resize and opts.validate == "header":
        ext = _caffe_ext(path)
        if _match_ext(ext, opts.encode_type.lower().lstrip(".") or ext):
            # channels == (gray ? 1 : 3) by construction, so Caffe stores the bytes verbatim
            shape = header_shape(data, opts.gray, opts.max_pixels)
            if shape is not None:
                return ImagePayload(data=data, encoded=True, shape=shape, format=_sniff_format(data, ext))
    if opts.stores_encoded and no_resize and opts.validate == "decode":
        ext = _caffe_ext(path)
        if _match_ext(ext, opts.encode_type.lower().lstrip(".") or ext):
            # stored verbatim (channels == (gray ? 1 : 3) by construction): only its validity matters
            shape = jpeg_decodes(data, opts.gray, opts.max_pixels)
            if shape is not None:
                return ImagePayload(data=data, encoded=True, shape=shape, format="jpeg")
    if opts.resizes and opts.resize_mode == "antialias":
        img = _antialias_resize(data, opts)
    else:
        # Into `out` (a DecodeBuffer: BGRX) only for raw planes as decoded: a resize or a re-encode
        # wants BGR, which libjpeg writes as fast (stripping X again cost 0.5 ms at 256 px).
        into = None if opts.resizes or opts.stores_encoded else out
        img = decode_bytes(data, opts.gray, out=into, max_pixels=opts.max_pixels)  # simplejpeg if installed
        if opts.resizes:
            img = caffe_resize(img, opts.resize_width, opts.resize_height)
    shape = planar_shape(img)
    channels = shape[0]
    if not opts.stores_encoded:
        return ImagePayload(data=chw_bytes(img) if planar else img, encoded=False, shape=shape, format="raw")
    ext = _caffe_ext(path)
    encoding = opts.encode_type.lower().lstrip(".") or ext
    if no_resize and (channels == 3) == (not opts.gray) and _match_ext(ext, encoding):
        return ImagePayload(data=data, encoded=True, shape=shape, format=_sniff_format(data, ext))
    if _FORMAT_NAMES.get(encoding) is None:
        what = "encoding" if opts.encode_type else "encoding guessed from the file extension"
        raise ImageDecodeError(f"cannot encode as {encoding!r} ({what}): only jpg and png can be re-encoded")
    return ImagePayload(
        data=encode_image(img, encoding), encoded=True, shape=shape, format=_FORMAT_NAMES[encoding]
    )
