"""Which endpoints the Service proxy forwards to, read from EndpointSlices as kube-proxy reads them, and which Service
port it proxies."""

from __future__ import annotations

import pytest

from kaizen.dev.service_proxy import ServiceProxyError, ready_endpoints, service_port


def endpoint(ip, ready=True):
    conditions = {} if ready is None else {"ready": ready}
    return {"addresses": [ip], "conditions": conditions}


SLICES = [
    {"ports": [{"name": "http", "port": 8080}],
     "endpoints": [endpoint("10.245.0.1"), endpoint("10.245.0.2", ready=False), endpoint("10.245.0.3", ready=None),
                   endpoint("10.244.0.9")]},  # kwok's fake pod: nothing serves it here
    {"ports": [{"name": "http", "port": 8080}], "endpoints": [endpoint("10.245.0.4"), endpoint("10.245.0.1")]},
    {"ports": [{"name": "metrics", "port": 9090}], "endpoints": [endpoint("10.245.0.5")]},
    {"ports": None, "endpoints": None},
]


def test_ready_endpoints_of_the_port_at_their_local_addresses():
    assert ready_endpoints(SLICES, "http") == [("127.245.0.1", 8080), ("127.245.0.3", 8080), ("127.245.0.4", 8080)]
    assert ready_endpoints(SLICES, "metrics") == [("127.245.0.5", 9090)]
    assert ready_endpoints(SLICES, "") == []
    assert ready_endpoints([], "http") == []


SERVICE = {"metadata": {"name": "bot", "namespace": "demo"},
           "spec": {"ports": [{"name": "http", "port": 80}, {"name": "metrics", "port": 9090}]}}


def test_the_service_port_by_name_or_number():
    assert service_port(SERVICE, "metrics")["port"] == 9090
    assert service_port(SERVICE, 80)["name"] == "http"
    only = {"metadata": SERVICE["metadata"], "spec": {"ports": [{"port": 80}]}}
    assert service_port(only, None) == {"port": 80}


def test_an_ambiguous_or_missing_port_says_which_there_are():
    with pytest.raises(ServiceProxyError, match="Service demo/bot has 2 ports: pass port= one of http, metrics"):
        service_port(SERVICE, None)
    with pytest.raises(ServiceProxyError, match="Service demo/bot has no port 'grpc': it has http, metrics"):
        service_port(SERVICE, "grpc")
