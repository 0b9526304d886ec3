"""The ``wogit`` command."""

from __future__ import annotations

import argparse
import os

from wogit import __version__
from wogit.settings import Settings, parse_size


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def parser() -> argparse.ArgumentParser:
    from wogit import client_cli, maintenance_cli, users_cli

    top = argparse.ArgumentParser(prog="wogit", description="A registry for maps, stored in git.")
    top.add_argument("--version", action="version", version=f"wogit {__version__}")
    commands = top.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the registry (HTTP API)")
    defaults = Settings()
    serve.add_argument("--config", help="a TOML config file ([server], [auth], [access]); flags override it")
    serve.add_argument("--data", help=f"the bare git repository holding the registry, created if missing "
                                      f"(WOGIT_DATA; default {defaults.data})")
    serve.add_argument("--host", help=f"address to listen on (WOGIT_HOST; default {defaults.host})")
    serve.add_argument("--port", type=int, help=f"port, 0 for any free one (WOGIT_PORT; default {defaults.port})")
    serve.add_argument("--max-map-size", type=_size, help="largest map accepted (WOGIT_MAX_MAP_SIZE; default 64G)")
    serve.add_argument("--max-config-size", type=_size,
                       help="largest config accepted (WOGIT_MAX_CONFIG_SIZE; default 16M)")
    serve.add_argument("--threads", type=int, help=f"worker threads (WOGIT_THREADS; default {defaults.threads})")
    serve.add_argument("--max-uploads", type=int, metavar="N",
                       help="map and config uploads served at once by each process; more get 503 with "
                            "Retry-After (WOGIT_MAX_UPLOADS; default 0: --threads less 4, at least 1)")
    serve.add_argument("--workers", type=int,
                       help=f"processes serving the port, each with --threads threads; more than 1 cannot be a "
                            f"replica nor push to mirrors (WOGIT_WORKERS; default {defaults.workers})")
    serve.add_argument("--auth-file", help="htpasswd file of users: logins required (WOGIT_AUTH_FILE)")
    serve.add_argument("--tls-cert", help="PEM certificate chain: serve HTTPS (WOGIT_TLS_CERT)")
    serve.add_argument("--tls-key", help="PEM private key of --tls-cert (WOGIT_TLS_KEY)")
    serve.add_argument("--hook-timeout", type=float,
                       help=f"seconds a wo-validate-* hook may run (WOGIT_HOOK_TIMEOUT; default {defaults.hook_timeout:g})")
    serve.add_argument("--replica-of", metavar="URL",
                       help="serve a read-only copy of the primary at URL, fetched over its /_git (WOGIT_REPLICA_OF)")
    serve.add_argument("--replica-interval", type=float, metavar="SECONDS",
                       help=f"seconds between a replica's fetches (WOGIT_REPLICA_INTERVAL; default {defaults.replica_interval:g})")
    serve.add_argument("--push-mirror", dest="push_mirrors", action="append", metavar="REMOTE",
                       help="a git remote (URL or path) that gets every change pushed; repeatable (WOGIT_PUSH_MIRRORS)")
    serve.add_argument("--mirror-interval", type=float, metavar="SECONDS",
                       help=f"seconds between checks for changes to push to the mirrors, such as git pushes "
                            f"(WOGIT_MIRROR_INTERVAL; default {defaults.mirror_interval:g})")
    serve.add_argument("--notify", action="append", metavar="URL",
                       help="a replica's base URL, told to fetch after every write; repeatable (WOGIT_NOTIFY)")
    serve.add_argument("--log-format", choices=["plain", "json"],
                       help=f"the log's lines: plain text or JSON objects (WOGIT_LOG_FORMAT; default {defaults.log_format})")
    serve.add_argument("--metrics-access", choices=["read", "open"],
                       help="who may GET /metrics: read (read on every repository) or open (anyone) "
                            f"(WOGIT_METRICS_ACCESS; default {defaults.metrics_access})")
    serve.add_argument("--health-access", choices=["open", "read"],
                       help="who may GET /healthz and /readyz: open (anyone) or read (read on every repository) "
                            f"(WOGIT_HEALTH_ACCESS; default {defaults.health_access})")
    serve.add_argument("--download-cache-size", type=_size, metavar="SIZE",
                       help="disk kept for tarballs and inflated maps that repeated downloads send as they are, "
                            "least recently used evicted first; 0 for none (WOGIT_DOWNLOAD_CACHE_SIZE; default 10G)")
    init = commands.add_parser("init", help="create a registry repository, or install its git hooks in an "
                                            "existing one (idempotent)")
    init.add_argument("--data", help=f"the bare git repository (WOGIT_DATA; default {defaults.data})")
    hook = commands.add_parser("hook", help="run a git hook of the registry (git calls this; see docs/git.md)")
    hook.add_argument("name", choices=["pre-receive"])
    users_cli.add_parser(commands)
    maintenance_cli.add_parsers(commands)
    client_cli.add_parsers(commands)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    if args.command == "init":
        return _init(args)
    if args.command == "hook":
        import sys

        from wogit import serverhooks

        return serverhooks.pre_receive(os.environ.get("GIT_DIR", "."), sys.stdin.buffer.read())
    if args.command in ("gc", "fsck"):
        from wogit import maintenance_cli

        return maintenance_cli.run(args)
    if args.command == "user":
        from wogit import users_cli

        return users_cli.run(args)
    from wogit import client_cli

    if args.command in client_cli.COMMANDS:
        return client_cli.run(args)
    return 2


def _serve(args) -> int:
    from wogit import config
    from wogit.server import serve

    file, policy = {}, None
    if args.config:
        try:
            loaded = config.load(args.config)
        except config.ConfigError as exc:
            raise SystemExit(f"wogit: {exc}") from None
        file, policy = dict(loaded.server), loaded.policy
        if loaded.htpasswd:
            file["auth_file"] = loaded.htpasswd
    flags = {name: getattr(args, name) for name in (
        "data", "host", "port", "max_map_size", "max_config_size", "threads", "max_uploads", "workers", "auth_file", "tls_cert", "tls_key",
        "hook_timeout", "replica_of", "replica_interval", "push_mirrors", "mirror_interval", "notify",
        "log_format", "metrics_access", "health_access", "download_cache_size")}
    flags = {name: tuple(value) if isinstance(value, list) else value for name, value in flags.items()}
    flags = {name: os.path.abspath(value) if name in ("auth_file", "tls_cert", "tls_key") and value else value
             for name, value in flags.items()}
    return serve(Settings.from_env(file=file, **flags), policy)


def _init(args) -> int:
    from wogit import store

    data = os.path.abspath(Settings.from_env(data=args.data).data)
    created = not os.path.isfile(os.path.join(data, "HEAD"))
    for line in store.init(data):
        if not created:
            print(line)
    print(f"{'created' if created else 'checked'} the registry repository {data}; its hooks are installed")
    return 0
