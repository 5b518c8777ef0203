"""Operator-wide kopf settings: where kopf keeps its bookkeeping, timeouts, and how noisy it is."""

from __future__ import annotations

import logging
from typing import Any

import kopf

from kaizen.api.common import API_GROUP
from kaizen.k8s.client import LIST_PAGE


#: How many Events kopf posts at once, each on one of its connections to the API server.
KOPF_EVENT_POSTERS = 8


def quiet_wakes(record: logging.LogRecord) -> bool:
    """Not kopf's "Handler 'wake_...' succeeded." at every watch event: a wake handler runs at each event of every
    object (thousands a minute at 1,000 objects), and the line says only that an event arrived."""
    message = record.getMessage()
    return not (message.startswith("Handler 'wake_") and message.endswith(" succeeded."))


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    logging.getLogger("kopf.objects").addFilter(quiet_wakes)
    # Handler progress and the last-handled spec go to annotations under our own prefix (not status), so the
    # status schema stays ours and nothing is pruned.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=API_GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=API_GROUP, key="last-handled-configuration"
    )
    settings.persistence.finalizer = f"{API_GROUP}/finalizer"
    # kopf's defaults wait 5 minutes on a request and forever on a watch; a stuck connection must surface.
    settings.networking.request_timeout = 30
    settings.networking.connect_timeout = 10
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.chunk_size = LIST_PAGE  # the first listing of each kind in pages
    # Our own Events say what users need to see; kopf's per-handler "succeeded" Events would drown them.
    settings.posting.level = logging.WARNING
    # Events posted a few at a time: unbounded, the first look of 1,000 loops posted 1,000 Events at once, each on
    # a TLS connection of its own. (kopf's object workers cannot be bounded so: at start-up each waits for every
    # index to be complete, which needs a worker for every object, and with a limit the operator never started; a
    # login handler bounding kopf's session to 64 connections stalled it at 1,000 loops too, its patches waiting.)
    settings.posting.worker_limit = KOPF_EVENT_POSTERS
