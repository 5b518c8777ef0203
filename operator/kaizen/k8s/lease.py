"""Leader election on a ``coordination.k8s.io/v1`` Lease, as client-go's ``leaderelection`` does it.

:class:`LeaderElector` reads and writes the Lease; the rules it follows (may I take it? am I still leader? when do I
look again?) are pure, in :mod:`kaizen.logic.leader`. Every write carries the ``resourceVersion`` it read, so two
replicas racing for an expired lease cannot both win: the API server refuses the second with 409.

It runs in its own threads, not on the operator's event loop, so that a busy or blocked loop cannot delay a
renewal or, worse, the decision to stop:

- one thread acquires the lease (a standby reads it every retry period, and again the moment the lease it saw
  expires), then renews it every retry period;
- a watchdog thread calls ``on_lost`` at the renew deadline unless a renewal was sent since, even while a renewal
  request hangs; ``on_lost`` is also called at once when a read shows another holder.

:meth:`LeaderElector.leading` is the fence: false from the moment the renew deadline passes (or the lease is lost or
released), whatever the threads are doing. :func:`kaizen.k8s.client.fence` refuses the operator's writes with it.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any, cast

import kubernetes.client

from kaizen.k8s.client import FIELD_MANAGER, configuration
from kaizen.k8s.errors import ApiError, typed
from kaizen.logic import leader
from kaizen.logic.leader import LeaseRecord, Sighting, Timing

GROUP, VERSION, PLURAL = "coordination.k8s.io", "v1", "leases"
logger = logging.getLogger("kaizen.leader")


def record_of(lease: dict[str, Any]) -> LeaseRecord:
    spec = lease.get("spec") or {}
    return LeaseRecord(
        holder=spec.get("holderIdentity") or "", lease_duration_seconds=int(spec.get("leaseDurationSeconds") or 0),
        acquire_time=spec.get("acquireTime"), renew_time=spec.get("renewTime"),
        transitions=int(spec.get("leaseTransitions") or 0),
    )


def spec_of(record: LeaseRecord) -> dict[str, Any]:
    return {"holderIdentity": record.holder or None, "leaseDurationSeconds": record.lease_duration_seconds,
            "acquireTime": record.acquire_time, "renewTime": record.renew_time,
            "leaseTransitions": record.transitions}


class LeaderElector:
    """Holds the Lease ``namespace/name`` for ``identity`` while it can, and says whether it does."""

    def __init__(self, name: str, namespace: str, identity: str, timing: Timing,
                 api: kubernetes.client.ApiClient | None = None) -> None:
        self.name, self.namespace, self.identity, self.timing = name, namespace, identity, timing
        self._api_client = api
        self._sighting: Sighting | None = None
        self._renewed_at: float | None = None
        self._lost = False
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    @functools.cached_property
    def _api(self) -> kubernetes.client.CustomObjectsApi:
        # Its own client, unfenced: renewing the lease is the one write a replica makes to stay leader. Made on first
        # use, so that building an elector reads no kubeconfig.
        return kubernetes.client.CustomObjectsApi(self._api_client or kubernetes.client.ApiClient(configuration()))

    @property
    def lease(self) -> str:
        return f"{self.namespace}/{self.name}"

    def leading(self) -> bool:
        """Whether this replica may act now: it holds the lease and its last renewal is within the deadline."""
        return leader.leading(self._renewed_at, time.monotonic(), self.timing)

    def campaigning(self) -> bool:
        """Whether the thread that acquires and renews the lease still runs (a liveness probe's question)."""
        return bool(self._threads) and self._threads[0].is_alive()

    def holder(self) -> str:
        """The holder this replica last saw ("" when none, or before it first read the lease)."""
        return self._sighting.record.holder if self._sighting else ""

    def start(self, on_started: Callable[[], None], on_lost: Callable[[], None]) -> None:
        """Campaign in the background: ``on_started`` once this replica leads, ``on_lost`` when it must stop
        (both called from the elector's threads)."""
        thread = threading.Thread(target=self._run, args=(on_started, on_lost), name="leader-elector", daemon=True)
        self._threads.append(thread)
        thread.start()

    def stop(self, release: bool = True) -> None:
        """Stop campaigning; a leader then gives the lease up (``release``), so a standby takes over at its next
        look instead of waiting for the lease to expire. Call it once the operator has stopped acting."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=self.timing.retry_period * 2)
        with self._lock:
            was_leading, self._renewed_at, self._lost = self.leading(), None, True
        if release and was_leading:
            try:
                self._release()
            except ApiError as error:
                logger.warning(f"Failed to release the lease lease={self.lease} error={error}; it expires in "
                               f"{self.timing.lease_duration:g}s")

    def try_acquire_or_renew(self) -> bool:
        """One attempt to take or renew the lease; True when this replica holds it now."""
        sent = time.monotonic()
        lease = self._read()
        if lease is None:
            record = leader.claim(None, self.identity, self.timing, datetime.now(timezone.utc))
            written = self._write(None, record)
        else:
            current = record_of(lease)
            self._sighting = leader.observe(self._sighting, current, sent)
            if leader.held_by_other(self._sighting, self.identity, sent):
                return False
            record = leader.claim(current, self.identity, self.timing, datetime.now(timezone.utc))
            written = self._write(lease, record)
        if not written:
            return False
        with self._lock:
            if self._lost:
                return False
            self._sighting, self._renewed_at = Sighting(record, sent), sent
        return True

    def _run(self, on_started: Callable[[], None], on_lost: Callable[[], None]) -> None:
        logger.info(f"Started campaigning for the lease lease={self.lease} identity={self.identity}")
        while not self._stop.is_set():
            if self._attempt():
                break
            self._stop.wait(leader.next_look(self._sighting, self.identity, time.monotonic(), self.timing))
        else:
            return
        assert self._sighting is not None
        logger.info(f"Became the leader lease={self.lease} identity={self.identity} "
                    f"transitions={self._sighting.record.transitions}")
        watchdog = threading.Thread(target=self._watch, args=(on_lost,), name="leader-watchdog", daemon=True)
        self._threads.append(watchdog)
        watchdog.start()
        on_started()
        while not self._stop.wait(self.timing.retry_period):
            if not self._attempt() and self.holder() not in ("", self.identity):
                self._lose(on_lost, f"another replica holds it now holder={self.holder()}")
                return

    def _attempt(self) -> bool:
        try:
            return self.try_acquire_or_renew()
        except ApiError as error:
            logger.warning(f"Failed to read or write the lease lease={self.lease} error={error}")
            return False

    def _watch(self, on_lost: Callable[[], None]) -> None:
        while not self._stop.is_set():
            renewed_at = self._renewed_at
            remaining = -1.0 if renewed_at is None else renewed_at + self.timing.renew_deadline - time.monotonic()
            if remaining <= 0:
                self._lose(on_lost, f"not renewed within the renew deadline deadline={self.timing.renew_deadline:g}s")
                return
            self._stop.wait(remaining)

    def _lose(self, on_lost: Callable[[], None], why: str) -> None:
        with self._lock:
            if self._lost or self._stop.is_set():
                return
            self._lost, self._renewed_at = True, None
        logger.error(f"Lost the lease lease={self.lease} identity={self.identity}: {why}; stopping")
        on_lost()

    @typed
    def _read(self) -> dict[str, Any] | None:
        try:
            return cast(dict[str, Any], self._api.get_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, self.name, _request_timeout=self.timing.retry_period))
        except kubernetes.client.ApiException as error:
            if error.status == 404:
                return None
            raise

    @typed
    def _write(self, lease: dict[str, Any] | None, record: LeaseRecord) -> bool:
        """Create the Lease, or replace the one read (guarded by its resourceVersion); False when another
        replica wrote first."""
        try:
            if lease is None:
                body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Lease",
                        "metadata": {"name": self.name, "namespace": self.namespace}, "spec": spec_of(record)}
                self._api.create_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, body,
                                                          field_manager=FIELD_MANAGER,
                                                          _request_timeout=self.timing.retry_period)
            else:
                body = {**lease, "spec": {**(lease.get("spec") or {}), **spec_of(record)}}
                self._api.replace_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, self.name, body,
                                                           field_manager=FIELD_MANAGER,
                                                           _request_timeout=self.timing.retry_period)
        except kubernetes.client.ApiException as error:
            if error.status == 409:
                return False
            raise
        return True

    def _release(self) -> None:
        lease = self._read()
        if lease is None or record_of(lease).holder != self.identity:
            return
        if self._write(lease, leader.released(record_of(lease), datetime.now(timezone.utc))):
            logger.info(f"Released the lease lease={self.lease} identity={self.identity}")
