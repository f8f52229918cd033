"""The ``infermcp`` command.

``infermcp serve`` starts the OpenAI-compatible HTTP API, with MCP (Streamable HTTP at /mcp,
legacy SSE at /sse) on the same port or on ``--mcp-port``; ``infermcp mcp`` serves MCP over
stdio for desktop clients.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import logging
import os
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from core.chat.images import DEFAULT_MAX_BYTES, DEFAULT_MAX_IMAGES, DEFAULT_MAX_PIXELS
from core.chat.url_patterns import UrlPattern
from core.engine import threads
from core.errors import ModelLoadError, StorageError
from core.models import loader, pages
from core.models.formats import KV_CACHE_DTYPES
from core.models.loader import DEFAULT_EMBEDDING_ID, DEFAULT_MODEL_ID
from core.serving.specs import DEFAULT_MAX_QUEUE, DTYPES
from http_api.body import MAX_BODY_BYTES

if TYPE_CHECKING:
    from core.chat.images import ImagePolicy
    from core.responses.mcp import McpToolHost
    from core.responses.store import ResponseStore
    from core.serving.registry import ModelRegistry
    from core.serving.specs import ModelSpec
    from http_api.deferred import DeferredRoutes

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
# the flag that sets a ModelSpec field, where it is not the field's name
FLAGS = {"path": "--model", "id": "--served-model-name", "prefix_caching": "--no-prefix-caching"}


def duration(text: str) -> float:
    """Seconds from ``90``, ``90s``, ``15m``, ``12h`` or ``30d``."""
    unit = UNITS.get(text[-1:].lower()) if text else None
    try:
        value = float(text[:-1] if unit else text) * (unit or 1)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 3600, 12h, 30d)")\
            from None
    if value < 0:
        raise argparse.ArgumentTypeError("a duration must be >= 0")
    return value


def build_parser() -> argparse.ArgumentParser:
    model = argparse.ArgumentParser(add_help=False)
    model.add_argument("-m", "--model", help="the chat model: a Hugging Face model directory or "
                       f"a .gguf file (default: the bundled {DEFAULT_MODEL_ID}; 'none': no chat "
                       "model)")
    model.add_argument("--served-model-name", help="the id clients use for the chat model")
    model.add_argument("--embedding-model", help="the embedding model: a sentence-transformers "
                       f"or Hugging Face encoder directory (default: the bundled "
                       f"{DEFAULT_EMBEDDING_ID}; 'none': no embedding model)")
    model.add_argument("--config", help="a models.toml listing every model to serve (instead "
                       "of -m and --embedding-model; see examples/models.toml)")
    model.add_argument("--seed", type=int, help="seed for requests that send none")
    model.add_argument("--max-seqs", type=int, default=16, help="running batch size (16)")
    model.add_argument("--max-seq-len", type=int, default=2048, help="context length (2048)")
    model.add_argument("--kv-cache-tokens", type=int,
                       help="KV cache size in tokens (default: max-seqs x max-seq-len, ≤ 65536)")
    model.add_argument("--kv-cache-dtype", default="auto", choices=KV_CACHE_DTYPES,
                       help="what the KV cache holds: auto (default: float16 where the "
                       "weights start as int8, int5 or int4 on the CPU, half float32's memory; "
                       "else the model's dtype), float32 or float16")
    model.add_argument("--max-batched-tokens", type=int, default=512,
                       help="new tokens per engine step; longer prompts are prefilled in chunks "
                       "of this size between decode steps (512)")
    model.add_argument("--no-prefix-caching", action="store_true",
                       help="do not reuse the cached keys/values of shared prompt prefixes")
    model.add_argument("--max-queue", type=int, default=DEFAULT_MAX_QUEUE,
                       help="sequences that may wait beyond --max-seqs; more get 429 with "
                       f"Retry-After ({DEFAULT_MAX_QUEUE})")
    model.add_argument("--request-timeout", type=float, metavar="SECONDS",
                       help="end a request that waits and runs longer than this with a 504 "
                       "(default: no limit)")
    model.add_argument("--dtype", default="auto", choices=DTYPES)
    model.add_argument("--isq", default="auto", metavar="TYPE",
                       help="the chat model's weight format at start-up: auto (default: a "
                       "GGUF's own, e.g. int4 for Q4_K; else f16 on x86 CPUs), f16, int8 (8, "
                       "q8_0), int5 (5, q5_1, q5k), int4 (4, q4_0, q4k), bf16 or none "
                       "(float32); POST /re_isq changes it")
    model.add_argument("--enforce-eager", action="store_true",
                       help="run decode steps eagerly instead of replaying recorded TorchScript "
                       "graphs (slower on the CPU; for debugging)")
    model.add_argument("--threads", type=int,
                       help="a fixed thread count for the CPU kernels (default: every CPU this "
                       "process may use, fewer while other processes keep some busy; "
                       "OMP_NUM_THREADS also fixes it)")
    model.add_argument("--log", help="also write logs to this file")
    model.add_argument("--log-level", default="info")
    model.add_argument("--state-dir", default=os.environ.get("INFERMCP_STATE_DIR"),
                       help="where stored responses live (env INFERMCP_STATE_DIR; default "
                       "$XDG_STATE_HOME/infermcp or ~/.local/state/infermcp)")
    model.add_argument("--state-url", default=os.environ.get("INFERMCP_STATE_URL"),
                       metavar="postgresql://…",
                       help="keep stored responses in this PostgreSQL database instead, one "
                       "that several servers may share (env INFERMCP_STATE_URL; replaces "
                       "--state-dir)")
    model.add_argument("--responses-max-age", type=duration, default=30 * 86400.0,
                       help="delete stored responses older than this (seconds, or 15m, 12h, "
                       "30d; 0: keep forever; default 30d)")
    model.add_argument("--responses-max-count", type=int, default=10_000,
                       help="keep at most this many stored responses, the newest (0: no "
                       "limit; default 10000)")
    model.add_argument("--allow-image-urls", action="append", default=[], metavar="PATTERN",
                       help="an http(s) URL pattern (e.g. 'https://images.example.com/*'; a "
                       "'*' in the host stays in the host) whose images the server fetches "
                       "for requests; repeatable; none by default: images come as data: URIs")
    model.add_argument("--max-images", type=int, default=DEFAULT_MAX_IMAGES,
                       help=f"images one request may hold ({DEFAULT_MAX_IMAGES})")
    model.add_argument("--max-image-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                       help=f"width x height of one image, read from its header before it is "
                       f"decoded ({DEFAULT_MAX_PIXELS})")
    model.add_argument("--max-image-bytes", type=int, default=DEFAULT_MAX_BYTES,
                       help=f"one image's size as sent or fetched ({DEFAULT_MAX_BYTES})")

    parser = argparse.ArgumentParser(prog="infermcp", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", parents=[model], help="serve the OpenAI API (and MCP)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--mcp-port", type=int,
                       help="serve MCP on this port instead of /mcp and /sse of --port")
    serve.add_argument("--api-key", default=os.environ.get("INFERMCP_API_KEY"),
                       help="require 'Authorization: Bearer KEY' (env INFERMCP_API_KEY)")
    serve.add_argument("--insecure-no-auth", action="store_true",
                       help="allow a non-loopback --host without --api-key")
    serve.add_argument("--allowed-hosts", nargs="*", default=[],
                       help="extra Host names MCP accepts (DNS-rebinding protection)")
    serve.add_argument("--allowed-origins", nargs="*", default=[],
                       help="extra Origin values MCP accepts")
    serve.add_argument("--cors-origins", type=_comma_list, default=[],
                       help="comma-separated origins browsers may call the API from ('*': any; "
                       "default: none); MCP accepts them too")
    serve.add_argument("--max-body-bytes", type=int, default=MAX_BODY_BYTES,
                       help=f"largest request body; larger ones get 413 ({MAX_BODY_BYTES})")
    serve.add_argument("--mcp-config", metavar="FILE",
                       help="JSON file of the MCP servers the model may use (Responses API "
                            "mcp tools; mistral.rs's shape is accepted): see MCP_SERVER.md")
    serve.add_argument("--mcp-allow-url", action="append", default=[], metavar="PATTERN",
                       help="a server_url pattern requests may name in mcp tools: "
                            "http(s)://host[:port][/path] with fnmatch wildcards, matched part by "
                            "part (e.g. 'https://mcp.example.com/*'); repeatable; none by default")
    serve.add_argument("--mcp-stateless", action="store_true",
                       help="Streamable HTTP at /mcp without sessions, one JSON answer per "
                            "request: any replica behind a load balancer can answer (no "
                            "progress notifications, no server-to-client stream)")
    serve.add_argument("--shutdown-grace", type=float, default=15, metavar="SECONDS",
                       help="on SIGTERM/SIGINT, how long requests in flight may finish before "
                       "they are aborted with an error (15)")
    serve.add_argument("--drain-delay", type=float, default=0, metavar="SECONDS",
                       help="on SIGTERM/SIGINT, keep listening this long, answering new "
                       "requests with a retryable 503, before refusing connections: set it above "
                       "a load balancer's time to see /health fail (0)")
    sub.add_parser("mcp", parents=[model], help="serve MCP over stdio")
    return parser


def _comma_list(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    _setup_logging(args.log, args.log_level)
    try:
        if args.threads is not None and args.threads < 1:
            raise ModelLoadError("--threads must be >= 1")
        threads.configure(args.threads)  # before torch starts its threads
        if args.command == "mcp":
            return _mcp_stdio(args)
        status = _serve(args)
    except (ModelLoadError, StorageError) as exc:
        print(f"infermcp: error: {' '.join(exc.message.split())}", file=sys.stderr)
        return 2
    _exit_now(status)


def _exit_now(status: int) -> NoReturn:
    """Leave at once once the server has shut down cleanly: every request has finished or
    been aborted and the lifespans have closed what they opened, so tearing down the
    interpreter's modules (seconds with torch and transformers loaded) serves nothing."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def model_specs(args: argparse.Namespace) -> list[ModelSpec]:
    """The models to serve, from --config or -m/--embedding-model; checked before anything binds."""
    from pydantic import ValidationError

    from core.models import loader
    from core.serving.specs import ModelSpec, check_specs, load_config, spec_error

    try:
        base = ModelSpec(dtype=args.dtype, max_seq_len=args.max_seq_len, max_seqs=args.max_seqs,
                         kv_cache_tokens=args.kv_cache_tokens,
                         kv_cache_dtype=args.kv_cache_dtype, seed=args.seed,
                         max_batched_tokens=args.max_batched_tokens,
                         prefix_caching=not args.no_prefix_caching, isq=args.isq,
                         enforce_eager=args.enforce_eager, max_queue=args.max_queue,
                         request_timeout=args.request_timeout)
        specs = [base.but(path=args.model, id=args.served_model_name)] \
            if args.model != "none" and not args.config else []
    except ValidationError as exc:
        raise spec_error(exc, _flag) from None
    if args.embedding_model != "none" and not args.config:
        try:
            specs.append(base.but(kind="embedding", path=args.embedding_model, max_seq_len=None))
        except ValidationError as exc:
            raise spec_error(exc, lambda key: "--embedding-model" if key == "path"
                             else _flag(key)) from None
    if args.config:
        if args.model or args.embedding_model or args.served_model_name:
            raise ModelLoadError("--config lists the models to serve; do not combine it with -m, "
                                 "--served-model-name or --embedding-model")
        specs = load_config(Path(args.config), base)
    check_specs(specs)
    for spec in specs:  # fail fast on a missing path or a default that is not installed
        if spec.path is not None:
            loader.check_path(spec.path)
        elif spec.kind == "chat":
            loader.default_gguf()
        else:
            loader.default_embedding_dir()
    return specs


