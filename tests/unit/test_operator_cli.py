"""``kaizen operator``'s leader election and metrics flags: values that cannot work are refused with what to change,
before the operator touches the cluster."""

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


def test_a_metrics_address_without_a_port_is_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["operator", "--metrics-bind-address=8081"])
    assert exited.value.code == 2
    assert ("argument --metrics-bind-address: '8081' is not HOST:PORT (e.g. :8081, or 127.0.0.1:8081) with a port "
            "from 1 to 65535" in capsys.readouterr().err)


def test_a_metrics_port_in_use_is_refused_with_what_to_change(capsys):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code = main(["operator", f"--metrics-bind-address=127.0.0.1:{port}"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"kaizen operator: error: cannot serve metrics on 127.0.0.1:{port}: ")
    assert err.endswith("choose another --metrics-bind-address\n")
