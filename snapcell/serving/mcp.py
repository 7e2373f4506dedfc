"""snapcell as an MCP (Model Context Protocol) tool server, on the official `mcp` SDK (the
`mcp` extra): `snapcell mcp` over stdio, and `/mcp` of `snapcell serve` (streamable HTTP,
behind the service's API keys). docs/serving.md, "MCP".

The tools run code in fresh sandboxes (`CodePool`) or in code contexts (`ContextService`): the
same machinery as `/v1/run` and `/v1/contexts`, with the same limits."""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError

from .._version import __version__
from ..code import LANGUAGES
from ..code.contexts import ContextNotFound
from ..errors import ArgumentError, SnapcellError
from .code import CodePool, CodeResult
from .contexts import ContextService

TenantOf = Callable[[Mapping[str, str] | None], str]

INSTRUCTIONS = """\
snapcell runs code in hardware-isolated micro-VM sandboxes (KVM). Use run_code for one-off
computations; for a multi-step task create a context (create_context) and pass its
context_id to run_code: variables, imports, functions and files under /tmp persist between
runs of a context, across server restarts. The sandboxes have no network and no access to the
host's files; Python has its standard library only (no pip packages). The value of the last
expression is returned as JSON, with stdout, stderr, the error (type, message, line), the
files the run wrote under /tmp and rich displays (objects with _repr_png_/_repr_html_/...,
and display(obj))."""


@contextlib.contextmanager
def _tool_errors() -> Iterator[None]:
    """Anticipated failures become the tool's error message (the model sees it)."""
    try:
        yield
    except ContextNotFound as e:
        raise ToolError(f"{e}; create one with create_context") from None
    except FileNotFoundError as e:
        raise ToolError(f"no file {str(e)!r} under /tmp") from None
    except SnapcellError as e:
        raise ToolError(f"{type(e).__name__}: {e}") from None


def _result(r: Any) -> dict[str, Any]:
    out = (r if isinstance(r, CodeResult) else CodeResult.of(r)).to_json()
    if not out["files"]:
        del out["files"]
    if not out["display"]:
        del out["display"]
    return out


RUN_DESCRIPTION = (
    "Run code and return its result as JSON: value (the last expression), stdout, stderr, "
    "error (null, or {type, message, stack, line}), files written under /tmp, display (rich "
    "outputs as MIME bundles) and duration_ms. language: 'python' (CPython 3.11, standard "
    "library only, no pip packages), 'js' (QuickJS, ES2023, no Node or browser APIs) or 'lua' "
    "(5.4). Without context_id every run starts from a fresh interpreter; with a context_id "
    "from create_context, state (variables, imports, files) persists from run to run. "
    "timeout: seconds (default 10, capped by the server). No network access. A run that "
    "times out resets the context to its last saved state.")


def build_server(pool: CodePool, contexts: ContextService, tenant_of: TenantOf,
                 timeout_of: Callable[[float | None], float]) -> MCPServer:
    """The MCP server: its tools run code on `pool` (fresh sandboxes) and `contexts`; the
    tenant of a call comes from `tenant_of(request headers)` (None over stdio) and its time
    limit from `timeout_of(requested)`."""
    server = MCPServer(name="snapcell", version=__version__, instructions=INSTRUCTIONS)

    def tenant(ctx: Context) -> str:
        try:
            request = ctx.request_context.request      # the HTTP request; None over stdio
            return tenant_of(getattr(request, "headers", None))
        except Exception as e:      # noqa: BLE001 (an invalid key: the tool's error)
            raise ToolError(str(e)) from None

    def languages() -> tuple[str, ...]:
        backend = pool.backend
        return backend.languages if backend is not None else ()

    @server.tool(description=RUN_DESCRIPTION)
    async def run_code(language: str, code: str, context_id: str | None = None,
                       timeout: float | None = None,
                       ctx: Context = None,  # type: ignore[assignment]
                       ) -> dict[str, Any]:
        who = tenant(ctx)
        lang = _canonical(language)
        with _tool_errors():
            limit = timeout_of(timeout)
            r: Any
            if context_id:
                desc = await asyncio.to_thread(contexts.describe, context_id, who)
                if desc["lang"] != lang:
                    raise ToolError(f"context {context_id} runs {desc['lang']}, not {language}")
                r = await contexts.run(context_id, who, code, timeout=limit)
            else:
                if lang not in languages():
                    raise ToolError(f"unknown language {language!r}; this server runs "
                                    + ", ".join(languages()))
                r = await pool.run(code, lang=lang, timeout=limit)
            return _result(r)

    return _register_context_tools(server, contexts, tenant, languages)


