"""Image types read from the bytes themselves, whatever a header or a data: URL claims."""

from __future__ import annotations

import pytest

from gateway.preflight.formats import image_type
from tests.support.images import bmp, png


@pytest.mark.parametrize("data,kind", [
    (png(), "image/png"),
    (b"\xff\xd8\xff\xe0\x00\x10JFIF\x00", "image/jpeg"),
    (b"\xff\xd8\xff\xdb\x00\x43", "image/jpeg"),
    (b"GIF87a\x01\x00\x01\x00", "image/gif"),
    (b"GIF89a\x01\x00\x01\x00", "image/gif"),
    (bmp(), "image/bmp"),
])
def test_each_format_is_known_by_its_leading_bytes(data: bytes, kind: str) -> None:
    assert image_type(data) == kind


@pytest.mark.parametrize("data", [
    b"", b"<html><body>not found</body></html>", b"%PDF-1.7\n", b"root:x:0:0:root:/root:/bin/bash\n",
    b"\x89PNG", b"GIF88a", b"RIFF\x24\x00\x00\x00WAVEfmt ", b"BM", b"BMP is a format\x00\x00\x00\x00",
    b"\x00\x00\x00\x1cftypheic",  # HEIC: an image, but not one the engine reads
    b"RIFF\x24\x00\x00\x00WEBPVP8 ",  # WebP: llama.cpp's stb_image cannot decode it
])
def test_anything_else_is_not_an_image(data: bytes) -> None:
    assert image_type(data) is None
