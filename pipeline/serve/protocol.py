"""The OpenAI API as this server speaks it: request bodies, the chat template, errors.

In: JSON bodies of `POST /v1/completions` and `POST /v1/chat/completions`. Out: validated
requests (`CompletionRequest`, `ChatRequest`), the prompt text of a chat (`chat_prompt`), and
`ApiError`, whose `body()` is OpenAI's error shape: {"error": {message, type, param, code}}.

Parameters the server cannot honour (log probabilities, penalties, tools, a JSON response
format, unknown keys) are refused with a 400 that names them, rather than silently ignored.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

MAX_N = 8  # choices per request (they are generated as one batch)
MAX_STOP = 4  # stop sequences, as in OpenAI's API
USER, ASSISTANT, EOT = "<|user|>", "<|assistant|>", "<|endoftext|>"


class ApiError(Exception):
    """An error answered in OpenAI's shape with an HTTP status."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = (
            status,
            message,
            type,
            param,
            code,
        )

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


def unsupported(param: str, why: str = "is not supported by this server") -> ApiError:
    return ApiError(400, f"{param} {why}", param=param, code="unsupported_parameter")


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False


class _Sampling(BaseModel):
    """Fields both endpoints share. `None` means the default, as OpenAI's API treats it."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    n: int | None = Field(None, ge=1, le=MAX_N)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: str | list[str] | None) -> list[str]:
        stops = [value] if isinstance(value, str) else list(value or [])
        if len(stops) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop sequences")
        if any(not s for s in stops):
            raise ValueError("a stop sequence cannot be empty")
        return stops

    def check_supported(self) -> None:
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name) not in (None, 0):
                raise unsupported(name, "is not supported by this server (only 0)")
        if self.logit_bias:
            raise unsupported("logit_bias")

    @property
    def choices(self) -> int:
        return self.n or 1

    @property
    def stop_list(self) -> list[str]:
        return list(self.stop or [])  # the validator made it a list


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[int] | list[list[int]] = EOT
    echo: bool | None = False
    logprobs: int | None = None
    best_of: int | None = None
    suffix: str | None = None

    def check_supported(self) -> None:
        super().check_supported()
        if self.logprobs:
            raise unsupported("logprobs")
        if self.best_of not in (None, 1, self.n or 1):
            raise unsupported("best_of", "is not supported by this server (only equal to n)")
        if self.suffix:
            raise unsupported("suffix")

    def prompts(self) -> list[str | list[int]]:
        """The prompts: texts, or token id lists."""
        prompt = self.prompt
        if isinstance(prompt, str):
            return [prompt]
        if prompt and all(isinstance(p, int) for p in prompt):
            return [list(prompt)]  # type: ignore[arg-type]
        return list(prompt) or [EOT]  # type: ignore[arg-type]


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    @property
    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class ChatRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = None
    response_format: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    metadata: dict[str, str] | None = None
    store: bool | None = None

    def check_supported(self) -> None:
        super().check_supported()
        if self.logprobs or self.top_logprobs:
            raise unsupported("logprobs")
        if self.response_format and self.response_format.get("type") != "text":
            raise unsupported("response_format", "is not supported by this server (only text)")
        if self.tools or self.tool_choice not in (None, "none"):
            raise unsupported("tools")

    @property
    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


def chat_prompt(messages: list[ChatMessage], role_tokens: bool) -> str:
    """The prompt of a conversation in the fine-tuning format.

    With the role tokens in the vocabulary (our tokenizers have them): each user turn is
    `<|user|>TEXT`, each assistant turn `<|assistant|>TEXT<|endoftext|>`, and the prompt ends
    with `<|assistant|>` for the model to answer (a last assistant message is continued, not
    closed). System and developer messages go before the first user turn's text. Without the
    tokens (an imported GPT-2 tokenizer), the same turns as `User: ...` / `Assistant: ...` lines.
    """
    system = "\n\n".join(m.text for m in messages if m.role in ("system", "developer"))
    turns = [m for m in messages if m.role in ("user", "assistant")]
    if not turns:
        raise ApiError(400, "messages needs at least one user message", param="messages")
    parts: list[str] = []
    for i, message in enumerate(turns):
        text = message.text
        if message.role == "user" and system and not any(t.role == "user" for t in turns[:i]):
            text = f"{system}\n\n{text}"
        last = i == len(turns) - 1
        if role_tokens:
            if message.role == "user":
                parts.append(f"{USER}{text}")
            else:
                parts.append(f"{ASSISTANT}{text}" + ("" if last else EOT))
        else:
            prefix = "User: " if message.role == "user" else "Assistant: "
            parts.append(prefix + text + ("" if last and message.role == "assistant" else "\n"))
    if turns[-1].role == "user":
        parts.append(ASSISTANT if role_tokens else "Assistant:")
    return "".join(parts)


def parse_request(model: type[_Sampling], body: Any) -> Any:
    """Validate a JSON body; the first problem becomes a 400 naming the parameter."""
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    try:
        request = model.model_validate(body)
    except ValidationError as exc:
        error = exc.errors()[0]
        param = ".".join(str(p) for p in error["loc"]) or None
        if error["type"] == "extra_forbidden":
            message = f"Unrecognized request argument supplied: {param}"
        else:
            message = f"{param}: {error['msg']}" if param else error["msg"]
        raise ApiError(400, message, param=param, code=error["type"]) from None
    request.check_supported()
    return request
