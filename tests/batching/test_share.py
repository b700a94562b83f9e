"""The share rule between live requests and background work (batching/share.py), on an explicit clock."""

from __future__ import annotations

import pytest

from mlserve.batching.share import BackgroundShare


def test_no_rows_are_held_while_background_work_has_its_floor():
    share = BackgroundShare(min_share=0.1, window_s=1.0)
    assert share.held_rows(64, now=0.0) == 7  # nothing ran yet: the floor is owed, ceil(6.4) rows
    share.ran(live_rows=57, background_rows=7, now=0.0)
    assert share.share(0.0) == pytest.approx(7 / 64)
    assert share.held_rows(64, now=0.0) == 0
    share.ran(live_rows=64, background_rows=0, now=0.1)
    assert share.share(0.1) < 0.1
    assert share.held_rows(64, now=0.1) == 7


def test_the_share_is_a_ratio_of_decayed_counts_so_waiting_time_does_not_change_it():
    share = BackgroundShare(min_share=0.1, window_s=1.0)
    share.ran(live_rows=30, background_rows=10, now=0.0)
    assert share.share(0.0) == pytest.approx(0.25)
    assert share.share(0.7) == pytest.approx(0.25)
    share.ran(live_rows=40, background_rows=0, now=1.0)  # older rows weigh e^-1 of new ones
    expected = 10 * 0.36787944 / ((30 + 10) * 0.36787944 + 40)
    assert share.share(1.0) == pytest.approx(expected, rel=1e-6)


def test_background_batches_alone_are_short_while_live_traffic_is_about():
    share = BackgroundShare(min_share=0.1, window_s=1.0)
    assert share.alone_rows(64, now=0.0) == 64
    share.ran(live_rows=3, background_rows=0, now=5.0)
    assert share.alone_rows(64, now=5.5) == 32
    assert share.alone_rows(64, now=6.01) == 64
    assert share.alone_rows(2, now=5.5) == 1


def test_held_to_floor_lasts_one_window_after_the_floor_was_used():
    share = BackgroundShare(min_share=0.2, window_s=1.0)
    assert not share.is_held_to_floor(0.0)
    assert share.held_rows(10, now=2.0) == 2
    assert share.is_held_to_floor(2.5)
    assert not share.is_held_to_floor(3.01)


def test_a_floor_of_zero_holds_nothing_and_a_floor_over_half_is_refused():
    assert BackgroundShare(min_share=0.0).held_rows(64, now=0.0) == 0
    with pytest.raises(ValueError, match="0..0.5"):
        BackgroundShare(min_share=0.6)


@pytest.mark.parametrize(("live_rows", "held", "expected"), [
    (1, 0, 31),   # a short batch in all: 64 // 2 = 32 rows, live ones first
    (32, 0, 0),   # live rows fill the short batch: no spare rows for background work
    (40, 0, 0),   # live rows are never cut, and no background rows join a batch already past it
    (40, 7, 7),   # the floor's held rows join whatever the live rows are
    (60, 7, 4),   # ... within max_batch_size (the batcher took live rows leaving the held ones free)
])
def test_spare_rows_make_a_short_batch_beside_live_rows_and_never_fewer_than_the_floor(live_rows, held, expected):
    assert BackgroundShare.spare_rows(64, live_rows, held) == expected
