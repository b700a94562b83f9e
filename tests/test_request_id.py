"""Client-chosen request ids: the check every decoder calls, and the bounded memory experiments keep."""

from __future__ import annotations

import pytest

from mlserve.errors import InvalidInput, ModelNotFound
from mlserve.spec.request_id import MAX_REQUEST_ID_CHARS, check_request_id
from mlserve.routing import experiment as experiment_module
from mlserve.routing.experiment import Experiment
from mlserve.spec import ExperimentSpec


@pytest.mark.parametrize("value", ["a", "req-1", "x" * MAX_REQUEST_ID_CHARS, "A.b_c:d/e=f", "two words"])
def test_printable_ids_up_to_128_characters_pass_unchanged(value):
    assert check_request_id(value) == value


@pytest.mark.parametrize("value, needle", [
    ("x" * (MAX_REQUEST_ID_CHARS + 1), "129 characters"),
    ("", "empty"),
    ("a\nb", "printable"),
    ("a\x00b", "printable"),
    ("caf\u00e9", "printable"),
    ("a\tb", "printable"),
    (17, "string"),
    (None, "string"),
])
def test_other_ids_are_invalid_input_saying_why(value, needle):
    with pytest.raises(InvalidInput, match=needle):
        check_request_id(value)


def test_experiment_memory_is_bounded_in_characters_and_overlong_ids_are_not_kept(monkeypatch):
    monkeypatch.setattr(experiment_module, "MAX_ASSIGNMENT_CHARS", 128 * 100)
    exp = Experiment(ExperimentSpec())
    exp.assign("y" * 100_000, 1)  # a megabyte-sized id from before any check: never stored
    assert exp.num_assigned == 0 and exp.num_assigned_chars == 0
    with pytest.raises(ModelNotFound):
        exp.feedback("y" * 100_000, 1, control=1)
    for i in range(1000):
        exp.assign(f"{i:0128d}", 1)
    assert exp.num_assigned == 100 and exp.num_assigned_chars == 128 * 100
    assert exp.feedback(f"{999:0128d}", 1, control=1) == 1  # the newest are the ones kept
    with pytest.raises(ModelNotFound):
        exp.feedback(f"{0:0128d}", 1, control=1)
    exp.assign(f"{999:0128d}", 2)  # the same id again counts once
    assert exp.num_assigned_chars == 128 * 100