def _canonical(language: str) -> str:
    from ..code import language as lookup
    try:
        return lookup(language).name
    except SnapcellError:
        return language


def _register_context_tools(server: MCPServer, contexts: ContextService,
                            tenant: Callable[[Context], str],
                            languages: Callable[[], tuple[str, ...]]) -> MCPServer:
    images = ", ".join(name for name, _ in contexts.options.images)
    @server.tool(description=(
        "Create a code context: a persistent interpreter session (like a Jupyter kernel) for "
        "a multi-step task. Returns {id, lang, ...}; pass the id as context_id to run_code, "
        "upload_file, download_file and reset_context. Contexts survive server restarts and "
        "are deleted after a long idle period; each API key has a limited number of them."
        + (f" For Python, image may name a package image with more installed: {images} "
           "(omit it for the standard library only)." if images else "")))
    async def create_context(language: str, image: str | None = None,
                             ctx: Context = None,  # type: ignore[assignment]
                             ) -> dict[str, Any]:
        with _tool_errors():
            c = await contexts.create(_canonical(language), tenant(ctx), image)
            return c.describe()

    @server.tool(description=(
        "Reset a code context to a fresh interpreter: every variable, import and file under "
        "/tmp is forgotten; the context id stays valid."))
    async def reset_context(context_id: str, ctx: Context = None,  # type: ignore[assignment]
                            ) -> dict[str, Any]:
        def op(c: Any) -> dict[str, Any]:
            c.reset()
            return dict(c.describe())
        with _tool_errors():
            return await contexts.apply(context_id, tenant(ctx), op)

    @server.tool(description=(
        "Write a file into a Python code context, under /tmp (the working directory): path "
        "is relative ('data/input.csv'), content is text, or base64 when encoding='base64'. "
        "The code then reads it with open(path)."))
    async def upload_file(context_id: str, path: str, content: str, encoding: str = "text",
                          ctx: Context = None,  # type: ignore[assignment]
                          ) -> dict[str, Any]:
        with _tool_errors():
            if encoding not in ("text", "base64"):
                raise ArgumentError("encoding must be 'text' or 'base64'")
            try:
                data = base64.b64decode(content, validate=True) if encoding == "base64" \
                    else content.encode()
            except ValueError as e:
                raise ArgumentError(f"content is not valid base64: {e}") from None
            await contexts.apply(context_id, tenant(ctx), lambda c: c.write_file(path, data))
            return {"path": path, "bytes": len(data)}

    @server.tool(description=(
        "Read a file from a Python code context, under /tmp: path is relative, as written by "
        "the code or by upload_file. Returns {path, encoding, content}: text when the file is "
        "UTF-8, else base64."))
    async def download_file(context_id: str, path: str,
                            ctx: Context = None,  # type: ignore[assignment]
                            ) -> dict[str, Any]:
        with _tool_errors():
            data = await contexts.apply(context_id, tenant(ctx), lambda c: c.read_file(path))
        try:
            return {"path": path, "encoding": "text", "content": data.decode("utf-8")}
        except UnicodeDecodeError:
            return {"path": path, "encoding": "base64",
                    "content": base64.b64encode(data).decode("ascii")}

    @server.tool(description=(
        "The languages run_code and create_context accept, with what each offers "
        "(interpreter, whether it has files under /tmp)."))
    async def list_languages() -> dict[str, Any]:
        built = languages()
        return {"languages": [{"name": n, "interpreter": spec.display, "files": spec.has_files}
                              for n, spec in LANGUAGES.items() if n in built]}

    return server



