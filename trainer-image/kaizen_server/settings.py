"""The model server's settings, from the environment of the serving contract; torch-free, so that a bad environment
is reported in a second, before the model stack is imported."""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from pathlib import Path

from kaizen.collector.models import Track

TRACKS = typing.get_args(Track)


@dataclasses.dataclass(frozen=True)
class Settings:
    """How one server runs, from the environment of the serving contract (:meth:`from_env`)."""

    model_uri: str
    #: The base model of a LoRA adapter at model_uri, when not the one its adapter_config.json names.
    base_model_uri: str | None = None
    name: str = "model"
    version: str = "unknown"
    track: str = "unknown"
    host: str = "0.0.0.0"
    port: int = 8080
    collector_url: str | None = None
    collector_token: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        """Raises ValueError saying which variable is wrong and what to set."""
        uri = env.get("MODEL_URI", "").strip()
        if not uri:
            raise ValueError("MODEL_URI is not set: set it to the model's location (a path, file://, pvc://CLAIM/PATH, "
                             "s3:// or hf://), as the trainer's candidate.uri reports it")
        try:
            port = int(env.get("PORT") or 8080)
        except ValueError:
            raise ValueError(f"PORT={env['PORT']!r} is not a port number") from None
        if not 0 < port < 65536:
            raise ValueError(f"PORT={port} is not a port number (1-65535)")
        token = env.get("KAIZEN_COLLECTOR_TOKEN") or None
        if token is None and env.get("KAIZEN_COLLECTOR_TOKEN_FILE"):
            try:
                token = Path(env["KAIZEN_COLLECTOR_TOKEN_FILE"]).read_text().strip()
            except OSError as error:
                raise ValueError(f"KAIZEN_COLLECTOR_TOKEN_FILE={env['KAIZEN_COLLECTOR_TOKEN_FILE']}: "
                                 f"{error.strerror or error}") from None
        url = env.get("KAIZEN_COLLECTOR_URL") or None
        if url is not None and not url.startswith(("http://", "https://")):
            raise ValueError(f"KAIZEN_COLLECTOR_URL={url!r} must start with http:// or https://")
        # The downward API gives an empty string for a missing label.
        settings = cls(model_uri=uri, base_model_uri=env.get("BASE_MODEL_URI", "").strip() or None,
                       name=env.get("KAIZEN_MODEL_NAME") or "model",
                       version=env.get("KAIZEN_MODEL_VERSION") or "unknown", track=env.get("KAIZEN_TRACK") or "unknown",
                       host=env.get("HOST") or "0.0.0.0", port=port, collector_url=url, collector_token=token)
        if url is not None and settings.track not in TRACKS:
            raise ValueError(f"KAIZEN_TRACK={settings.track!r}: the collector records traces of the tracks "
                             f"{', '.join(TRACKS)}; set one of them (the pod's kaizen.dev/track label)")
        return settings
