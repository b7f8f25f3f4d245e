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
* PNG with colour (RGB, RGBA, palette): libpng's ``png_set_rgb_to_gray(.., 0.299, 0.587)`` integer
  formula, which OpenCV's PNG decoder uses: coefficients ``rc = 29900*32768//100000 = 9797``,
  ``gc = 58700*32768//100000 = 19234``, ``bc = 32768 - rc - gc = 13737`` and
  ``gray = (rc*R + gc*G + bc*B) >> 15`` (truncating; a pixel with R == G == B keeps its value).
  Alpha is dropped first. (For 16-bit colour PNGs libpng converts before dropping to 8 bits; here
  the conversion is applied to the 8-bit values, so such files may be off by one level.)
* Anything else with colour (CMYK JPEG, BMP, TIFF, ...): OpenCV's fixed-point BT.601 luma
  ``(4899*R + 9617*G + 1868*B + 8192) >> 14`` on the RGB pixels described above.

Resizing (``resize_mode``):

* ``"caffe"`` (default): :func:`caffe_resize`, a bit-exact re-implementation of OpenCV's 8-bit
  ``INTER_LINEAR`` (half-pixel centres, edge clamping, no antialiasing, 11-bit fixed-point weights,
  including the rounding of OpenCV's SIMD vertical pass and the switch of an exact 2x downscale to
  ``INTER_AREA``). JPEG DCT-domain downscaling (Pillow's ``draft``) is *never* used in this mode,
  because it changes pixels and would break parity with Caffe.
* ``"antialias"``: JPEGs are first reduced by libjpeg in the DCT domain (``draft``) to no less than
  twice the target size in each dimension, then Pillow's antialiased ``BILINEAR`` (triangle filter
  scaled to the reduction factor) resize produces the target size. This is faster and alias-free
  but deliberately *not* Caffe-identical.

Errors (missing file, not an image, truncated or corrupt data) raise :class:`ImageDecodeError` with
the reason only; callers add the file and line. Pillow's global state (``LOAD_TRUNCATED_IMAGES``)
is never changed, so a truncated image raises instead of being grey-padded.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from mtldata.errors import MtlDataError
from mtldata.records import ImagePayload

__all__ = [
    "ImageDecodeError",
    "ImageOptions",
    "caffe_resize",
    "decode_bytes",
    "encode_image",
    "load_image",
    "prepare_image",
    "to_chw",
]

RESIZE_MODES = ("caffe", "antialias")
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

    def __post_init__(self) -> None:
        if self.resize_mode not in RESIZE_MODES:
            raise ValueError(f"resize_mode must be one of {RESIZE_MODES}, not {self.resize_mode!r}")
        if self.resize_width < 0 or self.resize_height < 0:
            raise ValueError("resize_width and resize_height must be >= 0")

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


def _open(source: str | os.PathLike | bytes) -> Image.Image:
    """Open (parse the header of) a file or buffer, mapping failures to ImageDecodeError."""
    try:
        if isinstance(source, (bytes, bytearray, memoryview)):
            return Image.open(io.BytesIO(bytes(source)))
        return Image.open(source)
    except FileNotFoundError:
        raise ImageDecodeError("file not found") from None
    except IsADirectoryError:
        raise ImageDecodeError("is a directory, not an image file") from None
    except PermissionError:
        raise ImageDecodeError("permission denied") from None
    except UnidentifiedImageError:
        raise ImageDecodeError("not a recognised image file (unknown or invalid format)") from None
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(f"image too large: {exc}") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageDecodeError(f"cannot read image: {exc}") from None


def _orientation(im: Image.Image) -> int:
    try:
        return int(im.getexif().get(_EXIF_ORIENTATION, 1) or 1)
    except Exception:  # noqa: BLE001 - a broken EXIF block must not make an image unreadable
        return 1


