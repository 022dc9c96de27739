"""The FastAPI application of `llmpipe serve-model`, and `run_server` to start it with uvicorn.

In: a `ModelSet` (the served models), an `Admission` (the bounded queue), how often to follow
the aliases, and the admin token. Out: the routes

  GET  /                       the try-it page (page.html): presets, champion and challenger
  GET  /ui/presets             the page's presets, in the fine-tuning prompt formats
  GET  /v1/models[/{id}]       the served models, with the version each one serves now
  POST /v1/completions         OpenAI completions (stream: true -> server-sent events)
  POST /v1/chat/completions    OpenAI chat completions in the `<|user|>...<|assistant|>` format
  GET  /healthz                versions, queue counts, the last alias check
  POST /admin/reload           check the aliases now (Authorization: Bearer $LLMPIPE_SERVE_ADMIN_TOKEN)

Generation runs in a thread pool of `concurrency` threads, entered through the admission queue;
a request holds its place until its generation thread is done, also when its client has gone.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse

from pipeline.serve.admission import Admission, QueueFull
from pipeline.serve.generation import Choice, Sampling, generate
from pipeline.serve.models import LoadedModel, ModelRef, ModelSet, ServedModel
from pipeline.serve.page import PAGE, presets
from pipeline.serve.protocol import (
    EOT,
    USER,
    ApiError,
    ChatRequest,
    CompletionRequest,
    chat_prompt,
    parse_request,
)

log = logging.getLogger("llmpipe.serve")
ADMIN_TOKEN_ENV = "LLMPIPE_SERVE_ADMIN_TOKEN"
COMPLETION_DEFAULT_TOKENS = 16  # OpenAI's default max_tokens for completions


def _fingerprint(served: ServedModel, loaded: LoadedModel) -> str:
    """`system_fingerprint`: which version answered (NAME/v3), so clients can tell."""
    if loaded.version is None:
        return f"folder/{served.ref.model_id}"
    return f"{served.ref.name}/v{loaded.version}"


def _sse(data: dict[str, Any] | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"


class Server:
    """The state behind the routes: models, admission, generation threads."""

    def __init__(
        self,
        models: ModelSet,
        admission: Admission,
        poll_seconds: float | None = 30.0,
        admin_token: str | None = None,
        default_max_tokens: int = 256,
    ):
        self.models = models
        self.admission = admission
        self.poll_seconds = poll_seconds
        self.admin_token = admin_token
        self.default_max_tokens = default_max_tokens
        self.threads = ThreadPoolExecutor(admission.concurrency, thread_name_prefix="generate")

    # ---------------------------------------------------------------------------- requests

    def served(self, model_id: str) -> ServedModel:
        served = self.models.get(model_id)
        if served is None:
            known = ", ".join(self.models.models)
            raise ApiError(
                404,
                f"The model `{model_id}` does not exist on this server (it serves: {known})",
                param="model",
                code="model_not_found",
            )
        return served

    def encode(self, loaded: LoadedModel, prompt: str | list[int]) -> list[int]:
        if isinstance(prompt, list):
            vocab = loaded.tokenizer.get_vocab_size()
            if any(not 0 <= t < vocab for t in prompt):
                raise ApiError(400, f"prompt token ids must be in [0, {vocab})", param="prompt")
            return prompt or [loaded.tokenizer.token_to_id(EOT)]
        ids = loaded.tokenizer.encode(prompt).ids
        return ids or [loaded.tokenizer.token_to_id(EOT)]  # "": a new document

    def token_budget(
        self, loaded: LoadedModel, prompt_ids: list[list[int]], asked: int | None, param: str
    ) -> int:
        """max_tokens for these prompts; a 400 when they and the completion do not fit."""
        longest = max(len(ids) for ids in prompt_ids)
        room = loaded.block_size - longest
        tokens = asked or min(self.default_max_tokens, room)
        if tokens > room or room < 1:
            raise ApiError(
                400,
                f"This model's maximum context length is {loaded.block_size} tokens. However, "
                f"you requested {longest + tokens} tokens ({longest} in the {param}, {tokens} "
                f"in the completion). Please reduce the length of the {param} or completion.",
                param=param,
                code="context_length_exceeded",
            )
        return tokens

    async def run(
        self,
        loaded: LoadedModel,
        prompts: list[list[int]],
        sampling: Sampling,
        on_delta: Callable[[int, str], None] | None = None,
        cancelled: threading.Event | None = None,
    ) -> asyncio.Future:
        """Start generating (after a place in the queue); returns the future of the choices.

        Choice indexes run over the prompts: prompt p's choices are p*n .. p*n + n - 1.
        """
        try:
            await self.admission.enter()
        except QueueFull as exc:
            raise ApiError(429, str(exc), type="requests", code="rate_limit_exceeded") from None
        stop = cancelled or threading.Event()

        def work() -> list[Choice]:
            choices = []
            for p, ids in enumerate(prompts):
                offset = p * sampling.n

                def shifted(i: int, text: str, offset: int = offset) -> None:
                    if on_delta is not None:
                        on_delta(offset + i, text)

                for choice in generate(loaded, ids, sampling, shifted, stop.is_set):
                    choice.index += offset
                    choices.append(choice)
            return choices

        try:
            future = asyncio.get_running_loop().run_in_executor(self.threads, work)
        except BaseException:
            self.admission.leave()
            raise
        future.add_done_callback(lambda _: self.admission.leave())
        return future

    def sampling(self, request: Any, max_tokens: int, stop_tokens: tuple[str, ...] = ()):
        return Sampling(
            max_tokens=max_tokens,
            temperature=1.0 if request.temperature is None else request.temperature,
            top_p=1.0 if request.top_p is None else request.top_p,
            n=request.choices,
            stop=tuple(request.stop_list),
            seed=request.seed,
            stop_tokens=stop_tokens,
        )

    async def respond(
        self,
        request: Any,
        served: ServedModel,
        loaded: LoadedModel,
        prompts: list[list[int]],
        sampling: Sampling,
        chat: bool,
        echo: list[str] | None = None,
    ) -> Any:
        """The whole answer as JSON, or a stream of server-sent events."""
        kind = "chat.completion" if chat else "text_completion"
        head = {
            "id": ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex,
            "created": int(time.time()),
            "model": served.ref.model_id,
            "system_fingerprint": _fingerprint(served, loaded),
        }
        prompt_tokens = sum(len(ids) for ids in prompts)
        headers = {"x-llmpipe-model-version": str(loaded.version or "")}

        def usage(choices: list[Choice]) -> dict[str, int]:
            completion = sum(c.tokens for c in choices)
            return {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion,
                "total_tokens": prompt_tokens + completion,
            }

        def prefix(index: int) -> str:
            return echo[index // sampling.n] if echo else ""

        if not request.stream:
            future = await self.run(loaded, prompts, sampling)
            choices = await asyncio.shield(future)  # a cancelled request still lets it finish
            if chat:
                rows = [
                    {
                        "index": c.index,
                        "message": {"role": "assistant", "content": c.text},
                        "logprobs": None,
                        "finish_reason": c.finish_reason,
                    }
                    for c in choices
                ]
            else:
                rows = [
                    {
                        "index": c.index,
                        "text": prefix(c.index) + c.text,
                        "logprobs": None,
                        "finish_reason": c.finish_reason,
                    }
                    for c in choices
                ]
            body = {**head, "object": kind, "choices": rows, "usage": usage(choices)}
            return JSONResponse(body, headers=headers)

        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        cancelled = threading.Event()

        def on_delta(index: int, text: str) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, (index, text))

        future = await self.run(loaded, prompts, sampling, on_delta, cancelled)
        future.add_done_callback(lambda _: queue.put_nowait(None))
        chunk_kind = "chat.completion.chunk" if chat else "text_completion"
        include_usage = bool(request.stream_options and request.stream_options.include_usage)

        def chunk(index: int, text: str | None, finish: str | None = None) -> dict[str, Any]:
            if chat:
                delta = {} if text is None else {"content": text}
                row = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
            else:
                row = {
                    "index": index,
                    "text": text or "",
                    "logprobs": None,
                    "finish_reason": finish,
                }
            return {**head, "object": chunk_kind, "choices": [row]}

        async def events() -> AsyncIterator[str]:
            try:
                count = len(prompts) * sampling.n
                for index in range(count):  # the role first (chat), or the echoed prompt
                    if chat:
                        first = chunk(index, "")
                        first["choices"][0]["delta"] = {"role": "assistant", "content": ""}
                        yield _sse(first)
                    elif prefix(index):
                        yield _sse(chunk(index, prefix(index)))
                while (item := await queue.get()) is not None:
                    yield _sse(chunk(*item))
                error = future.exception()
                if error is not None:
                    log.exception("generation failed", exc_info=error)
                    yield _sse(ApiError(500, str(error), type="server_error").body())
                    return
                choices = future.result()
                for c in choices:
                    yield _sse(chunk(c.index, None if chat else "", c.finish_reason))
                if include_usage:
                    yield _sse(
                        {**head, "object": chunk_kind, "choices": [], "usage": usage(choices)}
                    )
                yield _sse("[DONE]")
            finally:
                cancelled.set()  # the client went away: stop generating at the next token

        return StreamingResponse(
            events(),
            media_type="text/event-stream",
            headers={**headers, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    async def completions(self, body: Any) -> Any:
        request: CompletionRequest = parse_request(CompletionRequest, body)
        served = self.served(request.model)
        loaded = served.current  # this request's model to its end, whatever reloads meanwhile
        raw = request.prompts()
        prompts = [self.encode(loaded, p) for p in raw]
        tokens = self.token_budget(
            loaded, prompts, request.max_tokens or COMPLETION_DEFAULT_TOKENS, "prompt"
        )
        echo = None
        if request.echo:
            echo = [p if isinstance(p, str) else loaded.tokenizer.decode(p) for p in raw]
        sampling = self.sampling(request, tokens)
        return await self.respond(request, served, loaded, prompts, sampling, False, echo)

    async def chat(self, body: Any) -> Any:
        request: ChatRequest = parse_request(ChatRequest, body)
        served = self.served(request.model)
        loaded = served.current
        text = chat_prompt(request.messages, loaded.role_tokens)
        prompts = [self.encode(loaded, text)]
        tokens = self.token_budget(loaded, prompts, request.token_limit, "messages")
        sampling = self.sampling(request, tokens, stop_tokens=(USER,))
        return await self.respond(request, served, loaded, prompts, sampling, True)

    # ------------------------------------------------------------------------------ models

    def model_card(self, model_id: str, served: ServedModel) -> dict[str, Any]:
        loaded = served.current
        return {
            "id": model_id,
            "object": "model",
            "created": loaded.created,
            "owned_by": "llmpipe",
            "uri": served.ref.uri,
            "version": loaded.version,
            "source": loaded.source,
            "context_length": loaded.block_size,
            "chat_template": "<|user|>...<|assistant|>"
            if loaded.role_tokens
            else "User:/Assistant:",
        }

    async def reload(self) -> list[str]:
        try:
            changed = await asyncio.get_running_loop().run_in_executor(None, self.models.refresh)
        except Exception as exc:
            raise ApiError(
                503, f"could not check the registry: {exc}", type="server_error"
            ) from exc
        for model_id in changed:
            log.info("%s now serves %s", model_id, self.models.models[model_id].current.source)
        return changed

    async def follow_aliases(self) -> None:
        """Check the aliases every `poll_seconds`; a failed check keeps the current models."""
        while True:
            await asyncio.sleep(self.poll_seconds or 0)
            try:
                await self.reload()
            except ApiError as exc:
                log.warning("alias check failed; still serving the loaded versions: %s", exc)

    def check_admin(self, authorization: str | None) -> None:
        if not self.admin_token:
            raise ApiError(
                403,
                f"/admin/reload is off: start the server with {ADMIN_TOKEN_ENV} set",
                type="permission_error",
            )
        if not hmac.compare_digest(f"Bearer {self.admin_token}", authorization or ""):
            raise ApiError(
                401, "a valid admin token is needed (Authorization: Bearer ...)",
                type="authentication_error", code="invalid_api_key",
            )  # fmt: skip


def create_app(server: Server) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        follower = None
        if server.poll_seconds and any(s.ref.alias for s in server.models.models.values()):
            follower = asyncio.create_task(server.follow_aliases())
        yield
        if follower is not None:
            follower.cancel()
        server.threads.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="llmpipe serve-model", lifespan=lifespan, docs_url="/docs")
    app.state.server = server

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        headers = {"Retry-After": "1"} if exc.status == 429 else None
        return JSONResponse(exc.body(), status_code=exc.status, headers=headers)

    @app.exception_handler(Exception)
    async def server_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("request failed", exc_info=exc)
        body = ApiError(500, f"{type(exc).__name__}: {exc}", type="server_error").body()
        return JSONResponse(body, status_code=500)

    async def body_of(request: Request) -> Any:
        try:
            return await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ApiError(400, f"the request body is not valid JSON: {exc}") from None

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        return await server.completions(await body_of(request))

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        return await server.chat(await body_of(request))

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        data = [server.model_card(i, s) for i, s in server.models.models.items()]
        return {"object": "list", "data": data}

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str) -> dict[str, Any]:
        return server.model_card(model_id, server.served(model_id))

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        models = server.models
        return {
            "status": "ok",
            "models": models.describe(),
            "queue": server.admission.stats(),
            "follow_aliases_every_seconds": server.poll_seconds,
            "last_alias_check": models.last_refresh,
            "last_alias_check_error": models.last_error,
        }

    @app.post("/admin/reload")
    async def reload(request: Request) -> dict[str, Any]:
        server.check_admin(request.headers.get("authorization"))
        changed = await server.reload()
        return {"changed": changed, "models": server.models.describe()}

    @app.get("/ui/presets")
    async def ui_presets() -> list[dict[str, str]]:
        return presets()

    @app.get("/", response_class=HTMLResponse)
    async def page() -> str:
        return PAGE.read_text(encoding="utf-8")

    return app


def model_refs(model: str, compare: list[str]) -> list[ModelRef]:
    """The served refs: the model, then each compared alias of the same registered model."""
    ref = ModelRef.parse(model)
    refs = [ref]
    for alias in compare:
        if ref.name is None:
            raise ValueError("--compare needs a registered model URI (models:/NAME@ALIAS)")
        other = ref.with_alias(alias)
        if other.model_id != ref.model_id:
            refs.append(other)
    return refs


def build_server(
    model: str,
    tracking_uri: str | None,
    compare: list[str] | None = None,
    concurrency: int = 2,
    queue: int = 16,
    poll_seconds: float | None = 30.0,
    admin_token: str | None = None,
    device: str = "auto",
    default_max_tokens: int = 256,
) -> Server:
    """Load the models (a compared alias that does not exist is skipped, with a warning)."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    refs = model_refs(model, compare or [])
    kept = [refs[0]]
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    for ref in refs[1:]:
        try:
            client.get_model_version_by_alias(ref.name, ref.alias)
            kept.append(ref)
        except MlflowException as exc:
            log.warning("not serving %s: %s", ref.uri, exc)
    models = ModelSet(kept, tracking_uri, device)
    return Server(
        models, Admission(concurrency, queue), poll_seconds, admin_token, default_max_tokens
    )


def run_server(server: Server, host: str = "127.0.0.1", port: int = 8000) -> None:
    import uvicorn

    uvicorn.run(
        create_app(server),
        host=host,
        port=port,
        log_level="info",
        timeout_graceful_shutdown=30,  # requests in flight finish on SIGTERM / Ctrl-C
    )
