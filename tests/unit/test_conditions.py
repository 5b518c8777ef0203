"""Conditions behave like metav1.Condition: keyed by type, transition time moves only on a status change."""

from datetime import datetime, timedelta, timezone

from kaizen.logic.conditions import find_condition, remove_condition, set_condition

T0 = datetime(2026, 11, 28, 12, 0, tzinfo=timezone.utc)


def test_set_condition_adds_replaces_and_keeps_transition_time():
    conditions = set_condition([], type="Ready", status="True", reason="A", message="a", now=T0, generation=1)
    assert conditions == [{"type": "Ready", "status": "True", "reason": "A", "message": "a",
                           "lastTransitionTime": "2026-11-28T12:00:00Z", "observedGeneration": 1}]
    later = T0 + timedelta(minutes=5)
    same = set_condition(conditions, type="Ready", status="True", reason="B", message="b", now=later, generation=2)
    assert find_condition(same, "Ready")["lastTransitionTime"] == "2026-11-28T12:00:00Z"
    assert find_condition(same, "Ready")["reason"] == "B"
    flipped = set_condition(same, type="Ready", status="False", reason="C", message="c", now=later, generation=2)
    assert find_condition(flipped, "Ready")["lastTransitionTime"] == "2026-11-28T12:05:00Z"
    assert len(flipped) == 1


def test_remove_condition_leaves_the_others():
    conditions = set_condition([], type="Ready", status="False", reason="A", message="", now=T0, generation=1)
    conditions = set_condition(conditions, type="InvalidSpec", status="True", reason="B", message="", now=T0,
                               generation=1)
    assert [c["type"] for c in remove_condition(conditions, "InvalidSpec")] == ["Ready"]
    assert find_condition(remove_condition(conditions, "InvalidSpec"), "InvalidSpec") is None
