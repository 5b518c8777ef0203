"""A remote copy of the checkpoints (``s3://`` through fsspec), for outputs that are not on a volume: each checkpoint
is uploaded as it is written, and a pod that starts without local checkpoints downloads this run's, so a run
preempted on one node resumes on another. A failing upload costs only that copy, never the run: it is logged."""

from __future__ import annotations

import logging
from pathlib import Path

from kaizen_trainer.load import require_fsspec

log = logging.getLogger("kaizen_trainer")


class Mirror:
    def __init__(self, uri: str) -> None:
        fsspec = require_fsspec(uri)
        self.uri = uri.rstrip("/")
        self.fs, self.root = fsspec.core.url_to_fs(self.uri)

    def _remote(self, tag: str) -> list[str]:
        try:
            return sorted(self.fs.glob(f"{self.root}/step-*-{tag}.pt"))
        except (OSError, ValueError) as error:
            log.warning("Failed to list checkpoint mirror uri=%s error=%s", self.uri, error)
            return []

    def pull(self, directory: Path, tag: str) -> None:
        """Download this run's mirrored checkpoints when there are none here (a new pod)."""
        if list(directory.glob(f"step-*-{tag}.pt")):
            return
        directory.mkdir(parents=True, exist_ok=True)
        for remote in self._remote(tag):
            name = remote.rsplit("/", 1)[-1]
            try:
                self.fs.get(remote, str(directory / f".{name}.partial"))
                (directory / f".{name}.partial").replace(directory / name)
                log.info("Downloaded checkpoint uri=%s/%s", self.uri, name)
            except (OSError, ValueError) as error:
                log.warning("Failed to download checkpoint uri=%s/%s error=%s", self.uri, name, error)

    def push(self, path: Path, tag: str, keep: set[str]) -> None:
        """Upload a checkpoint, then drop mirrored ones of this run no longer kept locally."""
        try:
            self.fs.put(str(path), f"{self.root}/{path.name}")
            for remote in self._remote(tag):
                if remote.rsplit("/", 1)[-1] not in keep:
                    self.fs.rm(remote)
        except (OSError, ValueError) as error:
            log.warning("Failed to mirror checkpoint path=%s uri=%s error=%s", path, self.uri, error)
