"""``kaizen operator``'s leader election flags: durations that cannot work are refused with what to change, before
the operator touches the cluster."""

import pytest

from kaizen.cli import main


def test_a_renew_deadline_as_long_as_the_lease_is_refused_with_what_to_change(capsys):
    code = main(["operator", "--leader-elect", "--leader-elect-lease-duration=5s", "--leader-elect-renew-deadline=5s"])
    assert code == 2
    assert capsys.readouterr().err == (
        "kaizen operator: error: the lease duration (5s) must be longer than the renew deadline (5s): a leader that "
        "cannot renew must stop before its lease can be taken; change the --leader-elect-* durations\n")


def test_a_duration_without_a_unit_is_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["operator", "--leader-elect", "--leader-elect-retry-period=2"])
    assert exited.value.code == 2
    assert ("argument --leader-elect-retry-period: invalid duration '2': expected a number with a unit, e.g. 30s"
            in capsys.readouterr().err)
