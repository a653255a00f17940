"""Request and response JSON, strict about what a hostile body can do.

Parsing is orjson (several times faster than the standard library on the numeric arrays that
predictions carry). What orjson refuses is read again by the standard library only for what
clients legitimately send and validation then names (``NaN``, ``Infinity``), with integers bounded
before Python converts them (a 5,000-digit integer raises ``ValueError`` in ``int()``). Nesting is
bounded before either parser runs: one vectorized pass over the bytes finds the deepest bracket
outside strings, so a body nested 1,100 deep is a 400 naming the limit, never a ``RecursionError``.
Invalid UTF-8 is a 400 that says so.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable
from typing import Any

import numpy as np
import orjson

from maas.errors import InvalidInput, PayloadTooLarge

MAX_INT_DIGITS = 20  # int64 and uint64 have at most 20 digits; longer integers are never tensor values
_OPEN, _CLOSE, _STRING_QUOTE = 1, -1, 2
_KIND = np.zeros(256, dtype=np.int8)  # what each byte is to the nesting scan
_KIND[[ord("["), ord("{")]] = _OPEN
_KIND[[ord("]"), ord("}")]] = _CLOSE
_KIND[ord('"')] = _STRING_QUOTE
_NOT_STRUCTURE = bytes(b for b in range(256) if not _KIND[b])


def parse(body: bytes, *, max_depth: int) -> Any:
    """The decoded JSON document, or :class:`InvalidInput` saying why it is not one."""
    depth = nesting_depth(body)
    if depth > max_depth:
        raise InvalidInput(f"Request JSON is nested {depth} levels deep; the limit is {max_depth} (max_json_depth)")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        pass
    try:
        text = body.decode("utf-8")  # JSON is UTF-8 (RFC 8259); json.loads(bytes) would guess UTF-16 too
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"Request body is not valid UTF-8 (byte {exc.start})") from None
    try:
        return json.loads(text, parse_int=_bounded_int)
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"Request body is not valid JSON: {exc}") from None


def dumps(document: Any) -> bytes:
    """Compact JSON; numpy arrays are written directly (no ``tolist``), NaN and infinity become ``null``."""
    return orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY, default=_fallback)


def dumps_bounded(document: Any, max_bytes: int) -> bytes:
    """:func:`dumps`, or :class:`PayloadTooLarge` when the answer is over ``max_bytes``."""
    out = dumps(document)
    if len(out) > max_bytes:
        raise answer_too_large(len(out), max_bytes)
    return out


def check_answer_size(arrays: Iterable[np.ndarray], max_bytes: int, *, binary: Iterable[np.ndarray] = ()) -> None:
    """Refuse, before encoding them, answers certain to be over ``max_bytes``: JSON spends at least two
    bytes on every number (``0,``), binary tensors their size in bytes."""
    at_least = sum(a.size for a in arrays) * 2 + sum(a.nbytes if a.dtype.kind != "O" else 4 * a.size for a in binary)
    if at_least > max_bytes:
        raise answer_too_large(at_least, max_bytes, exact=False)


def answer_too_large(size: int, max_bytes: int, *, exact: bool = True) -> PayloadTooLarge:
    return PayloadTooLarge(f"The answer would be {'' if exact else 'at least '}{size} bytes; the limit is "
                           f"{max_bytes} (max_response_bytes): ask for fewer instances or outputs")


def _fallback(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):  # orjson writes C-contiguous arrays of common dtypes itself
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, bytes):  # a string tensor's element: text, or TF Serving's {"b64": ...} for binary
        try:
            return obj.decode("utf-8")
        except UnicodeDecodeError:
            return {"b64": base64.b64encode(obj).decode("ascii")}
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


def nesting_depth(body: bytes) -> int:
    """The deepest nesting of ``[``/``{`` outside JSON strings (0 for a scalar), in a few passes at C
    speed: escapes are removed first (pairs of backslashes, then escaped quotes: JSON pairs backslashes
    left to right), every byte but brackets and quotes is dropped, and what is left is scanned with numpy."""
    if b"\\" in body:
        body = body.replace(b"\\\\", b"").replace(b'\\"', b"")
    kinds = _KIND[np.frombuffer(body.translate(None, _NOT_STRUCTURE), dtype=np.uint8)]
    quote = kinds == _STRING_QUOTE
    if quote.any():  # after an odd number of quotes, a bracket is inside a string (parity survives uint8 wrap)
        outside = (np.cumsum(quote, dtype=np.uint8) & 1) == 0
        kinds = kinds[~quote & outside]
    if not kinds.size:
        return 0
    return max(int(np.cumsum(kinds, dtype=np.int64).max()), 0)


def _bounded_int(text: str) -> int:
    digits = len(text.lstrip("-"))
    if digits > MAX_INT_DIGITS:
        raise InvalidInput(f"Request JSON has an integer of {digits} digits; tensor values have at most "
                           f"{MAX_INT_DIGITS}")
    return int(text)
