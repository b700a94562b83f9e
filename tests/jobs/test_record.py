"""Job records on disk and the checks on a job request, on their own."""

from __future__ import annotations

import pytest

from mlserve.errors import Forbidden, InvalidInput
from mlserve.jobs.record import JobRecord, JobState, allowed_path, check_request, load_records, save_record


def test_records_round_trip_oldest_first_and_an_unreadable_one_is_skipped(tmp_path):
    save_record(tmp_path, JobRecord("b", "mlp", 2, "in", "out", "err", None, False, created=2.0))
    save_record(tmp_path, JobRecord("a", "mlp", None, "in", "o2", "e2", 1, True, created=1.0,
                                    state=JobState.CANCELLED, reason="asked"))
    (tmp_path / "torn.json").write_text('{"job_id": "c"')
    records = load_records(tmp_path)
    assert [r.job_id for r in records] == ["a", "b"]
    assert (records[0].state, records[0].reason, records[0].priority) == (JobState.CANCELLED, "asked", 1)
    assert records[1].version == 2 and not records[1].is_finished


def test_paths_must_resolve_inside_the_folder(tmp_path):
    root = (tmp_path / "batch").resolve()
    root.mkdir()
    (root / "link").symlink_to(tmp_path)
    assert allowed_path(root, "sub/x.npz", "input") == root / "sub" / "x.npz"
    assert allowed_path(root, str(root / "x.npz"), "input") == root / "x.npz"
    for raw in ("../x.npz", "/etc/passwd", "link/x.npz", "sub/../../x.npz"):
        with pytest.raises(Forbidden, match="outside the folder"):
            allowed_path(root, raw, "input")
    for raw in ("", None, 3, "s3://bucket/x.npz"):
        with pytest.raises(InvalidInput):
            allowed_path(root, raw, "input")


@pytest.mark.parametrize("body,message", [
    ([], "must be a JSON object"),
    ({"model": "m", "input": "i"}, "missing 'output'"),
    ({"model": "m", "input": "i", "output": "o", "when": 1}, "unknown key(s) ['when']"),
    ({"model": 3, "input": "i", "output": "o"}, "'model' must be a string"),
    ({"model": "m", "input": "i", "output": "o", "priority": 0}, "'priority' must be a positive integer"),
    ({"model": "m", "input": "i", "output": "o", "overwrite": "yes"}, "'overwrite' must be true or false"),
])
def test_a_bad_job_request_names_its_problem(body, message):
    with pytest.raises(InvalidInput) as caught:
        check_request(body)
    assert message in str(caught.value)
