"""Tensor byte ranges in a model file: the formats forbid two tensors sharing bytes (a crafted file
could alias one tensor into another)."""
from __future__ import annotations


def overlapping_pair(spans) -> tuple[str, str] | None:
    """(begin, end, name) byte ranges -> the names of the first two that overlap, or None."""
    spans = sorted(s for s in spans if s[1] > s[0])
    for (_, end, first), (begin, _, second) in zip(spans, spans[1:]):
        if begin < end:
            return first, second
    return None