def _load(im: Image.Image) -> Image.Image:
    """Decode the pixel data and apply the EXIF orientation."""
    try:
        im.load()
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(f"image too large: {exc}") from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        msg = str(exc)
        if "truncated" in msg:
            raise ImageDecodeError(f"truncated image data ({msg})") from None
        raise ImageDecodeError(f"corrupt image data: {msg}") from None
    if _orientation(im) != 1:
        try:
            im = ImageOps.exif_transpose(im)
        except Exception as exc:  # noqa: BLE001
            raise ImageDecodeError(f"cannot apply EXIF orientation: {exc}") from None
    return im


def _libpng_gray(rgb: np.ndarray) -> np.ndarray:
    """libpng's png_do_rgb_to_gray for 8-bit data without gamma, with OpenCV's 0.299/0.587 weights."""
    rc, gc = 9797, 19234  # (29900 * 32768) // 100000, (58700 * 32768) // 100000
    bc = 32768 - rc - gc
    r = rgb[..., 0].astype(np.int32)
    g = rgb[..., 1].astype(np.int32)
    b = rgb[..., 2].astype(np.int32)
    return ((rc * r + gc * g + bc * b) >> 15).astype(np.uint8)


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
        return np.asarray(im)
    if mode.startswith("I;16") or mode == "I":
        a = np.asarray(im)
        if a.dtype.byteorder == ">" or (a.dtype.byteorder == "=" and not np.little_endian):
            a = a.astype(a.dtype.newbyteorder("<"))
        return (np.clip(a.astype(np.int64), 0, 65535) >> 8).astype(np.uint8)
    if mode == "F":
        return np.clip(np.asarray(im), 0, 255).astype(np.uint8)
    if mode in ("1", "LA", "La"):
        return np.asarray(im.convert("L"))
    # P, PA, RGBA, RGBa, RGBX, CMYK, YCbCr, LAB, HSV ...: Pillow's RGB conversion, alpha dropped.
    return np.asarray(im.convert("RGB"))


def _decoded_to_array(im: Image.Image, gray: bool, is_png_colour: bool) -> np.ndarray:
    a = _to_8bit_array(im)
    if gray:
        if a.ndim == 3:
            a = _libpng_gray(a) if is_png_colour else _bt601_gray(a)
        return np.ascontiguousarray(a)
    if a.ndim == 2:
        return np.ascontiguousarray(np.repeat(a[:, :, None], 3, axis=2))
    return np.ascontiguousarray(a[:, :, ::-1])


def _decode(source: str | os.PathLike | bytes, gray: bool, draft_size: tuple[int, int] | None = None):
    """Open and decode; returns the loaded (oriented) Pillow image and whether gray uses libpng's rule.

    ``draft_size`` (antialias mode only) lets libjpeg downscale in the DCT domain to at least that size.
    """
    im = _open(source)
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
        loaded = _load(im)
        if loaded is im:
            loaded = im.copy() if False else im  # keep the decoded image alive after closing the file
            # Image.load() holds the pixels in memory; closing the file does not drop them.
        return loaded, is_png_colour


def load_image(path: str | os.PathLike, gray: bool = False) -> np.ndarray:
    """Decode a file as ``cv::imread(path, IMREAD_COLOR / IMREAD_GRAYSCALE)`` would.

    Returns HxWx3 BGR uint8, or HxW uint8 when ``gray``. Raises ImageDecodeError.
    """
    im, is_png_colour = _decode(path, gray)
    return _decoded_to_array(im, gray, is_png_colour)


def _decode_simplejpeg(data: bytes, gray: bool) -> np.ndarray | None:
    """Decode a plain (non-rotated, YCbCr/gray) JPEG with simplejpeg; None when it is not applicable."""
    if data[:3] != b"\xff\xd8\xff":
        return None
    try:
        import simplejpeg
    except ImportError:
        return None
    try:
        im = Image.open(io.BytesIO(data))
    except Exception:  # noqa: BLE001 - let the Pillow path produce the error message
        return None
    with im:
        if im.format != "JPEG" or im.mode not in ("RGB", "L") or _orientation(im) != 1:
            return None
    try:
        out = simplejpeg.decode_jpeg(
            data, colorspace="GRAY" if gray else "BGR", fastdct=False, fastupsample=False, strict=True
        )
    except ValueError as exc:
        msg = str(exc)
        raise ImageDecodeError(f"corrupt or truncated JPEG data ({msg})") from None
    if gray:
        out = out.reshape(out.shape[0], out.shape[1])
    return np.ascontiguousarray(out)