def _flag(key: str) -> str:
    """The flag that sets the ModelSpec field ``key``."""
    return FLAGS.get(key, "--" + key.replace("_", "-"))


def image_policy(args: argparse.Namespace) -> ImagePolicy:
    """The image flags as the registry's policy; a bad value or pattern is a ModelLoadError."""
    from core.chat.images import ImagePolicy

    for flag, value in (("--max-images", args.max_images),
                        ("--max-image-pixels", args.max_image_pixels),
                        ("--max-image-bytes", args.max_image_bytes)):
        if value < 1:
            raise ModelLoadError(f"{flag} must be >= 1, not {value}")
    try:
        return ImagePolicy(tuple(args.allow_image_urls), max_images=args.max_images,
                           max_pixels=args.max_image_pixels, max_bytes=args.max_image_bytes)
    except ValueError as exc:
        raise ModelLoadError(f"--allow-image-urls: {exc}") from None


def mcp_allow_urls(args: argparse.Namespace) -> tuple[UrlPattern, ...]:
    """The --mcp-allow-url patterns, parsed now (a bad one ends start-up with one line)."""
    try:
        return tuple(UrlPattern.parse(text) for text in args.mcp_allow_url)
    except ValueError as exc:
        raise ModelLoadError(f"--mcp-allow-url: {exc}") from None


