"""ggml's block quantizations of whisper.cpp model files (q4_0, q4_1, q5_0, q5_1, q8_0), in numpy.

Every type cuts a row into blocks of 32 values and stores per block an fp16 scale ``d`` (the ``_1`` types also
an fp16 minimum ``m``) and 32 small integer codes ``q``; a value is ``d`` times a signed integer (``_0``) or
``q·d + m`` (``_1``):

- q4_0, 18 bytes: codes 0..15 for ``(q-8)·d``, ``d = max/-8`` with ``max`` the signed value of largest
  magnitude; ``qs[16]`` holds value j in the low nibble of byte j, value j+16 in the high nibble.
- q4_1, 20 bytes: codes 0..15, ``d = (max-min)/15``, ``m = min``; nibbles as q4_0.
- q5_0, 22 bytes: codes 0..31 for ``(q-16)·d``, ``d = max/-16``; the low 4 bits as q4_0, bit 4 of value j
  in bit j of a little-endian ``uint32 qh``.
- q5_1, 24 bytes: codes 0..31, ``d = (max-min)/31``, ``m = min``; bits as q5_0.
- q8_0, 34 bytes: ``int8 qs[32]``, ``d = amax/127``.

The arithmetic is float32 as in ggml's reference quantizers (``quantize_row_*_ref``, what
``ggml_quantize_chunk`` runs without an importance matrix): ``id = 1/d`` from the float32 ``d`` (0 when
``d`` is 0), the 4/5-bit codes ``min(qmax, trunc(x·id + offset))`` with offset ``2^(bits-1) + 0.5`` for ``_0``
and ``0.5`` for ``(x - min)·id`` of ``_1``; q8_0 rounds ``x·id`` half away from zero. Scales are rounded to
fp16 to nearest even. The bytes equal libggml's (tests compare them with ``ggml_quantize_chunk``).
"""

from __future__ import annotations

import numpy as np

QK = 32  # values per block, every type
_HALF = QK // 2
BLOCKS = {
    "q4_0": np.dtype([("d", "<f2"), ("qs", "u1", (_HALF,))]),
    "q4_1": np.dtype([("d", "<f2"), ("m", "<f2"), ("qs", "u1", (_HALF,))]),
    "q5_0": np.dtype([("d", "<f2"), ("qh", "<u4"), ("qs", "u1", (_HALF,))]),
    "q5_1": np.dtype([("d", "<f2"), ("m", "<f2"), ("qh", "<u4"), ("qs", "u1", (_HALF,))]),
    "q8_0": np.dtype([("d", "<f2"), ("qs", "i1", (QK,))]),
}
QUANTS = tuple(BLOCKS)
# ggml_type of a tensor record (ggml.h enum ggml_type) …
GGML_TYPES = {"q4_0": 2, "q4_1": 3, "q5_0": 6, "q5_1": 7, "q8_0": 8}
# … and whisper.cpp's file ftype (enum ggml_ftype, GGML_FTYPE_MOSTLY_*): a different numbering.
GGML_FTYPES = {"q4_0": 2, "q4_1": 3, "q8_0": 7, "q5_0": 8, "q5_1": 9}
_BITS = {"q4_0": 4, "q4_1": 4, "q5_0": 5, "q5_1": 5}
_BIT_WEIGHTS = np.left_shift(np.uint32(1), np.arange(QK, dtype=np.uint32))  # bit j of qh ← value j


def _blocks(x: np.ndarray, quant: str) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim == 0 or x.shape[-1] % QK:
        raise ValueError(f"{quant} rows must be a multiple of {QK} values, got shape {x.shape}")
    return x.reshape(-1, QK)


def _inverse(d: np.ndarray) -> np.ndarray:
    inv = np.zeros_like(d)
    np.divide(np.float32(1), d, out=inv, where=d != 0)
    return inv


def _codes(v: np.ndarray, offset: float, qmax: int) -> np.ndarray:
    """``min(qmax, (int8_t)(v + offset))``: C's float → int conversion truncates toward zero."""
    return np.minimum(np.trunc(v + np.float32(offset)), qmax).astype(np.uint8)


def _pack(out: np.ndarray, q: np.ndarray, bits: int) -> np.ndarray:
    """Low nibbles of values j and j+16 into byte j; for 5 bits, bit 4 of value j into bit j of ``qh``."""
    out["qs"] = (q[:, :_HALF] & 0x0F) | ((q[:, _HALF:] & 0x0F) << 4)
    if bits == 5:
        out["qh"] = ((q >> 4).astype(np.uint32) * _BIT_WEIGHTS).sum(axis=1, dtype=np.uint32)
    return out


