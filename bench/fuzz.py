#!/usr/bin/env python3
"""Fuzz the SIP/SDP/SDES parsers (not a test; tests/test_parser_hardening.py runs the
same checks for a few seconds).

Every parser entry point must raise only its documented error for any input:
:func:`parse_message` and the header views of what it returns (``top_via()``,
``vias()``, ``cseq``, ``from_``/``to``, ``ruri``, ``content_type``) → ParseError or
UriError (both ValueError subclasses, as documented per view); ``StreamFramer.feed`` →
nothing at all, and after a fatal event every later feed returns ``[]`` with an empty
buffer; ``parse_uri``/``parse_name_addr`` → UriError; ``SessionDescription.parse`` and
``rtcp_attribute`` → SdpError, ``scan_for_relay`` → nothing; ``CryptoAttribute.parse``
→ SdesError.

Inputs: mutations of the RFC 4475 torture messages (byte flips, insertions of non-ASCII
digits, truncations, duplicated lines, CRLF → LF, deleted or repeated bytes). Prints the
inputs per second, the distinct failure signatures (exception type and innermost frame)
with one input each, and the slowest input (size and time).

    PYTHONPATH=src .venv/bin/python bench/fuzz.py [--count 1000000] [--time 600] [--seed 1]
    PYTHONPATH=src .venv/bin/python bench/fuzz.py --trickle   # the 57 KB one-byte-per-feed CPU cost
"""

from __future__ import annotations

import argparse
import random
import sys
import time
import tomllib
import traceback
from pathlib import Path

from edgeway.sip.message import MAX_MESSAGE_SIZE, ParseError, StreamFramer, parse_message
from edgeway.sip.sdes import CryptoAttribute, SdesError
from edgeway.sip.sdp import SdpError, SessionDescription, scan_for_relay
from edgeway.sip.uri import UriError, parse_name_addr, parse_uri

NON_ASCII_DIGITS = ["²", "①", "١", "٨", "５", "፩", "߁", "𝟗", "〇", "Ⅻ"]
_DIGITS_UTF8 = [d.encode() for d in NON_ASCII_DIGITS]


def load_corpus(rfc4475: Path) -> list[bytes]:
    """The RFC 4475 messages listed in ``rfc4475/MANIFEST.toml`` (read only)."""
    manifest = tomllib.loads((rfc4475 / "MANIFEST.toml").read_text())["message"]
    return [(rfc4475 / m["file"]).read_bytes() for m in manifest]


def mutate(rng: random.Random, data: bytes) -> bytes:
    """``data`` with one to four mutations."""
    b = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(8)
        i = rng.randint(0, len(b))
        if op == 0 and b:  # flip a byte
            b[min(i, len(b) - 1)] ^= 1 << rng.randrange(8)
        elif op == 1:  # a non-ASCII digit, at random or in place of an ASCII one
            digits = [j for j in range(len(b)) if 48 <= b[j] <= 57]
            d = rng.choice(_DIGITS_UTF8)
            if digits and rng.random() < 0.7:
                j = rng.choice(digits)
                b[j:j + 1] = d
            else:
                b[i:i] = d
        elif op == 2:  # truncate
            del b[i:]
        elif op == 3:  # duplicate a line
            lines = bytes(b).split(b"\n")
            k = rng.randrange(len(lines))
            lines.insert(k, lines[k])
            b = bytearray(b"\n".join(lines))
        elif op == 4:  # CRLF -> LF
            b = bytearray(bytes(b).replace(b"\r\n", b"\n"))
        elif op == 5:  # delete a run
            del b[i:i + rng.randint(1, 8)]
        elif op == 6:  # insert special bytes
            b[i:i] = rng.choice([b"\r\n", b"\n", b"\r", b":", b";", b",", b"\"", b"<", b">", b"\x00", b"\xff",
                                 b" ", b"\t", b"\r\n\r\n", b"\n\n", b"=", b"/", b"@", b"[", b"9" * 30])
        else:  # repeat a slice
            j = rng.randint(i, min(len(b), i + 64))
            b[i:i] = b[i:j] * rng.randint(1, 3)
    return bytes(b)


def _signature(exc: BaseException) -> str:
    tb = traceback.extract_tb(exc.__traceback__)
    where = f"{Path(tb[-1].filename).name}:{tb[-1].lineno} {tb[-1].name}" if tb else "?"
    return f"{type(exc).__name__} at {where}"


def _views(msg) -> None:
    """Read every header view; only ParseError/UriError (ValueErrors) may escape."""
    for view in (msg.top_via, msg.vias, lambda: msg.cseq, lambda: msg.from_, lambda: msg.to,
                 lambda: msg.content_type, lambda: msg.call_id, lambda: getattr(msg, "ruri", None)):
        try:
            view()
        except (ParseError, UriError):
            pass
    if msg.body:
        check_sdp(msg.body)


