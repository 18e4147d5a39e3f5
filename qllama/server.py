"""`qllama serve`: an OpenAI-compatible HTTP server (Starlette on uvicorn) over one loaded model.

Endpoints: GET /health, GET /v1/models, POST /v1/completions, POST /v1/chat/completions (each with
"stream": true as server-sent events ending in `data: [DONE]`). Requests decode together in the
batching scheduler (qllama/batching.py); a client that goes away frees its slot at the next step.
The "model" field may name anything (as llama.cpp's server accepts): there is one model.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request as HttpRequest
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from .batching import Request, Scheduler
from .chat_format import ChatFormat
from .chat_template import naming_template
from .errors import QllamaError
from .openai_request import RequestError, chat_messages, completion_prompt, generation

MAX_BODY = 4 << 20          # bytes: a whole context of text is far less
POLL_S = 0.25               # how often a non-streamed request looks whether its client is still there


def error_response(e: RequestError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status)


async def read_json(request: HttpRequest) -> dict:
    size = request.headers.get("content-length")
    if size is not None and (not size.isdigit() or int(size) > MAX_BODY):
        raise RequestError(f"the request body is over {MAX_BODY} bytes", status=413)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            raise RequestError(f"the request body is over {MAX_BODY} bytes", status=413)
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RequestError(f"the body is not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise RequestError("the body must be a JSON object")
    return data


class Server:
    def __init__(self, model, name: str, slots: int = 4, api_key: str | None = None):
        self.model, self.name, self.api_key = model, name, api_key
        self.scheduler = Scheduler(model, slots)
        with naming_template(model.checkpoint.path):
            self.chat_format = ChatFormat(model) if model.chat_template is not None else None
        self.created = int(time.time())

    # -- endpoints -------------------------------------------------------------------------------
    async def health(self, request: HttpRequest) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def models(self, request: HttpRequest) -> JSONResponse:
        return JSONResponse({"object": "list", "data": [
            {"id": self.name, "object": "model", "created": self.created, "owned_by": "qllama"}]})

    async def completions(self, request: HttpRequest):
        body = await read_json(request)
        ids = completion_prompt(body, self.model.tokenizer)
        return await self.respond(request, generation(body, ids, self.scheduler.ctx), chat=False)

    async def chat_completions(self, request: HttpRequest):
        body = await read_json(request)
        if self.chat_format is None:
            raise RequestError("the model has no chat template; use /v1/completions")
        messages = chat_messages(body)
        try:
            ids = self.chat_format.prompt_ids(messages)
        except QllamaError as e:
            raise RequestError(str(e), "messages") from None
        gen = generation(body, ids, self.scheduler.ctx)
        gen.stop += self.chat_format.stop_strings
        return await self.respond(request, gen, chat=True)

    # -- one generation --------------------------------------------------------------------------
    async def respond(self, request: HttpRequest, gen, chat: bool):
        loop, queue = asyncio.get_running_loop(), asyncio.Queue()
        job = Request(gen.ids, gen.max_tokens, gen.params,
                      on_piece=lambda piece: loop.call_soon_threadsafe(queue.put_nowait, piece),
                      on_done=lambda r: loop.call_soon_threadsafe(queue.put_nowait, None), stop=gen.stop)
        self.scheduler.submit(job)
        reply = Reply(self.name, chat, job)
        if gen.stream:
            return StreamingResponse(self.events(queue, job, reply, gen.include_usage), media_type="text/event-stream")
        try:
            text = []
            while (piece := await self.next_piece(request, queue, job)) is not None:
                text.append(piece)
        finally:
            self.cancel(job)
        if job.error:
            return JSONResponse(RequestError(job.error, status=500, kind="server_error").body(), status_code=500)
        return JSONResponse(reply.whole("".join(text)))

    async def next_piece(self, request: HttpRequest, queue: asyncio.Queue, job: Request):
        while True:
            try:
                return await asyncio.wait_for(queue.get(), POLL_S)
            except asyncio.TimeoutError:
                if await request.is_disconnected():
                    self.cancel(job)

    async def events(self, queue: asyncio.Queue, job: Request, reply: "Reply", include_usage: bool):
        try:
            if reply.chat:
                yield sse(reply.chunk(role=True))
            while (piece := await queue.get()) is not None:
                yield sse(reply.chunk(piece))
            if job.error:
                yield sse(RequestError(job.error, status=500, kind="server_error").body())
            else:
                yield sse(reply.chunk(finish=True))
                if include_usage:
                    yield sse(reply.usage_chunk())
            yield "data: [DONE]\n\n"
        finally:                        # also when the client went away: its slot is freed at once
            self.cancel(job)

    def cancel(self, job: Request) -> None:
        if job.finish_reason is None and job.error is None:
            job.cancel.set()
            self.scheduler.wake()

    # -- the app -----------------------------------------------------------------------------------
    def app(self) -> Starlette:
        def checked(handler, public: bool = False):
            async def endpoint(request: HttpRequest):
                try:
                    if not public and self.api_key is not None:
                        auth = request.headers.get("authorization", "")
                        if not secrets.compare_digest(auth.encode(), f"Bearer {self.api_key}".encode()):
                            raise RequestError("a valid API key is needed (Authorization: Bearer KEY)", status=401,
                                               kind="authentication_error", code="invalid_api_key")
                    return await handler(request)
                except RequestError as e:
                    return error_response(e)
            return endpoint

        async def http_error(request, exc: HTTPException):
            kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
            message = f"{request.method} {request.url.path}: {exc.detail}"
            return error_response(RequestError(message, status=exc.status_code, kind=kind))

        routes = [Route("/health", checked(self.health, public=True)),
                  Route("/v1/models", checked(self.models)),
                  Route("/v1/completions", checked(self.completions), methods=["POST"]),
                  Route("/v1/chat/completions", checked(self.chat_completions), methods=["POST"])]
        @contextlib.asynccontextmanager
        async def lifespan(app):
            yield
            self.scheduler.close()

        return Starlette(routes=routes, exception_handlers={HTTPException: http_error}, lifespan=lifespan)


def sse(data: dict) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


class Reply:
    """The OpenAI response objects of one request, whole or in chunks."""

    def __init__(self, model: str, chat: bool, job: Request):
        self.model, self.chat, self.job = model, chat, job
        self.id = ("chatcmpl-" if chat else "cmpl-") + secrets.token_hex(12)
        self.created = int(time.time())

    def _wrap(self, choice: dict, chunk: bool) -> dict:
        kind = ("chat.completion" + (".chunk" if chunk else "")) if self.chat else "text_completion"
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model,
                "choices": [{"index": 0, **choice}]}

    def usage(self) -> dict:
        j = self.job
        return {"prompt_tokens": j.prompt_tokens, "completion_tokens": j.completion_tokens,
                "total_tokens": j.prompt_tokens + j.completion_tokens}

    def whole(self, text: str) -> dict:
        content = {"message": {"role": "assistant", "content": text}} if self.chat else {"text": text, "logprobs": None}
        return {**self._wrap({**content, "finish_reason": self.job.finish_reason}, chunk=False), "usage": self.usage()}

    def chunk(self, piece: str = "", role: bool = False, finish: bool = False) -> dict:
        if self.chat:
            delta = {"role": "assistant", "content": ""} if role else ({} if finish else {"content": piece})
            choice = {"delta": delta}
        else:
            choice = {"text": piece, "logprobs": None}
        return self._wrap({**choice, "finish_reason": self.job.finish_reason if finish else None}, chunk=True)

    def usage_chunk(self) -> dict:
        return {**self._wrap({}, chunk=True), "choices": [], "usage": self.usage()}


def serve(model, name: str, host: str, port: int, slots: int, api_key: str | None) -> None:
    import uvicorn
    server = Server(model, name, slots, api_key)
    print(f"qllama serving {name} on http://{host}:{port}/v1 ({slots} slots)", flush=True)
    uvicorn.run(server.app(), host=host, port=port, log_level="warning")
