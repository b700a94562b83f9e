"""RequestIds: random 128-bit ids handed out from a pool of the OS's randomness."""

from __future__ import annotations

import re

from mlserve.routing.service import RequestIds


def test_ids_are_32_hex_digits_and_distinct_across_pool_refills():
    ids = RequestIds()
    drawn = [ids.next() for _ in range(1000)]  # about four pools of 256
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in drawn)
    assert len(set(drawn)) == len(drawn)


def test_two_sources_do_not_repeat_each_other():
    assert {RequestIds().next() for _ in range(50)} != {RequestIds().next()}
    assert len({RequestIds().next() for _ in range(50)}) == 50
