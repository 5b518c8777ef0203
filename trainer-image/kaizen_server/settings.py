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
    #: The file of adapters and aliases to hold (KAIZEN_ADAPTERS_FILE: a mounted ConfigMap), watched for changes.
    adapters_file: Path | None = None
    #: Whether POST /v1/load_lora_adapter and /v1/unload_lora_adapter are served (as vLLM's
    #: VLLM_ALLOW_RUNTIME_LORA_UPDATING).
    runtime_adapters: bool = False
    #: The request header naming the model, which a gateway sets (the Gateway API Inference Extension's); it takes
    #: precedence over the body's ``model``, as the gateway's rewrite of the body would.
    model_name_header: str = "X-Gateway-Model-Name"
    adapters_poll_seconds: float = 1.0

    @property
    def holds_adapters(self) -> bool:
        """Whether adapters may come and go at run time (then adapters stay unmerged)."""
        return self.runtime_adapters or self.adapters_file is not None

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
        runtime = env.get("KAIZEN_ALLOW_RUNTIME_LORA_UPDATING", "").strip().lower()
        if runtime not in ("", "0", "1", "true", "false"):
            raise ValueError(f"KAIZEN_ALLOW_RUNTIME_LORA_UPDATING={runtime!r}: set true or false")
        try:
            poll = float(env.get("KAIZEN_ADAPTERS_POLL_SECONDS") or 1.0)
        except ValueError:
            raise ValueError(f"KAIZEN_ADAPTERS_POLL_SECONDS={env['KAIZEN_ADAPTERS_POLL_SECONDS']!r} is not a number "
                             "of seconds") from None
        if not 0 < poll <= 3600:
            raise ValueError(f"KAIZEN_ADAPTERS_POLL_SECONDS={poll:g}: set a number of seconds above 0, at most 3600")
        adapters_file = env.get("KAIZEN_ADAPTERS_FILE", "").strip() or None
        # The downward API gives an empty string for a missing label.
        settings = cls(model_uri=uri, base_model_uri=env.get("BASE_MODEL_URI", "").strip() or None,
                       name=env.get("KAIZEN_MODEL_NAME") or "model",
                       version=env.get("KAIZEN_MODEL_VERSION") or "unknown", track=env.get("KAIZEN_TRACK") or "unknown",
                       host=env.get("HOST") or "0.0.0.0", port=port, collector_url=url, collector_token=token,
                       adapters_file=Path(adapters_file) if adapters_file else None,
                       runtime_adapters=runtime in ("1", "true"),
                       model_name_header=env.get("KAIZEN_MODEL_NAME_HEADER") or "X-Gateway-Model-Name",
                       adapters_poll_seconds=poll)
        if url is not None and settings.track not in TRACKS:
            raise ValueError(f"KAIZEN_TRACK={settings.track!r}: the collector records traces of the tracks "
                             f"{', '.join(TRACKS)}; set one of them (the pod's kaizen.dev/track label)")
        return settings