class _KeyedEndpoint:
    """The `/mcp` ASGI endpoint behind the service's API keys (401 without a valid one)."""

    def __init__(self, inner: Any, tenant_of: TenantOf) -> None:
        self.inner, self.tenant_of = inner, tenant_of

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        from starlette.datastructures import Headers
        from starlette.responses import JSONResponse
        try:
            self.tenant_of(Headers(scope=scope))
        except ToolError as e:
            body = {"error": {"type": "unauthorized", "status": 401, "message": str(e)}}
            await JSONResponse(body, status_code=401,
                               headers={"WWW-Authenticate": "Bearer"})(scope, receive, send)
            return
        await self.inner(scope, receive, send)


def service_tenant_of(api_keys: Any) -> TenantOf:
    """The tenant of a request's headers under `api_keys` (None: one tenant, "default");
    ToolError for a missing or unknown key."""
    from .auth import key_from_headers

    def tenant_of(headers: Mapping[str, str] | None) -> str:
        if api_keys is None or headers is None:
            return "default" if api_keys is None else _refuse("no HTTP headers")
        key = key_from_headers(headers.get("authorization"), headers.get("x-api-key"))
        who = api_keys.tenant(key)
        if who is None:
            _refuse("a valid API key is required (Authorization: Bearer <key> or X-API-Key)"
                    if key is None else "invalid API key")
        return str(who)
    return tenant_of


def _refuse(message: str) -> str:
    raise ToolError(message)


def mount(app: Any, service: Any, contexts: ContextService
          ) -> contextlib.AbstractAsyncContextManager[None]:
    """Serve the MCP tools at `/mcp` of the FastAPI `app` of `service` (stateless streamable
    HTTP, JSON responses, behind the service's API keys); returns the context manager the
    app's lifespan must hold (the SDK's session manager)."""
    from mcp.server.streamable_http_manager import StreamableHTTPASGIApp
    from mcp.server.transport_security import TransportSecuritySettings
    from starlette.routing import Route

    tenant_of = service_tenant_of(service.api_keys)
    server = build_server(service.code, contexts, tenant_of, service.timeout)
    # Without API keys the service is loopback-only: refuse other Host/Origin headers (DNS
    # rebinding from a browser). With keys, a request must carry a key a web page lacks.
    security = TransportSecuritySettings(
        enable_dns_rebinding_protection=service.api_keys is None,
        allowed_hosts=["127.0.0.1:*", "localhost:*", "[::1]:*"],
        allowed_origins=["http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*"])
    server.streamable_http_app(streamable_http_path="/mcp", stateless_http=True,
                               json_response=True, transport_security=security,
                               max_request_body_size=service.options.max_body)
    endpoint = _KeyedEndpoint(StreamableHTTPASGIApp(server.session_manager), tenant_of)
    app.router.routes.append(Route("/mcp", endpoint=endpoint, methods=["GET", "POST", "DELETE"],
                                   include_in_schema=False))
    return server.session_manager.run()


async def serve_stdio(options: Any, cache_dir: str, timeout: float, max_timeout: float) -> None:
    """`snapcell mcp`: the tools over stdin/stdout for one local user (tenant "default"),
    contexts in `options.store` (default `<cache_dir>/contexts`)."""
    contexts = ContextService(options, cache_dir)
    pool = CodePool()

    def timeout_of(requested: float | None) -> float:
        if requested is None:
            return timeout
        if isinstance(requested, bool) or not isinstance(requested, (int, float)) \
                or not 0 < requested <= max_timeout:
            raise ArgumentError(f"timeout must be a number of seconds in (0, {max_timeout}]")
        return float(requested)

    server = build_server(pool, contexts, lambda headers: "default", timeout_of)
    await contexts.start()
    try:
        await server.run_stdio_async()
    finally:
        await contexts.close()