def decode_bytes(data: bytes, gray: bool = False) -> np.ndarray:
    """Decode encoded Datum bytes to HxWx3 BGR (or HxW gray) uint8, the same pixels as load_image.

    Uses simplejpeg for JPEG when it is installed (and the image needs no EXIF rotation), Pillow otherwise.
    """
    data = bytes(data)
    out = _decode_simplejpeg(data, gray)
    if out is not None:
        return out
    return _decode_pillow_bytes(data, gray)


def _decode_pillow_bytes(data: bytes, gray: bool) -> np.ndarray:
    im, is_png_colour = _decode(data, gray)
    return _decoded_to_array(im, gray, is_png_colour)


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


# --------------------------------------------------------------------------------------------------
# OpenCV INTER_LINEAR (8-bit)

_COEF_BITS = 11
_COEF_SCALE = 1 << _COEF_BITS  # INTER_RESIZE_COEF_SCALE


def _linear_taps(dst: int, src: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Source indices (clamped) and 11-bit weights of OpenCV's INTER_LINEAR along one axis.

    Follows resize.cpp: scale = 1/(dst/src) in double; f = float((d+0.5)*scale-0.5); s = floor(f);
    f -= s; outside the image the index is clamped and the weight of the left tap is 1.
    """
    scale = 1.0 / (dst / src)
    d = np.arange(dst, dtype=np.float64)
    f = ((d + 0.5) * scale - 0.5).astype(np.float32)
    s = np.floor(f)
    f = (f - s).astype(np.float32)
    s = s.astype(np.int64)
    low = s < 0
    high = s >= src - 1
    f[low | high] = 0
    s = np.clip(s, 0, src - 1)
    s1 = np.minimum(s + 1, src - 1)
    w0 = np.rint((np.float32(1) - f) * np.float32(_COEF_SCALE)).astype(np.int32)
    w1 = np.rint(f * np.float32(_COEF_SCALE)).astype(np.int32)
    return s, s1, w0, w1


def _resize_area_2x(img: np.ndarray) -> np.ndarray:
    a = img.astype(np.uint16)
    s = a[0::2, 0::2] + a[0::2, 1::2] + a[1::2, 0::2] + a[1::2, 1::2]
    return ((s + 2) >> 2).astype(np.uint8)


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
    if squeeze:
        a = a[:, :, None]
    x0, x1, ax0, ax1 = _linear_taps(width, sw)
    y0, y1 = _vertical_rows(height, sh)
    by0, by1 = _vertical_weights(height, sh)
    rows = np.unique(np.concatenate([y0, y1]))
    src = a[rows].astype(np.int32)
    hor = src[:, x0] * ax0[None, :, None] + src[:, x1] * ax1[None, :, None]
    r0 = hor[np.searchsorted(rows, y0)]
    r1 = hor[np.searchsorted(rows, y1)]
    # OpenCV's SIMD vertical pass (VResizeLinearVec_32s8u): drop 4 bits, 16x16->high-16 multiply,
    # then round by 2 bits.
    v = ((r0 >> 4) * by0[:, None, None] >> 16) + ((r1 >> 4) * by1[:, None, None] >> 16)
    out = np.clip((v + 2) >> 2, 0, 255).astype(np.uint8)
    return out[:, :, 0] if squeeze else out


def _vertical_rows(dst: int, src: int) -> tuple[np.ndarray, np.ndarray]:
    scale = 1.0 / (dst / src)
    d = np.arange(dst, dtype=np.float64)
    f = ((d + 0.5) * scale - 0.5).astype(np.float32)
    s = np.floor(f).astype(np.int64)
    return np.clip(s, 0, src - 1), np.clip(s + 1, 0, src - 1)


def _vertical_weights(dst: int, src: int) -> tuple[np.ndarray, np.ndarray]:
    # Unlike the horizontal taps, OpenCV does not zero the fraction at the vertical borders: it
    # clamps the row indices only.
    scale = 1.0 / (dst / src)
    d = np.arange(dst, dtype=np.float64)
    f = ((d + 0.5) * scale - 0.5).astype(np.float32)
    s = np.floor(f)
    f = (f - s).astype(np.float32)
    w0 = np.rint((np.float32(1) - f) * np.float32(_COEF_SCALE)).astype(np.int32)
    w1 = np.rint(f * np.float32(_COEF_SCALE)).astype(np.int32)
    return w0, w1


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
        im = Image.fromarray(np.ascontiguousarray(a), mode="L")
    elif a.ndim == 3 and a.shape[2] == 3:
        im = Image.fromarray(np.ascontiguousarray(a[:, :, ::-1]), mode="RGB")
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


def _antialias_resize(path, opts: ImageOptions) -> np.ndarray:
    w, h = opts.resize_width, opts.resize_height
    im, is_png_colour = _decode(path, opts.gray, draft_size=(2 * w, 2 * h))
    a = _decoded_to_array(im, opts.gray, is_png_colour)
    pil = Image.fromarray(a if a.ndim == 2 else np.ascontiguousarray(a[:, :, ::-1]))
    out = np.asarray(pil.resize((w, h), Image.Resampling.BILINEAR))
    return np.ascontiguousarray(out if out.ndim == 2 else out[:, :, ::-1])


def _extension(path) -> str:
    return Path(os.fspath(path)).suffix.lower().lstrip(".")


def prepare_image(path: str | os.PathLike, opts: ImageOptions) -> ImagePayload:
    """What ``convert_imageset`` stores for ``path`` under ``opts`` (Caffe's ReadImageToDatum).

    * Decode (gray or colour) and resize when both target sizes are > 0 (every image, even one that
      already has the target size).
    * Encoded (``opts.encoded`` or ``opts.encode_type``): the encoding is ``encode_type`` or else the
      file's lower-cased extension. With no resize, when ``(channels == 3) == (not gray)`` and the
      extension matches the encoding ("jpg" and "jpeg" match each other), the original file bytes are
      stored verbatim. Caffe quirk, mirrored: in gray mode the decoded image has one channel, so the
      condition holds and a *colour* file is stored verbatim too (it decodes to colour later).
      Otherwise the decoded (resized) pixels are re-encoded.
    * Raw: the planar CHW BGR (or gray) bytes.
    """
    if opts.resizes and opts.resize_mode == "antialias":
        img = _antialias_resize(path, opts)
    else:
        img = load_image(path, opts.gray)
        if opts.resizes:
            img = caffe_resize(img, opts.resize_width, opts.resize_height)
    channels = 1 if img.ndim == 2 else img.shape[2]
    shape = (channels, img.shape[0], img.shape[1])
    if not opts.stores_encoded:
        return ImagePayload(data=to_chw(img).tobytes(), encoded=False, shape=shape, format="raw")
    ext = _extension(path)
    encoding = opts.encode_type.lower().lstrip(".") or ext
    same = encoding == ext or (
        _FORMAT_NAMES.get(encoding) == "jpeg" and _FORMAT_NAMES.get(ext) == "jpeg" and "jpe" not in (encoding, ext)
    )
    if not opts.resizes and (channels == 3) == (not opts.gray) and same:
        try:
            data = Path(os.fspath(path)).read_bytes()
        except OSError as exc:
            raise ImageDecodeError(f"cannot read file: {exc.strerror or exc}") from None
        fmt = _FORMAT_NAMES.get(ext, ext or "unknown")
        return ImagePayload(data=data, encoded=True, shape=shape, format=fmt)
    if _FORMAT_NAMES.get(encoding) is None:
        raise ImageDecodeError(f"cannot encode as {encoding!r}: only jpg and png are supported")
    return ImagePayload(data=encode_image(img, encoding), encoded=True, shape=shape, format=_FORMAT_NAMES[encoding])
