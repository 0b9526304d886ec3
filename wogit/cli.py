"""The ``wogit`` command."""

from __future__ import annotations

import argparse

from wogit import __version__
from wogit.settings import Settings, parse_size


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="wogit", description="A registry for maps, stored in git.")
    top.add_argument("--version", action="version", version=f"wogit {__version__}")
    commands = top.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the registry (HTTP API)")
    defaults = Settings()
    serve.add_argument("--data", help=f"the bare git repository holding the registry, created if missing "
                                      f"(WOGIT_DATA; default {defaults.data})")
    serve.add_argument("--host", help=f"address to listen on (WOGIT_HOST; default {defaults.host})")
    serve.add_argument("--port", type=int, help=f"port, 0 for any free one (WOGIT_PORT; default {defaults.port})")
    serve.add_argument("--max-map-size", type=_size, help="largest map accepted (WOGIT_MAX_MAP_SIZE; default 64G)")
    serve.add_argument("--max-config-size", type=_size,
                       help="largest config accepted (WOGIT_MAX_CONFIG_SIZE; default 16M)")
    serve.add_argument("--threads", type=int, help=f"worker threads (WOGIT_THREADS; default {defaults.threads})")
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "serve":
        from wogit.server import serve

        settings = Settings.from_env(
            data=args.data, host=args.host, port=args.port, max_map_size=args.max_map_size,
            max_config_size=args.max_config_size, threads=args.threads)
        return serve(settings)
    return 2