def _registry(specs: list[ModelSpec], on_error: Any, images: ImagePolicy) -> ModelRegistry:
    from core.serving.registry import build_registry

    def on_loaded(model: Any) -> None:
        card = model.card()
        print(f"infermcp: serving {card['id']} ({card['kind']}, max {card['max_model_len']} "
              f"tokens, {card['dtype']})", file=sys.stderr, flush=True)

    return build_registry(specs, on_error, on_loaded, images)


def response_store(args: argparse.Namespace) -> ResponseStore:
    """The response store with the retention flags: in the PostgreSQL database of
    ``--state-url`` if given (psycopg is imported only then), else in ``--state-dir``;
    StorageError if it cannot be opened."""
    from core.responses.store import Retention, open_store

    if args.responses_max_count < 0:
        raise StorageError("--responses-max-count must be >= 0")
    retention = Retention(max_age_s=args.responses_max_age or None,
                          max_count=args.responses_max_count or None)
    if args.state_url:
        if not args.state_url.startswith(("postgresql://", "postgres://")):
            raise StorageError("--state-url must be a postgresql:// URL")
        from core.responses.postgres_store import PostgresResponseStore

        return PostgresResponseStore(args.state_url, retention)
    return open_store(Path(args.state_dir).expanduser() if args.state_dir else None, retention)


