"""The adapters a model server holds beside its own model, and the weighted aliases between them: the contract
between the operator, which writes it into a ConfigMap the stable pods mount (an adapter canary, see
:mod:`kaizen.logic.adapters`), and the reference server (``kaizen_server``), which watches that file and loads and
unloads LoRA adapters to match; plus the bodies of the runtime endpoints the server shares with vLLM
(``POST /v1/load_lora_adapter``, ``POST /v1/unload_lora_adapter``, enabled by
``KAIZEN_ALLOW_RUNTIME_LORA_UPDATING``, as vLLM's ``VLLM_ALLOW_RUNTIME_LORA_UPDATING``).

Torch-free and snake_case on the wire, as the rest of the serving contract (:mod:`kaizen.api.serving`).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from kaizen.api.serving import Strict

#: The file's name in the ConfigMap (its key) and in the folder the pods mount it at.
ADAPTERS_FILE = "adapters.json"
#: A served name: what a request's ``model`` (or the gateway's model-name header) asks for.
ModelName = Annotated[str, Field(min_length=1, max_length=256, pattern=r"^[^\x00-\x20\x7f,]+$")]
AdapterTrack = Literal["stable", "canary"]


class Adapter(Strict):
    """A LoRA adapter the server holds, on the base model it serves."""

    name: ModelName = Field(description="The name requests ask for (vLLM's lora_name).")
    uri: str = Field(min_length=1, max_length=1024, description="Where the adapter is (vLLM's lora_path).")
    version: Annotated[str, Field(min_length=1, max_length=63)] = Field(
        description="Its model version: the model_version its answers' metrics and traces carry.")
    track: AdapterTrack = Field(default="canary", description="The track its answers' metrics and traces carry.")


class AliasTarget(Strict):
    model: ModelName = Field(description="The server's own served name, or an adapter's name (not an alias).")
    weight: int = Field(ge=0, le=100, description="Its share of the alias's requests, in percent of the total.")


class AliasAffinity(Strict):
    """Keep a conversation on the version that first answered it: the answers carry a marker (a header, or a cookie,
    set to the version), and a request that echoes it goes to that version. Exactly one of header, cookie."""

    header: Annotated[str, Field(min_length=1, max_length=256)] | None = None
    cookie: Annotated[str, Field(min_length=1, max_length=256)] | None = None

    @model_validator(mode="after")
    def _one(self) -> AliasAffinity:
        if (self.header is None) == (self.cookie is None):
            raise ValueError("set exactly one of header, cookie")
        return self


class Alias(Strict):
    """A served name whose requests are split between models by weight (the server's own traffic split, used when
    no gateway splits by model name)."""

    name: ModelName
    targets: list[AliasTarget] = Field(min_length=1, max_length=8)
    session_affinity: AliasAffinity | None = None

    @model_validator(mode="after")
    def _weights(self) -> Alias:
        if sum(t.weight for t in self.targets) <= 0:
            raise ValueError(f"alias {self.name}: the weights sum to 0; give one target a weight")
        if len({t.model for t in self.targets}) != len(self.targets):
            raise ValueError(f"alias {self.name}: a model is named twice among its targets")
        return self


class AdapterSet(Strict):
    """What the pool's servers must hold: the file ``adapters.json`` of the ConfigMap they mount."""

    adapters: list[Adapter] = Field(default_factory=list, max_length=32)
    aliases: list[Alias] = Field(default_factory=list, max_length=8)

    @model_validator(mode="after")
    def _names(self) -> AdapterSet:
        names = [a.name for a in self.adapters] + [a.name for a in self.aliases]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"{', '.join(twice)}: an adapter or alias name is used twice")
        return self


class LoadAdapterRequest(Strict):
    """POST /v1/load_lora_adapter (vLLM's body; ``version`` and ``track`` are Kaizen's, for telemetry)."""

    lora_name: ModelName
    lora_path: str = Field(min_length=1, max_length=1024)
    version: Annotated[str, Field(min_length=1, max_length=63)] | None = Field(
        default=None, description="The model_version its answers carry; the lora_name when omitted.")
    track: AdapterTrack = "canary"


class UnloadAdapterRequest(Strict):
    """POST /v1/unload_lora_adapter."""

    lora_name: ModelName
