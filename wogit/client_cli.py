"""``wogit push|pull|tags|ls|history|rm|meta``: the registry's client on the command line.

A thin layer on ``wogit.client.Client``: it parses references (``REPO/MAP:TAG``,
``REPO/MAP``), finds the registry and credentials (``wogit.client_config``), shows a
progress bar when standard error is a terminal, prints results as text or, with
``--json``, as one JSON document on standard output, and turns failures into
``wogit: <msg>`` on standard error and an exit code (``EXIT_CODES``).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict

from wogit import names

COMMANDS = ("push", "pull", "tags", "ls", "history", "rm", "meta")

EXIT_CODES = """exit codes:
  0  success
  1  any other failure (a server error, a file that cannot be read or written)
  2  usage error (bad arguments, a malformed reference, an unreadable client config or netrc)
  3  not found (404: repository, map, tag, metadata key or digest)
  4  authentication or permission refused (401, 403, 429)
  5  conflict (409: the tag exists with other digests)
  6  digest mismatch: a downloaded file is not what the registry named
  7  cannot connect, or the network failed"""


class _Usage(Exception):
    """A usage error found after argparse (exit 2)."""


def add_parsers(commands) -> None:
    """Register the client's commands on the top-level parser's subcommands."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--registry", metavar="URL",
                        help="the registry (WOGIT_REGISTRY, else registry = \"...\" in "
                             "~/.config/wogit/client.toml, else http://127.0.0.1:8080)")
    common.add_argument("--json", action="store_true", help="print one JSON document on standard output")
    common.add_argument("--quiet", "-q", action="store_true", help="no progress bar, no report of what was done")
    listing = argparse.ArgumentParser(add_help=False)
    listing.add_argument("--page-size", type=_page_size, metavar="N", help="items per request (1-1000; the server's default 100)")

    def command(name: str, help: str, *parents, within=commands) -> argparse.ArgumentParser:
        return within.add_parser(name, help=help, description=help[0].upper() + help[1:] + ".",
                                 parents=[common, *parents], epilog=EXIT_CODES,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)

    push = command("push", "upload a map and its config, tag them and set metadata")
    push.add_argument("reference", metavar="REPO/MAP:TAG")
    push.add_argument("--map", required=True, metavar="FILE", help="the map file")
    push.add_argument("--config", required=True, metavar="FILE", help="the config file")
    push.add_argument("--meta", action="append", default=[], metavar="KEY=VALUE",
                      help="metadata to merge into the map's; repeatable")
    pull = command("pull", "download a tag's map, config and metadata into a directory (resumable)")
    pull.add_argument("reference", metavar="REPO/MAP:TAG")
    pull.add_argument("-o", "--output", metavar="DIR", help="the directory (default ./REPO-MAP-TAG)")
    tags = command("tags", "list the tags of a map", listing)
    tags.add_argument("reference", metavar="REPO/MAP")
    tags.add_argument("--sort", choices=["name", "time"], default="name", help="by name, or newest first")
    ls = command("ls", "list the repositories, or the maps of REPO", listing)
    ls.add_argument("repository", nargs="?", metavar="REPO")
    history = command("history", "show what happened to a map, newest first", listing)
    history.add_argument("reference", metavar="REPO/MAP")
    rm = command("rm", "delete a tag (its map and config stay until `wogit gc`)")
    rm.add_argument("reference", metavar="REPO/MAP:TAG")

    meta = commands.add_parser("meta", help="read and change a map's metadata", epilog=EXIT_CODES,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
    verbs = meta.add_subparsers(dest="meta_command", required=True, metavar="{get,set,rm,ls}")

    def verb(name: str, help: str) -> argparse.ArgumentParser:
        parser = command(name, help, within=verbs)
        parser.add_argument("reference", metavar="REPO/MAP")
        return parser

    get = verb("get", "print all metadata (key=value lines) or one value")
    get.add_argument("key", nargs="?")
    get.add_argument("--at", metavar="WHEN", help="as it was at an ISO-8601 time or a commit id of `wogit history`")
    verb("set", "merge KEY=VALUE pairs into the metadata").add_argument("pairs", nargs="+", metavar="KEY=VALUE")
    verb("rm", "delete a key").add_argument("key")
    keys = verb("ls", "list the keys")
    keys.add_argument("--at", metavar="WHEN", help="as it was at an ISO-8601 time or a commit id")


def run(args) -> int:
    """Execute a parsed client command; return the exit code."""
    from wogit import client as api
    from wogit import client_config

    try:
        with api.Client.configured(args.registry, ask=client_config.prompt, progress=_progress(args),
                                   page_size=getattr(args, "page_size", None)) as client:
            document, text = _COMMANDS[args.command](client, args)
    except (_Usage, client_config.ConfigError) as exc:
        return _fail(args, str(exc), 2)
    except api.ClientError as exc:
        return _fail(args, exc.msg, exc.exit_code, exc.status)
    except OSError as exc:
        return _fail(args, f"{exc.filename or 'file'}: {exc.strerror or exc}", 1)
    except (KeyError, TypeError, AttributeError):  # an item of a list that is not what the API documents
        return _fail(args, "the registry's answer is not the JSON the API documents", 1)
    except KeyboardInterrupt:
        return _fail(args, "interrupted", 130)
    if args.json:
        print(json.dumps(document, ensure_ascii=False))
    elif text and not (args.quiet and args.command in ("push", "pull", "rm", "meta")):
        print(text)
    return 0


# -- the commands: each returns (its JSON document, its text) -----------------------

def _push(client, args):
    repository, map, tag = _tag_reference(args.reference)
    metadata = _pairs(args.meta)
    for path in (args.map, args.config):
        with open(path, "rb"):  # a missing file is the user's mistake: say so before any upload
            pass
    result = client.push(repository, map, tag, args.map, args.config, metadata)
    lines = [f"map {result.map_digest} {'uploaded' if result.map_uploaded else 'already in the registry'}",
             f"config {result.config_digest} {'uploaded' if result.config_uploaded else 'already in the registry'}",
             f"{'tagged' if result.tag_created else 'already tagged'} {args.reference}"]
    if result.metadata_set:
        lines.append("metadata set: " + " ".join(result.metadata_set))
    if result.metadata_ignored:
        lines.append("metadata ignored (nested keys): " + " ".join(result.metadata_ignored))
    return asdict(result), "\n".join(lines)


def _pull(client, args):
    repository, map, tag = _tag_reference(args.reference)
    result = client.pull(repository, map, tag, args.output or f"{repository}-{map}-{tag}")
    resumed = f", {result.resumed_bytes} bytes resumed" if result.resumed_bytes else ""
    return asdict(result), (f"pulled {args.reference} into {result.directory}: map {result.map_size} bytes, "
                            f"config {result.config_size} bytes, digests verified{resumed}")


def _tags(client, args):
    repository, map = _map_reference(args.reference)
    tags = list(client.tags(repository, map, sort="time" if args.sort == "time" else None))
    return ({"tags": [asdict(t) for t in tags]},
            "\n".join(f"{t.tag}\t{t.created}\t{t.map_digest}\t{t.config_digest}" for t in tags))


def _ls(client, args):
    if args.repository:
        maps = list(client.maps(args.repository))
        return {"repository": args.repository, "maps": maps}, "\n".join(maps)
    repositories = list(client.repositories())
    return {"repositories": repositories}, "\n".join(repositories)


def _history(client, args):
    entries = list(client.history(*_map_reference(args.reference)))
    described = [{k: v for k, v in asdict(e).items() if k == "user" or v not in (None, (), [])}  # as the API
                 for e in entries]
    return {"history": described}, "\n".join(map(_history_line, entries))


def _history_line(entry) -> str:
    if entry.action == "create-tag":
        what = f"{entry.tag} map={entry.map_digest} config={entry.config_digest}"
    else:
        what = entry.tag or " ".join(entry.keys or [])
    return f"{entry.time}\t{entry.user or '-'}\t{entry.action}\t{what}\t{entry.commit}"


def _rm(client, args):
    deleted = client.delete_tag(*_tag_reference(args.reference))
    return asdict(deleted), f"deleted {args.reference} (map {deleted.map_digest})"


def _meta(client, args):
    repository, map = _map_reference(args.reference)
    if args.meta_command == "get" and args.key:
        value = client.metadata_value(repository, map, args.key, at=args.at)
        return asdict(value), value.value
    if args.meta_command in ("get", "ls"):
        metadata = client.metadata(repository, map, at=args.at)
        if args.meta_command == "ls":
            return {"keys": list(metadata.values), "commit": metadata.commit}, "\n".join(metadata.values)
        return ({"metadata": metadata.values, "commit": metadata.commit},
                "\n".join(f"{key}={value}" for key, value in metadata.values.items()))
    if args.meta_command == "set":
        changed = client.set_metadata(repository, map, _pairs(args.pairs))
        ignored = f"\nignored (nested keys): {' '.join(changed['ignored'])}" if changed["ignored"] else ""
        return changed, "set: " + " ".join(changed["set"]) + ignored
    client.delete_metadata(repository, map, args.key)
    return {"deleted": args.key}, f"deleted {args.key}"


_COMMANDS = {"push": _push, "pull": _pull, "tags": _tags, "ls": _ls, "history": _history, "rm": _rm,
             "meta": _meta}


# -- helpers ------------------------------------------------------------------------

def _map_reference(text: str) -> tuple[str, str]:
    """``REPO/MAP`` -> (repository, map)."""
    repository, slash, map = text.partition("/")
    if not slash or not names.is_repository(repository) or not names.is_repository(map):
        raise _Usage(f"{text!r} is not REPO/MAP (names: {names.REPOSITORY_RULE})")
    return repository, map


def _tag_reference(text: str) -> tuple[str, str, str]:
    """``REPO/MAP:TAG`` -> (repository, map, tag)."""
    where, colon, tag = text.rpartition(":")
    if not colon:
        raise _Usage(f"{text!r} is not REPO/MAP:TAG")
    if not names.is_tag(tag):
        raise _Usage(f"{tag!r} is not a tag name ({names.TAG_RULE})")
    return (*_map_reference(where), tag)


def _page_size(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= 1000:
        raise argparse.ArgumentTypeError(f"a page size is a whole number from 1 to 1000, not {text!r}")
    return int(text)


def _pairs(texts: list[str]) -> dict[str, str]:
    pairs = {}
    for text in texts:
        key, equals, value = text.partition("=")
        if not equals or not key:
            raise _Usage(f"{text!r} is not KEY=VALUE")
        if any(ch.isspace() for ch in text):
            raise _Usage(f"{text!r} holds whitespace: keys and values cannot (it separates pairs)")
        pairs[key] = value
    return pairs


def _progress(args):
    """A tqdm bar per transfer when standard error is a terminal, else None (quiet in pipes and CI)."""
    if args.quiet or not sys.stderr.isatty():
        return None
    import os

    from tqdm import tqdm

    try:
        size = os.get_terminal_size(sys.stderr.fileno())
    except OSError:
        size = os.terminal_size((0, 0))

    def bar(label: str, total: int, initial: int):
        # A terminal that was given no size says 0 x 0, where tqdm would draw nothing.
        return tqdm(total=total, initial=initial, desc=label, unit="B", unit_scale=True, unit_divisor=1024,
                    file=sys.stderr, ncols=size.columns or 80, nrows=size.lines or 24)

    return bar


def _fail(args, message: str, code: int, status: int | None = None) -> int:
    print(f"wogit: {message}", file=sys.stderr)
    if args.json:
        print(json.dumps({"error": message, "status": status, "exit_code": code}, ensure_ascii=False))
    return code
