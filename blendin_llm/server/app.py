"""The OpenAI-compatible FastAPI app of a ``BlendedLLM``: ``create_app(llm, ...)``.

Routes: ``POST /v1/chat/completions``, ``POST /v1/completions`` (JSON or server-sent events),
``GET /v1/models``, ``GET /health``, ``GET /metrics`` (Prometheus text). Concurrent requests decode
together in the engine's running batch. Every answer carries its reliability record (a top-level
``reliability`` object, in the last stream chunk too, and ``X-BlendIn-*`` headers on JSON
answers); with an audit log, the answer's record is committed before the answer's end is sent.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import (
    AuditError,
    BlendInError,
    BusyError,
    ConfigError,
    GenerationArgumentError,
    PromptError,
)
from . import protocol as P


class _Refused(Exception):
    """A request refused before it reaches the engine (auth, model, size, queue)."""

    def __init__(self, status: int, message: str, type_: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.type, self.code = status, type_, code


class _Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "blendin_requests", "Requests by route and status", ["route", "status"], registry=r
        )
        self.tokens = Counter("blendin_tokens", "Tokens by kind", ["kind"], registry=r)
        self.latency = Histogram(
            "blendin_request_seconds", "Time to the answer's end", ["route"], registry=r
        )
        self.ttft = Histogram(
            "blendin_time_to_first_token_seconds", "Time to the first streamed token", registry=r
        )
        self.interventions = Counter(
            "blendin_interventions", "Steps where a guide was consulted", registry=r
        )
        self.flagged = Counter(
            "blendin_flagged_answers", "Answers flagged as unreliable", registry=r
        )
        self.in_flight = Gauge("blendin_requests_in_flight", "Requests being answered", registry=r)
        self.queued = Gauge("blendin_queue_length", "Requests waiting for a row", registry=r)


def create_app(
    llm: Any,
    *,
    api_keys: dict[str, str] | None = None,
    audit: Any = None,
    audit_content: str = "full",
    served_name: str | None = None,
    max_queue: int | None = None,
    max_body_bytes: int = 4 * 1024 * 1024,
) -> FastAPI:
    """The OpenAI-compatible app of ``llm``.

    Args:
        llm: the ``BlendedLLM`` to serve.
        api_keys: key -> tenant; when given, every ``/v1`` route needs ``Authorization: Bearer
            <key>`` and the tenant goes to the audit record.
        audit: an ``AuditLog`` (or its URL); each answer is appended before its end is sent.
        audit_content: "full" or "hash" (request and answer stored only as SHA-256).
        served_name: the model name clients send (default: ``llm.name``).
        max_queue: most requests in flight (decoding or waiting); more get 429. Default: four
            times the engine's ``max_batch_size``.
        max_body_bytes: larger request bodies get 413.

    Returns:
        A FastAPI app; run it with uvicorn (``blendin serve`` does).
    """
    from ..audit import AuditLog

    if isinstance(audit, str):
        audit = AuditLog.open(audit, content=audit_content)
    name = served_name or llm.name
    limit = max_queue if max_queue is not None else 4 * llm.max_batch_size
    metrics = _Metrics()
    extra_ok = P.blend_fields()
    state = {"in_flight": 0}
    app = FastAPI(title="blendin-llm", description="OpenAI-compatible server of a blended model")
    app.state.llm, app.state.audit, app.state.metrics = llm, audit, metrics

    def error(status: int, message: str, type_: str, code: str | None = None) -> JSONResponse:
        return JSONResponse(P.error_body(message, type_, code), status_code=status)

    @app.exception_handler(_Refused)
    async def refused(_: Request, exc: _Refused) -> JSONResponse:
        return error(exc.status, str(exc), exc.type, exc.code)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error(400, f"invalid request: {exc.errors()}", "invalid_request_error")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error(exc.status_code, str(exc.detail), "invalid_request_error")

    @app.exception_handler(BlendInError)
    async def engine_error(_: Request, exc: BlendInError) -> JSONResponse:
        if isinstance(exc, BusyError):
            return error(503, str(exc), "server_busy", "busy")
        if isinstance(exc, AuditError):
            return error(503, f"the answer could not be recorded: {exc}", "audit_error")
        if isinstance(exc, (PromptError, GenerationArgumentError, ConfigError)):
            return error(400, str(exc), "invalid_request_error")
        return error(500, str(exc), "server_error")

    def tenant_of(request: Request) -> str | None:
        if not api_keys:
            return None
        auth = request.headers.get("authorization", "")
        key = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
        if key not in api_keys:
            raise _Refused(
                401,
                "missing or wrong API key: send 'Authorization: Bearer <key>'",
                "invalid_request_error",
                "invalid_api_key",
            )
        return api_keys[key]

    async def read_body(request: Request) -> dict:
        size = request.headers.get("content-length")
        if size is not None and size.isdigit() and int(size) > max_body_bytes:
            raise _Refused(
                413,
                f"request body over {max_body_bytes} bytes",
                "invalid_request_error",
                "body_too_large",
            )
        raw = await request.body()
        if len(raw) > max_body_bytes:
            raise _Refused(
                413,
                f"request body over {max_body_bytes} bytes",
                "invalid_request_error",
                "body_too_large",
            )
        try:
            body = json.loads(raw)
        except ValueError as e:
            raise _Refused(400, f"the body is not JSON: {e}", "invalid_request_error") from None
        if not isinstance(body, dict):
            raise _Refused(400, "the body must be a JSON object", "invalid_request_error")
        model = body.get("model")
        if model is not None and model != name:
            raise _Refused(
                404,
                f"model {model!r} is not served here; this server serves {name!r} (GET /v1/models)",
                "invalid_request_error",
                "model_not_found",
            )
        return body

    def admit() -> None:
        if state["in_flight"] >= limit:
            raise _Refused(
                429,
                f"{state['in_flight']} requests in flight (limit {limit}); retry shortly",
                "rate_limit_error",
                "queue_full",
            )
        state["in_flight"] += 1
        metrics.in_flight.set(state["in_flight"])

    def release() -> None:
        state["in_flight"] -= 1
        metrics.in_flight.set(state["in_flight"])
        metrics.queued.set(llm.scheduler.queued)

    def record(
        rid: str,
        config: Any,
        request: dict,
        result: Any,
        t0: float,
        tenant: str | None,
        user: str | None,
    ) -> None:
        """The answer's audit record, committed before its end is sent."""
        if audit is not None:
            from ..audit import make_entry

            audit.append(
                make_entry(
                    id=rid,
                    llm=llm,
                    config=config,
                    request=request,
                    result=result,
                    latency_s=time.perf_counter() - t0,
                    tenant=tenant,
                    user=user,
                    content=audit.content,
                )
            )
        rel = result.reliability
        metrics.tokens.labels("prompt").inc(result.usage.prompt_tokens)
        metrics.tokens.labels("completion").inc(result.usage.completion_tokens)
        metrics.interventions.inc(rel.interventions)
        if rel.flagged:
            metrics.flagged.inc()

    async def answer(request: Request, route: str) -> Response:
        t0 = time.perf_counter()
        tenant = tenant_of(request)
        body = await read_body(request)
        chat = route == "chat"
        if chat:
            prompt: Any = P.chat_messages(body.get("messages"))
        else:  # a completion continues the prompt as it is (no template), text or token ids
            prompt = P.completion_prompt(body.get("prompt"))
        kw = P.call_kwargs(body, extra_ok)
        overrides = {k: kw[k] for k in extra_ok if k in kw}
        config = llm.check_options(**overrides)  # the effective config, for the audit record
        want_lp = bool(kw.get("logprobs"))
        rid = P.new_id("chatcmpl" if chat else "cmpl")
        req_record = {
            ("messages" if chat else "prompt"): prompt if chat else prompt.as_record(),
            "params": {k: v for k, v in body.items() if k not in ("messages", "prompt")},
        }
        user = body.get("user") if isinstance(body.get("user"), str) else None
        admit()
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            events = llm.astream(prompt, **kw)
            try:  # the arguments are checked before the response starts
                first = await events.__anext__()
            except BaseException:
                release()
                await events.aclose()
                raise
            return StreamingResponse(
                _sse(
                    first,
                    events,
                    chat,
                    rid,
                    name,
                    want_lp,
                    include_usage,
                    metrics,
                    t0,
                    lambda res: record(rid, config, req_record, res, t0, tenant, user),
                    release,
                    route,
                    bool(body.get("return_tokens_as_token_ids")),
                ),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        try:
            result = await llm.agenerate(prompt, **kw)
            await asyncio.to_thread(record, rid, config, req_record, result, t0, tenant, user)
        finally:
            release()
        metrics.latency.labels(route).observe(time.perf_counter() - t0)
        metrics.requests.labels(route, "200").inc()
        if chat:
            data = P.chat_completion(rid, name, result, want_lp)
        else:
            data = P.text_completion(
                rid, name, result, want_lp, bool(body.get("return_tokens_as_token_ids"))
            )
        rel = result.reliability
        return JSONResponse(
            data,
            headers={
                "X-BlendIn-Reliability-Score": f"{rel.score:.4f}",
                "X-BlendIn-Flagged": "true" if rel.flagged else "false",
            },
        )

    @app.middleware("http")
    async def count_errors(request: Request, call_next: Any) -> Response:
        response = await call_next(request)
        if response.status_code >= 400 and request.url.path.startswith("/v1/"):
            route = "chat" if "chat" in request.url.path else "completions"
            metrics.requests.labels(route, str(response.status_code)).inc()
        return response

    def documented(route: str) -> dict[str, Any]:  # the request body's schema, for /docs
        schema = P.request_schema(route)
        return {
            "requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}
        }

    @app.post("/v1/chat/completions", openapi_extra=documented("chat"))
    async def chat_completions(request: Request) -> Response:
        return await answer(request, "chat")

    @app.post("/v1/completions", openapi_extra=documented("completions"))
    async def completions(request: Request) -> Response:
        return await answer(request, "completions")

    @app.get("/v1/models")
    async def models(request: Request) -> dict:
        tenant_of(request)
        return {
            "object": "list",
            "data": [
                {
                    "id": name,
                    "object": "model",
                    "created": 0,
                    "owned_by": "blendin",
                    "max_model_len": llm.context_window,
                }
            ],
        }

    @app.get("/health")
    async def health() -> dict:
        return {
            "status": "ok",
            "model": name,
            "running": llm.scheduler.running,
            "queued": llm.scheduler.queued,
            "in_flight": state["in_flight"],
        }

    @app.get("/metrics")
    async def prometheus() -> Response:
        metrics.queued.set(llm.scheduler.queued)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


async def _sse(
    first: Any,
    events: AsyncGenerator[Any, None],
    chat: bool,
    rid: str,
    name: str,
    want_lp: bool,
    include_usage: bool,
    metrics: _Metrics,
    t0: float,
    record: Any,
    release: Any,
    route: str,
    token_ids: bool = False,
) -> AsyncIterator[bytes]:
    """The answer as server-sent events; the audit record is committed before the last chunk.
    A client that goes away cancels this generator, which closes the engine's stream and frees
    its row at the next step."""

    def sse(obj: dict) -> bytes:
        return f"data: {json.dumps(obj)}\n\n".encode()

    try:
        if chat:
            yield sse(P.chat_chunk(rid, name, {"role": "assistant", "content": ""}))
        event, seen_first = first, False
        while True:
            if event.done:
                result = event.result
                await asyncio.to_thread(record, result)
                rel = result.reliability.model_dump(mode="json")
                if chat:
                    delta = {"content": event.text} if event.text else {}
                    if result.tool_calls:
                        delta["tool_calls"] = [
                            dict(c, index=i) for i, c in enumerate(P.tool_calls(result))
                        ]
                    yield sse(P.chat_chunk(rid, name, delta, result.finish_reason, reliability=rel))
                else:
                    yield sse(
                        P.completion_chunk(
                            rid, name, event.text, result.finish_reason, reliability=rel
                        )
                    )
                if include_usage:
                    chunk = (
                        P.chat_chunk(rid, name, {}) if chat else P.completion_chunk(rid, name, "")
                    )
                    chunk["choices"] = []
                    chunk["usage"] = P.usage(result)
                    yield sse(chunk)
                yield b"data: [DONE]\n\n"
                metrics.latency.labels(route).observe(time.perf_counter() - t0)
                metrics.requests.labels(route, "200").inc()
                return
            if event.text or (want_lp and event.logprob is not None):
                if not seen_first:
                    metrics.ttft.observe(time.perf_counter() - t0)
                    seen_first = True
                if chat:
                    yield sse(
                        P.chat_chunk(
                            rid,
                            name,
                            {"content": event.text},
                            logprob=event.logprob if want_lp else None,
                        )
                    )
                else:
                    yield sse(
                        P.completion_chunk(
                            rid,
                            name,
                            event.text,
                            logprobs=P.completion_logprobs([event.logprob], token_ids)
                            if want_lp and event.logprob
                            else None,
                        )
                    )
            event = await events.__anext__()
    except BlendInError as exc:  # after the response started: an error event, then the end
        yield sse(
            P.error_body(
                str(exc), "server_error" if isinstance(exc, AuditError) else "invalid_request_error"
            )
        )
        yield b"data: [DONE]\n\n"
    finally:
        release()
        await events.aclose()
