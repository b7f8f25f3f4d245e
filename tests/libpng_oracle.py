"""The system's libpng 1.6, driven through ctypes with the calls OpenCV's PNG decoder makes for
IMREAD_GRAYSCALE (strip 16, strip alpha, palette to RGB, expand low-bit gray, rgb_to_gray 0.299/0.587).

A test oracle for `--gray` on PNGs: it is the real library, not a re-implementation. Only for PNG
files the tests write themselves (libpng aborts the process on a broken file, as no setjmp is made).
"""

from __future__ import annotations

import ctypes
import ctypes.util
from pathlib import Path

import numpy as np

_COLOR_MASK_COLOR, _COLOR_TYPE_PALETTE = 2, 3


def load_libpng() -> ctypes.CDLL | None:
    """libpng16 of the system, or None when there is none."""
    name = ctypes.util.find_library("png16")
    if name is None:
        return None
    try:
        lib = ctypes.CDLL(name)
    except OSError:
        return None
    lib.png_get_libpng_ver.restype = ctypes.c_char_p
    lib.png_create_read_struct.restype = ctypes.c_void_p
    lib.png_create_read_struct.argtypes = [ctypes.c_char_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
    lib.png_create_info_struct.restype = ctypes.c_void_p
    lib.png_create_info_struct.argtypes = [ctypes.c_void_p]
    for fn in ("png_get_image_width", "png_get_image_height"):
        getattr(lib, fn).restype = ctypes.c_uint32
        getattr(lib, fn).argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    for fn in ("png_get_color_type", "png_get_bit_depth"):
        getattr(lib, fn).restype = ctypes.c_ubyte
        getattr(lib, fn).argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    lib.png_set_rgb_to_gray.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_double, ctypes.c_double]
    for fn in ("png_init_io", "png_read_info", "png_read_update_info", "png_read_image", "png_read_end"):
        getattr(lib, fn).argtypes = (
            [ctypes.c_void_p, ctypes.c_void_p]
            if fn != "png_read_end"
            else [
                ctypes.c_void_p,
                ctypes.c_void_p,
            ]
        )
    for fn in ("png_set_strip_16", "png_set_strip_alpha", "png_set_palette_to_rgb",
               "png_set_expand_gray_1_2_4_to_8", "png_set_interlace_handling"):  # fmt: skip
        getattr(lib, fn).argtypes = [ctypes.c_void_p]
    lib.png_destroy_read_struct.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
    return lib


def libpng_gray(lib: ctypes.CDLL, path: Path) -> np.ndarray:
    """The HxW uint8 image OpenCV's imread(path, IMREAD_GRAYSCALE) gets from libpng for a PNG."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.fopen.restype = ctypes.c_void_p
    libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    libc.fclose.argtypes = [ctypes.c_void_p]
    png = lib.png_create_read_struct(lib.png_get_libpng_ver(None), None, None, None)
    info = lib.png_create_info_struct(png)
    fp = libc.fopen(str(path).encode(), b"rb")
    try:
        lib.png_init_io(png, fp)
        lib.png_read_info(png, info)
        width, height = lib.png_get_image_width(png, info), lib.png_get_image_height(png, info)
        color_type, bit_depth = lib.png_get_color_type(png, info), lib.png_get_bit_depth(png, info)
        if bit_depth == 16:
            lib.png_set_strip_16(png)
        lib.png_set_strip_alpha(png)
        if color_type == _COLOR_TYPE_PALETTE:
            lib.png_set_palette_to_rgb(png)
        if not color_type & _COLOR_MASK_COLOR and bit_depth < 8:
            lib.png_set_expand_gray_1_2_4_to_8(png)
        lib.png_set_rgb_to_gray(png, 1, 0.299, 0.587)
        lib.png_set_interlace_handling(png)
        lib.png_read_update_info(png, info)
        out = np.zeros((height, width), np.uint8)
        rows = (ctypes.c_void_p * height)(*[out.ctypes.data + y * width for y in range(height)])
        lib.png_read_image(png, rows)
        lib.png_read_end(png, None)
    finally:
        png_p, info_p = ctypes.c_void_p(png), ctypes.c_void_p(info)
        lib.png_destroy_read_struct(ctypes.byref(png_p), ctypes.byref(info_p), None)
        libc.fclose(fp)
    return out