def _serve(args: argparse.Namespace) -> int:
    if args.mcp_port is not None and args.mcp_port == args.port:
        raise ModelLoadError(f"--mcp-port must differ from --port ({args.port})")
    if args.max_body_bytes < 1 or args.shutdown_grace < 0 or args.drain_delay < 0:
        raise ModelLoadError("--max-body-bytes must be >= 1, --shutdown-grace and --drain-delay "
                             ">= 0")
    specs = model_specs(args)  # bad flags and state dirs are answered before the heavy imports
    chat = [spec for spec in specs if spec.kind == "chat"]
    for spec in chat:  # a GGUF's tokenizer, built on the other core while we import
        loader.build_ahead(spec.path)
    if chat and chat[0].isq == "auto":  # the first one loaded: its weights' memory, faulted
        # in by a thread while we import (core.models.pages)
        pages.reserve(loader.tiled_bytes(chat[0].path))
    images = image_policy(args)
    mcp_config = _mcp_config(args.mcp_config)
    mcp_urls = mcp_allow_urls(args)
    store = response_store(args)
    try:
        return _run_servers(args, specs, store, images, mcp_config, mcp_urls)
    finally:
        store.close()


def _mcp_config(path: str | None) -> Any:
    """The --mcp-config file, read now (a bad one ends start-up with one line)."""
    if path is None:
        return None
    from mcp_client.config import McpConfigError, load_config

    try:
        return load_config(Path(path))
    except McpConfigError as exc:
        raise ModelLoadError(str(exc)) from exc


