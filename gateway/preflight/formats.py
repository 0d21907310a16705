"""An image's type read from its leading bytes, never from what a header or a data: URL claims: the formats
llama.cpp's image loader (stb_image) reads: PNG, JPEG, GIF, BMP. Not WebP: llama-server fails on it."""

from __future__ import annotations

import struct

# The sizes of the BMP info headers (BITMAPCOREHEADER to BITMAPV5HEADER): "BM" alone is too weak a signature.
BMP_HEADERS = frozenset({12, 16, 40, 52, 56, 64, 108, 124})


def image_type(data: bytes | bytearray) -> str | None:
    """The MIME type of the image in `data`, or None when it is none of the formats passed on."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if data[:2] == b"BM" and len(data) >= 18 and struct.unpack_from("<I", data, 14)[0] in BMP_HEADERS:
        return "image/bmp"
    return None