def _round_half_away(v: np.ndarray) -> np.ndarray:
    q = np.rint(v)  # round half to even; roundf rounds halves away from zero:
    tie = np.abs(v - np.trunc(v)) == 0.5  # exact in float32
    q[tie] = np.trunc(v[tie]) + np.sign(v[tie])
    return q


def quantize(x: np.ndarray, quant: str) -> np.ndarray:
    """Blocks (a structured array of ``BLOCKS[quant]``) of ``x``, float32 with rows a multiple of 32 values,
    as ggml's reference quantizer makes them; ``ValueError`` for an unknown ``quant`` or a bad row length."""
    if quant not in BLOCKS:
        raise ValueError(f"unknown ggml quantization {quant!r}; choose from {', '.join(QUANTS)}")
    blocks = _blocks(x, quant)
    out = np.empty(len(blocks), BLOCKS[quant])
    if quant == "q8_0":
        d = np.abs(blocks).max(axis=1) / np.float32(127)
        out["d"] = d.astype(np.float16)  # round to nearest even, as GGML_FP32_TO_FP16
        out["qs"] = _round_half_away(blocks * _inverse(d)[:, None])
        return out
    bits = _BITS[quant]
    levels = (1 << bits) - 1
    if quant.endswith("_0"):  # symmetric: the value of largest magnitude (the first, on ties) maps to code 0
        signed_max = np.take_along_axis(blocks, np.abs(blocks).argmax(axis=1)[:, None], axis=1)[:, 0]
        d = signed_max / np.float32(-(1 << (bits - 1)))
        q = _codes(blocks * _inverse(d)[:, None], (1 << (bits - 1)) + 0.5, levels)
    else:  # asymmetric: min maps to code 0, max to the top code
        lo, hi = blocks.min(axis=1), blocks.max(axis=1)
        d = (hi - lo) / np.float32(levels)
        q = _codes((blocks - lo[:, None]) * _inverse(d)[:, None], 0.5, levels)
        out["m"] = lo.astype(np.float16)
    out["d"] = d.astype(np.float16)
    return _pack(out, q, bits)


def dequantize(blocks: np.ndarray, quant: str) -> np.ndarray:
    """Float32 values (flat) of ``blocks`` of type ``quant``, as ggml's ``dequantize_row_*``."""
    d = blocks["d"].astype(np.float32)[:, None]
    if quant == "q8_0":
        return (d * blocks["qs"].astype(np.float32)).reshape(-1)
    q = np.concatenate([blocks["qs"] & 0x0F, blocks["qs"] >> 4], axis=1).astype(np.int32)
    bits = _BITS[quant]
    if bits == 5:
        q |= (((blocks["qh"][:, None] >> np.arange(QK, dtype=np.uint32)) & 1) << 4).astype(np.int32)
    if quant.endswith("_0"):
        return ((q - (1 << (bits - 1))).astype(np.float32) * d).reshape(-1)
    return (q.astype(np.float32) * d + blocks["m"].astype(np.float32)[:, None]).reshape(-1)


def max_error(x: np.ndarray, quant: str) -> np.ndarray:
    """Per block, a bound on ``|dequantize(quantize(x)) - x|``: half a step (``d/2``) for the rounding types,
    a whole step for the ``_0`` 4/5-bit codes (the top code is clamped: ``+amax`` lands one step short), plus
    the fp16 rounding of ``d`` times the largest code and of ``m``."""
    blocks = _blocks(x, quant)
    lo, hi = blocks.min(axis=1), blocks.max(axis=1)
    amax = np.abs(blocks).max(axis=1)
    if quant == "q8_0":
        step, top = amax / 127, 127
    elif quant.endswith("_0"):
        step, top = amax / (1 << (_BITS[quant] - 1)), 1 << (_BITS[quant] - 1)
    else:
        step, top = (hi - lo) / ((1 << _BITS[quant]) - 1), (1 << _BITS[quant]) - 1
    fp16_rel, fp16_abs = 2.0**-11, 2.0**-25  # rounding error of an fp16 scale: relative, and absolute (subnormal)
    half = quant == "q8_0" or quant.endswith("_1")
    return step * (0.5 if half else 1.0) + (step * top + amax) * fp16_rel + (top + 1) * fp16_abs