def is_loopback(host: str) -> bool:
    """Whether ``--host`` serves this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


# the paths of mcp_server.http_transports' routes, answered before the MCP SDK is imported
MCP_HTTP_PATHS = ("/mcp", "/sse", "/messages/{rest:path}")


def mcp_http(models: ModelRegistry, store: ResponseStore | None, mcp_host: McpToolHost | None,
             host: str, allowed_hosts: list[str], origins: list[str], *, stateless: bool
             ) -> DeferredRoutes:
    """MCP's HTTP routes, whose SDK is imported (and routes built) once the models have settled
    or a first MCP request has come: imported beside the load, it slowed it by its own 1-1.5 s.
    A request waits for the build, which then runs beside the load."""
    from http_api.deferred import DeferredRoutes

    def build() -> tuple[list[Any], Any]:
        from mcp_server import build_server, http_transports, security_settings

        transports = http_transports(build_server(models, store, mcp_host),
                                     security_settings(host, allowed_hosts, origins),
                                     stateless=stateless)
        return transports.routes, transports.lifespan

    return DeferredRoutes(MCP_HTTP_PATHS, build, after=models.settled)


def _run_servers(args: argparse.Namespace, specs: list[ModelSpec], store: ResponseStore,
                 images: ImagePolicy, mcp_config: Any = None,
                 mcp_urls: Sequence[UrlPattern] = ()) -> int:
    if not is_loopback(args.host) and not args.api_key and not args.insecure_no_auth:
        raise ModelLoadError(f"refusing to serve on non-loopback {args.host} without --api-key "
                             "(pass --insecure-no-auth to do it anyway)")
    failure: list[str] = []
    runner: list[GracefulServers] = []

    def on_load_error(message: str) -> None:  # called from the loading thread
        failure.append(message)
        for server in runner[0].servers if runner else []:
            server.should_exit = True

    # The models start loading now, in their thread, while this thread imports the front ends:
    # the weights' conversion is mostly C++, which leaves the interpreter to the imports. The
    # engine's own imports (torch, transformers) are done before, here: two threads importing
    # one package's circular modules from either side could deadlock.
    models = _registry(specs, on_load_error, images)
    models.start()

    import uvicorn
    from starlette.applications import Starlette

    from http_api.app import create_app, operator_middleware
    from http_api.errors import EXCEPTION_HANDLERS
    from http_api.server import GracefulServers
    from mcp_client import McpClients

    origins = args.allowed_origins + [o for o in args.cors_origins if o != "*"]
    mcp_host = McpClients(mcp_config, mcp_urls)
    mcp = mcp_http(models, store, mcp_host, args.host, args.allowed_hosts, origins,
                   stateless=args.mcp_stateless)
    operator = {"api_key": args.api_key, "cors_origins": args.cors_origins}

    @contextlib.asynccontextmanager
    async def closing() -> AsyncIterator[None]:
        """Close the store once every request has ended (see http_api/server.py)."""
        try:
            yield
        finally:
            store.close()

    apps: list[tuple[Any, int, str]] = []
    if args.mcp_port is None:
        apps.append((create_app(models, responses_store=store, routes=mcp.routes,
                                lifespans=[mcp.lifespan, mcp_host.lifespan, closing],
                                max_body_bytes=args.max_body_bytes, mcp_host=mcp_host,
                                **operator),
                     args.port, "OpenAI API at /v1, MCP at /mcp and /sse"))
    else:
        main_app = create_app(models, responses_store=store,
                              lifespans=[mcp_host.lifespan, closing],
                              max_body_bytes=args.max_body_bytes, mcp_host=mcp_host, **operator)
        mcp_app = Starlette(routes=mcp.routes, lifespan=lambda app: mcp.lifespan(),
                            exception_handlers=EXCEPTION_HANDLERS,
                            middleware=operator_middleware(mcp.routes, main_app.state.metrics,
                                                           **operator))
        apps += [(main_app, args.port, "OpenAI API at /v1"),
                 (mcp_app, args.mcp_port, "MCP at /mcp and /sse")]
    # access_log=False: the app logs each request itself (infermcp.access, with its id)
    configs = [uvicorn.Config(app, host=args.host, port=port, log_level=args.log_level,
                              access_log=False) for app, port, _ in apps]
    runner.append(GracefulServers(configs, args.shutdown_grace, on_stop=models.drain,
                                  on_abort=models.shutdown, drain_delay=args.drain_delay))
    if not failure:  # a failure from now on stops the servers (on_load_error)
        for _, port, what in apps:
            print(f"infermcp: listening on http://{args.host}:{port} ({what}; loading "
                  f"{', '.join(s.served_id for s in specs)})", file=sys.stderr, flush=True)
        asyncio.run(runner[0].serve())
    if failure:
        raise ModelLoadError(failure[0])
    return 0


def _mcp_stdio(args: argparse.Namespace) -> int:
    specs = model_specs(args)  # bad flags and state dirs are answered before the heavy imports
    images = image_policy(args)
    store = response_store(args)

    import anyio

    from mcp_server import build_server, serve_stdio

    def on_load_error(message: str) -> None:
        print(f"infermcp: error: {' '.join(message.split())}", file=sys.stderr, flush=True)

    try:
        anyio.run(serve_stdio, build_server(_registry(specs, on_load_error, images), store))
    finally:
        store.close()
    return 0


def _setup_logging(path: str | None, level: str) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if path:
        handlers.append(logging.FileHandler(path))
    logging.basicConfig(level=level.upper(), handlers=handlers,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


if __name__ == "__main__":
    sys.exit(main())
