"""Bit-packing: exact round trip at every width 1-16 and any length, the documented layout, clear errors."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit.export.bitpack import MAX_BITS, pack_bits, packed_nbytes, unpack_bits


@st.composite
def codes_and_bits(draw, max_size=300):
    bits = draw(st.integers(1, MAX_BITS))
    codes = draw(st.lists(st.integers(0, 2**bits - 1), max_size=max_size))
    return np.array(codes, dtype=np.int64), bits


@settings(max_examples=300, deadline=None)
@given(codes_and_bits())
def test_round_trip_is_exact_for_any_width_and_length(case):
    codes, bits = case
    packed = pack_bits(codes, bits)
    assert packed.dtype == np.uint8
    assert packed.size == packed_nbytes(codes.size, bits) == -(-codes.size * bits // 8)
    unpacked = unpack_bits(packed, bits, codes.size)
    assert unpacked.dtype == (np.uint8 if bits <= 8 else np.uint16)
    np.testing.assert_array_equal(unpacked, codes)


@settings(max_examples=200, deadline=None)
@given(codes_and_bits(max_size=60))
def test_layout_is_the_little_endian_bit_stream(case):
    """The bytes are the little-endian encoding of sum_i code_i * 2^(i*bits); padding bits are zero."""
    codes, bits = case
    packed = pack_bits(codes, bits)
    stream = sum(int(c) << (i * bits) for i, c in enumerate(codes))
    assert int.from_bytes(packed.tobytes(), "little") == stream
    assert stream < 1 << max(codes.size * bits, 1)  # nothing above the last code: the padding is zero


@pytest.mark.parametrize("bits", range(1, MAX_BITS + 1))
@pytest.mark.parametrize("shape", [(0,), (1,), (7,), (3, 5), (2, 3, 3, 3)])
def test_odd_shapes_flatten_in_c_order(bits, shape):
    rng = np.random.default_rng(bits)
    codes = rng.integers(0, 2**bits, size=shape)
    unpacked = unpack_bits(pack_bits(codes, bits), bits, codes.size)
    np.testing.assert_array_equal(unpacked.reshape(shape), codes)


def test_known_bytes():
    assert pack_bits([1, 0, 1, 1], 1).tolist() == [0b1101]
    assert pack_bits([3, 1], 2).tolist() == [0b0111]
    assert pack_bits([0xABC], 12).tolist() == [0xBC, 0x0A]
    assert pack_bits([0x1234], 16).tolist() == [0x34, 0x12]


@pytest.mark.parametrize(
    "codes, bits, match",
    [
        ([4], 2, "0..3"),
        ([-1], 3, "0..7"),
        ([1.5], 4, "integers"),
        ([1], 0, "1..16"),
        ([1], 17, "1..16"),
        ([1], True, "1..16"),
    ],
)
def test_bad_input_is_refused(codes, bits, match):
    with pytest.raises(ValueError, match=match):
        pack_bits(np.array(codes), bits)


def test_unpack_checks_the_length():
    packed = pack_bits(np.arange(5), 3)
    with pytest.raises(ValueError, match="take 3 bytes, got 2"):
        unpack_bits(packed, 3, 6)  # 6 codes of 3 bits need 3 bytes, 5 need 2
    with pytest.raises(ValueError, match="take 2 bytes"):
        unpack_bits(np.concatenate([packed, [0]]), 3, 5)
