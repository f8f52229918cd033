"""The ``infermcp`` command: ``infermcp serve`` starts the OpenAI-compatible server."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from core.errors import ModelLoadError
from core.loader import DEFAULT_MODEL_ID


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="infermcp", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve the OpenAI-compatible HTTP API")
    serve.add_argument("-m", "--model", help="a Hugging Face model directory or a .gguf file "
                       f"(default: the bundled {DEFAULT_MODEL_ID})")
    serve.add_argument("--served-model-name", help="the id clients use in the 'model' field")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--seed", type=int, help="seed for requests that send none")
    serve.add_argument("--max-seqs", type=int, default=16, help="running batch size (16)")
    serve.add_argument("--max-seq-len", type=int, default=2048, help="context length (2048)")
    serve.add_argument("--kv-cache-tokens", type=int,
                       help="KV cache size in tokens (default: max-seqs x max-seq-len, ≤ 65536)")
    serve.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"])
    serve.add_argument("--log", help="also write logs to this file")
    serve.add_argument("--log-level", default="info")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    _setup_logging(args.log, args.log_level)
    try:
        return _serve(args)
    except ModelLoadError as exc:
        print(f"infermcp: error: {' '.join(exc.message.split())}", file=sys.stderr)
        return 2


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from core import loader
    from core.serving import LoadOptions, load_served_model
    from http_api.app import create_app

    if args.max_seqs < 1 or args.max_seq_len < 16:
        raise ModelLoadError("--max-seqs must be >= 1 and --max-seq-len >= 16")
    if args.model is not None:
        loader.check_path(args.model)  # fail fast, before the server binds
    options = LoadOptions(model=args.model, served_model_name=args.served_model_name,
                          dtype=args.dtype, max_seqs=args.max_seqs, max_seq_len=args.max_seq_len,
                          kv_cache_tokens=args.kv_cache_tokens, seed=args.seed)
    failure: list[str] = []

    def on_load_error(message: str) -> None:
        failure.append(message)
        server.should_exit = True

    def load() -> object:
        model = load_served_model(options)
        print(f"infermcp: serving {model.id} (max {model.max_model_len} tokens, {model.dtype}) "
              f"at http://{args.host}:{args.port}/v1", file=sys.stderr, flush=True)
        return model

    app = create_app(load, on_load_error)  # type: ignore[arg-type]
    print(f"infermcp: listening on http://{args.host}:{args.port} (loading "
          f"{args.model or DEFAULT_MODEL_ID})", file=sys.stderr, flush=True)
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level,
                            timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    server.run()
    if failure:
        raise ModelLoadError(failure[0])
    return 0


def _setup_logging(path: str | None, level: str) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if path:
        handlers.append(logging.FileHandler(path))
    logging.basicConfig(level=level.upper(), handlers=handlers,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


if __name__ == "__main__":
    sys.exit(main())