def check_sdp(body: bytes) -> None:
    try:
        sdp = SessionDescription.parse(body)
    except SdpError:
        sdp = None
    scan_for_relay(body)
    if sdp is None:
        return
    sdp.to_bytes()
    for m in sdp.media:
        try:
            m.rtcp_attribute
        except SdpError:
            pass
        for value in m.crypto:
            try:
                CryptoAttribute.parse(value)
            except SdesError:
                pass


def _framer(data: bytes, rng: random.Random | None) -> str | None:
    """Feed ``data`` in random pieces; None, or what broke the framer's contract."""
    f = StreamFramer()
    i = 0
    broken = False
    while i < len(data):
        n = rng.randint(1, 400) if rng is not None else len(data)
        events = f.feed(data[i:i + n])
        i += n
        if broken and (events or f._buf):
            return "StreamFramer fed after a fatal error: events or buffered bytes"
        for e in events:
            if isinstance(e, ParseError) and e.fatal_for_stream:
                broken = True
            elif not isinstance(e, str):
                _views(e) if not isinstance(e, ParseError) else None
        if len(f._buf) > MAX_MESSAGE_SIZE + 400:
            return "StreamFramer buffer over its limit"
    if broken and (f.feed(data[:100] or b"x") or f._buf):
        return "StreamFramer fed after a fatal error: events or buffered bytes"
    return None


def check(data: bytes, rng: random.Random | None = None) -> str | None:
    """Run every byte-level entry point on ``data``; None when all kept their
    contract, else a failure signature."""
    try:
        try:
            msg = parse_message(data)
        except ParseError as exc:
            msg = exc.partial
        if msg is not None:
            _views(msg)
        problem = _framer(data, rng)
        if problem:
            return problem
        check_sdp(data)
        text = data.decode("utf-8", "surrogateescape")
        return check_text(text[:300])
    except Exception as exc:  # noqa: BLE001 - anything here is a finding
        return _signature(exc)


def check_text(text: str) -> str | None:
    """The str-level entry points (URI, name-addr, a=crypto) on ``text``."""
    try:
        for fn in (parse_uri, parse_name_addr, CryptoAttribute.parse):
            try:
                fn(text)
            except (UriError, SdesError):
                pass
        return None
    except Exception as exc:  # noqa: BLE001
        return _signature(exc)


def trickle() -> None:
    """CPU for a 57 KB message (26.7 KB head, 30 KB body) fed one byte per feed."""
    extra = b"".join(b"X-Filler-%03d: %s\r\n" % (i, b"v" * 119) for i in range(200))
    head = (b"INVITE sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/TCP 10.0.0.1:5060;branch=z9hG4bK1\r\n"
            b"From: <sip:alice@example.com>;tag=1\r\nTo: <sip:bob@example.com>\r\nCall-ID: c1@example.com\r\n"
            b"CSeq: 1 INVITE\r\n" + extra + b"Content-Length: 30000\r\n\r\n")
    data = head + b"b" * 30000
    for _ in range(3):
        f = StreamFramer()
        t0 = time.process_time()
        n = 0
        for i in range(len(data)):
            n += len(f.feed(data[i:i + 1]))
        cpu = time.process_time() - t0
        print(f"trickle: head {len(head)} B + body 30000 B = {len(data)} B, one byte per feed: "
              f"{cpu * 1000:.1f} ms CPU, {n} message(s)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=1_000_000, help="inputs to run (default 10^6)")
    ap.add_argument("--time", type=float, default=1800.0, help="stop after this many seconds (default 1800)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--rfc4475", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "conformance" / "rfc4475")
    ap.add_argument("--trickle", action="store_true", help="only measure the trickled-message CPU cost")
    args = ap.parse_args()
    if args.trickle:
        trickle()
        return
    corpus = load_corpus(args.rfc4475)
    rng = random.Random(args.seed)
    failures: dict[str, bytes] = {}
    slowest = (0.0, b"")
    start = time.monotonic()
    n = 0
    while n < args.count and time.monotonic() - start < args.time:
        data = mutate(rng, rng.choice(corpus))
        t0 = time.perf_counter()
        sig = check(data, rng)
        dt = time.perf_counter() - t0
        if dt > slowest[0]:
            slowest = (dt, data)
        if sig is not None and sig not in failures:
            failures[sig] = data
            print(f"new failure: {sig}: {data[:200]!r}", file=sys.stderr)
        n += 1
        if n % 100_000 == 0:
            print(f"{n} inputs, {n / (time.monotonic() - start):.0f}/s, {len(failures)} failure signature(s)", file=sys.stderr)
    elapsed = time.monotonic() - start
    print(f"{n} inputs in {elapsed:.1f} s: {n / elapsed:.0f} inputs/s")
    print(f"{len(failures)} distinct failure signature(s)")
    for sig, data in failures.items():
        print(f"  {sig}\n    input ({len(data)} B): {data[:300]!r}")
    print(f"slowest input: {len(slowest[1])} B in {slowest[0] * 1000:.2f} ms: {slowest[1][:200]!r}")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
