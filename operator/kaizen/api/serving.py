"""The model server's wire contract (``python -m kaizen_server``): OpenAI-compatible request and response shapes.

The single source of the server's validation (a 400 names the field at fault, straight from these models) and of
what its clients parse (the simulated users, the benchmark). Torch-free, so the operator's side can import it.
Unlike the rest of ``kaizen.api`` the fields are snake_case on the wire, as OpenAI's are; unknown fields are still
rejected, so a client's typo (``max_token``) or an option this server does not implement (``top_p``) is an error
rather than silently ignored.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from kaizen.collector.models import Id, Label, LongText

#: Most prompts (or texts) in one request; the simulator sends one.
MAX_PROMPTS = 64
#: Upper bound of ``max_tokens``; the engine also stops where the model's positions run out.
MAX_TOKENS = 4096
DEFAULT_MAX_TOKENS = 32
#: The ``metadata`` keys the server reads (others are accepted and ignored, as OpenAI's metadata is free-form).
METADATA_KEYS = ("cohort", "scenario", "consent_training", "session")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Metadata(BaseModel):
    """Request metadata: what the server records with the trace."""

    model_config = ConfigDict(extra="allow")
    #: Other keys are kept as OpenAI allows them: short strings.
    __pydantic_extra__: dict[str, Annotated[str, Field(max_length=512)]]

    cohort: Label | None = Field(default=None, description="The user's cohort, recorded with the trace.")
    scenario: Label | None = Field(default=None, description="The request's scenario (intent), for the trace.")
    consent_training: Literal["true", "false"] | None = Field(
        default=None, description="Whether the user agreed that this exchange may be used for training.")
    session: Annotated[str, Field(max_length=128)] | None = Field(default=None, description="The user's session.")


Prompts = Annotated[list[LongText], Field(min_length=1, max_length=MAX_PROMPTS)]


class Request(Strict):
    """What every inference request may carry."""

    model: Annotated[str, Field(max_length=256)] | None = Field(
        default=None, description="The served model's name (GET /v1/models); the served model when omitted.")
    user: Id | None = Field(default=None, description="The end user's pseudonymous id: the trace's subject.")
    metadata: Metadata = Field(default_factory=Metadata, description="cohort, scenario, consent_training, session.")

    @property
    def consent(self) -> bool:
        return self.metadata.consent_training == "true"


class Generation(Request):
    max_tokens: int = Field(default=DEFAULT_MAX_TOKENS, ge=1, le=MAX_TOKENS, description="Most tokens generated.")
    temperature: float | None = Field(
        default=None, ge=0, le=2, description="Accepted for compatibility; decoding is greedy whatever its value.")
    n: Literal[1] = Field(default=1, description="Choices per prompt: only 1 (greedy decoding has one answer).")
    stream: Literal[False] = Field(default=False, description="Streaming is not supported.")


class CompletionRequest(Generation):
    """POST /v1/completions."""

    prompt: LongText | Prompts = Field(description="One prompt, or a list of them.")

    @property
    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)


class Message(Strict):
    role: Literal["system", "user", "assistant", "developer", "tool"] = Field(description="Who wrote the message.")
    content: LongText = Field(description="Its text.")


class ChatRequest(Generation):
    """POST /v1/chat/completions: the prompt is the last user message."""

    messages: list[Message] = Field(min_length=1, max_length=256, description="The conversation so far.")

    @property
    def prompt(self) -> str | None:
        return next((m.content for m in reversed(self.messages) if m.role == "user"), None)


class ClassificationRequest(Request):
    """POST /v1/classifications (sequence-classification models)."""

    input: LongText | Prompts = Field(description="One text, or a list of them.")

    @property
    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)


class Usage(Strict):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class Traced(Strict):
    """The trace ids of an answer: ``trace_id`` for one prompt, ``trace_ids`` for several (one per prompt, None
    where that prompt's trace was not recorded); absent when no trace was recorded."""

    system_fingerprint: str = Field(description="The served model's version.")
    trace_id: str | None = Field(default=None, description="The trace to post feedback on (one prompt).")
    trace_ids: list[str | None] | None = Field(default=None, description="One trace id per prompt (several).")


FinishReason = Literal["stop", "length"]


class CompletionChoice(Strict):
    index: int
    text: str
    finish_reason: FinishReason


class CompletionResponse(Traced):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage


class AssistantMessage(Strict):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(Strict):
    index: int
    message: AssistantMessage
    finish_reason: FinishReason


class ChatResponse(Traced):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class Classification(Strict):
    index: int
    label: str
    score: float = Field(description="The model's probability of the label.")


class ClassificationResponse(Traced):
    id: str
    object: Literal["list"] = "list"
    created: int
    model: str
    data: list[Classification]
    usage: Usage


class ModelCard(Strict):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "kaizen"
    version: str = Field(description="The served model version (KAIZEN_MODEL_VERSION); an adapter's own; for an "
                         "alias, version:weight of each model it splits to.")
    task: Literal["causal-lm", "sequence-classification"]
    parent: str | None = Field(default=None, description="For an adapter or an alias: the served model it is on.")
    root: str | None = Field(default=None, description="For an adapter: where it was loaded from.")


class ModelList(Strict):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorBody(Strict):
    message: str = Field(description="What was wrong and what to do.")
    type: str = Field(description="invalid_request_error for a 4xx, server_error for a 5xx.")
    param: str | None = Field(default=None, description="The field at fault, dotted (messages.0.role).")
    code: str | None = Field(default=None, description="A machine-readable reason, e.g. model_not_found.")


class ErrorResponse(Strict):
    """Every error the server returns, in OpenAI's shape."""

    error: ErrorBody
