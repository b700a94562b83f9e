"""Incremental detokenization with stop strings: which new text a step adds to a sequence's output."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(slots=True)
class TextState:
    """The text already sent for one sequence."""

    sent: str = ""


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str
    hit_stop: bool


def next_delta(
    state: TextState, decode: Callable[[list[int]], str], output_ids: list[int], stop: tuple[str, ...], is_final: bool
) -> TextDelta:
    """Decode the whole output, cut it at the first stop string, and hold back text that may still
    change: a trailing partial UTF-8 character, or a tail that could begin a stop string."""
    text = decode(output_ids)
    cut = _first_stop(text, stop, len(state.sent))
    if cut is not None:
        delta = text[len(state.sent):cut]
        state.sent = text[:cut]
        return TextDelta(delta, True)
    if not is_final:
        if text.endswith("\ufffd"):
            text = text.rstrip("\ufffd")
        hold = max((len(s) - 1 for s in stop), default=0)
        text = text[:max(len(state.sent), len(text) - hold)]
    # Text already sent cannot be taken back; if decoding revised it (invalid UTF-8 bytes), go on from its length.
    delta = text[len(state.sent):]
    state.sent += delta
    return TextDelta(delta, False)


def _first_stop(text: str, stop: tuple[str, ...], sent_len: int) -> int | None:
    longest = max((len(s) for s in stop), default=0)
    begin = max(0, sent_len - longest)
    hits = [i for i in (text.find(s, begin) for s in stop if s) if i >= 0]
    return min(hits) if hits else None
