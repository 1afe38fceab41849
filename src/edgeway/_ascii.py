"""ASCII-only numbers for every parser in the package (no other edgeway imports).

Protocol grammars spell numbers with ``DIGIT = %x30-39`` (RFC 5234 Appendix B.1, used
by RFC 3261 §25.1 and RFC 4566 §9). Python's ``str.isdigit()`` is wider: it is True
for any Unicode digit, and ``int()`` accepts every Unicode *decimal* digit but not the
other digits. So ``s.isdigit()`` followed by ``int(s)`` either raises a bare
``ValueError`` (``"²"``, ``"①"``, Ethiopic digits) or silently takes a non-ASCII
number (``"١٨٠"`` is 180, fullwidth ``"５０６０"`` is 5060). ``int()`` also refuses
texts longer than ``sys.get_int_max_str_digits()`` (4300 by default), another bare
``ValueError``. Use these two functions instead of ``isdigit()``/``int()`` pairs.
"""

from __future__ import annotations

__all__ = ["is_ascii_digits", "ascii_uint"]

#: Digits :func:`ascii_uint` converts after leading zeros are dropped; longer texts
#: are over any limit the parsers use (all fit in 64 bits) and are never given to
#: ``int()``.
_MAX_DIGITS = 20


def is_ascii_digits(text: str | bytes) -> bool:
    """True when ``text`` (str or bytes) is non-empty and every character is an
    ASCII digit ``0``–``9``."""
    return text.isascii() and text.isdigit()


def ascii_uint(text: str | bytes, limit: int) -> int | None:
    """The value of ``text`` when it is one or more ASCII digits (leading zeros
    allowed) and at most ``limit``; None otherwise (empty, any other character,
    sign or whitespace included, or larger than ``limit``). Never raises for a str
    or bytes argument."""
    if not (text.isascii() and text.isdigit()):
        return None
    if len(text) > _MAX_DIGITS:
        text = text.lstrip(b"0" if isinstance(text, bytes) else "0")
        if len(text) > _MAX_DIGITS:
            return None
        if not text:
            return 0
    n = int(text)
    return n if n <= limit else None
