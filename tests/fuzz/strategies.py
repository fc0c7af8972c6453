"""Hypothesis strategies shared by the fuzz targets: inputs that are mostly well-formed, then damaged.

Purely random bytes rarely get past the first check of a parser; structured inputs with a few mutations
(flipped bytes, cuts, insertions) reach the deeper paths. Every target mixes both.
"""

from __future__ import annotations

import io

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from tests.factory import make_series

#: A fixed small budget in the normal test run: reproducible (derandomized) and without a local database.
FUZZ = settings(max_examples=300, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])
#: The same for targets whose example costs a few milliseconds more (an event loop, a socket pair, a file).
FUZZ_SLOW = settings(FUZZ, max_examples=150)


def _part10() -> bytes:
    (ds,) = make_series(1)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


#: One valid small MR instance (Part 10) to damage.
VALID_PART10 = _part10()


@st.composite
def mutated(draw: st.DrawFn, base: bytes, *, max_mutations: int = 4) -> bytes:
    """``base`` with a few byte flips, cuts and insertions."""
    data = bytearray(base)
    for _ in range(draw(st.integers(0, max_mutations))):
        kind = draw(st.sampled_from(["flip", "cut", "insert", "truncate", "set32"]))
        if not data:
            break
        pos = draw(st.integers(0, len(data) - 1))
        if kind == "flip":
            data[pos] ^= draw(st.integers(1, 255))
        elif kind == "cut":
            del data[pos:pos + draw(st.integers(1, 64))]
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "truncate":
            del data[pos:]
        else:  # a length field's worth of interesting values
            value = draw(st.sampled_from([0, 1, 0xFFFF, 0xFFFFFFFF, 0x7FFFFFFF, len(data), len(data) + 1]))
            data[pos:pos + 4] = value.to_bytes(4, draw(st.sampled_from(["little", "big"])))
    return bytes(data)


def chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    """``data`` split at ``cuts`` (offsets, any order), as a network would deliver it."""
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:]) if b > a]
