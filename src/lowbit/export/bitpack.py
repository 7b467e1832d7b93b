"""Bit-packing of unsigned integer codes at their own bit width (1 to 16 bits).

Layout: the codes form one little-endian bit stream. Code ``i`` of width ``b`` occupies stream bits
``[i·b, (i+1)·b)``, its bit ``j`` (value ``2^j``) at stream bit ``i·b + j``; stream bit ``k`` is bit ``k mod 8`` of
byte ``⌊k/8⌋``. Equivalently the byte string is the little-endian encoding of the integer ``Σ_i code_i · 2^(i·b)``.
``n`` codes take ``⌈n·b/8⌉`` bytes; the unused high bits of the last byte are zero. For ``b = 8`` this is the codes
as bytes, for ``b = 16`` their little-endian ``uint16`` encoding.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    import numpy.typing as npt

__all__ = ["pack_bits", "unpack_bits", "packed_nbytes", "MAX_BITS"]

MAX_BITS = 16


def packed_nbytes(count: int, bits: int) -> int:
    """``⌈count·bits/8⌉``: bytes taken by ``count`` codes of ``bits`` bits."""
    return (int(count) * int(bits) + 7) // 8


def _check_bits(bits: object) -> int:
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not 1 <= bits <= MAX_BITS:
        raise ValueError(f"bit width must be an int in 1..{MAX_BITS}, got {bits!r}")
    return int(bits)


def pack_bits(codes: npt.ArrayLike, bits: int) -> np.ndarray:
    """Pack unsigned integer ``codes`` (any shape, flattened in C order) into a ``uint8`` array.

    Raises ``ValueError`` for a bit width outside 1..16, non-integer codes, or codes outside ``0 .. 2^bits - 1``.
    """
    bits = _check_bits(bits)
    flat = np.asarray(codes).reshape(-1)
    if flat.size and not np.issubdtype(flat.dtype, np.integer):
        raise ValueError(f"codes must be integers, got dtype {flat.dtype}")
    if flat.size:
        low, high = int(flat.min()), int(flat.max())
        if low < 0 or high >= 1 << bits:
            raise ValueError(f"codes must lie in 0..{(1 << bits) - 1} for {bits} bits, got values in {low}..{high}")
    if bits == 8:
        return flat.astype(np.uint8)
    if bits == 16:
        return flat.astype("<u2").view(np.uint8)
    # one row of bits per code, least significant first, then the rows concatenated: the stream described above
    planes = (flat.astype(np.uint32)[:, None] >> np.arange(bits, dtype=np.uint32)) & 1
    return np.packbits(planes.astype(np.uint8).reshape(-1), bitorder="little")


def unpack_bits(data: npt.ArrayLike, bits: int, count: int) -> np.ndarray:
    """Inverse of :func:`pack_bits`: ``count`` codes as ``uint8`` (bits <= 8) or ``uint16``, flat.

    Raises ``ValueError`` when ``data`` does not hold exactly ``⌈count·bits/8⌉`` bytes.
    """
    bits = _check_bits(bits)
    data = np.frombuffer(np.ascontiguousarray(data, dtype=np.uint8).tobytes(), dtype=np.uint8)
    expected = packed_nbytes(count, bits)
    if data.size != expected:
        raise ValueError(f"{count} codes of {bits} bits take {expected} bytes, got {data.size}")
    out_dtype = np.uint8 if bits <= 8 else np.uint16
    if bits == 8:
        return data.copy()
    if bits == 16:
        return data.view("<u2").astype(np.uint16)
    planes = np.unpackbits(data, count=count * bits, bitorder="little").reshape(count, bits)
    weights = (1 << np.arange(bits, dtype=np.uint32)).astype(np.uint32)
    return (planes.astype(np.uint32) @ weights).astype(out_dtype)
