"""``wogit user add|remove|list``: manage the htpasswd file that ``wogit serve`` reads.

The file is the same one ``htpasswd -B`` writes, so either tool works on it; this
one rewrites it atomically with mode 0600 and never shows a hash or a password.
Passwords come from a prompt without echo, or from one line of standard input
(``--password-stdin``) so they never appear in a command line or shell history.

Exit codes: 0 ok, 1 the user was not there (remove) or the file could not be
written, 2 a usage error (no file given, bad name, empty or mismatched password).
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys

from wogit import auth

ENVIRONMENT = "WOGIT_AUTH_FILE"


def _cost(text: str) -> int:
    try:
        cost = int(text)
    except ValueError:
        cost = 0
    if not 4 <= cost <= 31:
        raise argparse.ArgumentTypeError(f"bcrypt cost must be a number from 4 to 31, not {text!r}")
    return cost


def add_parser(subcommands) -> None:
    """Register ``user`` and its commands on the top-level parser's subcommands."""
    user = subcommands.add_parser("user", help="manage the users of the htpasswd file",
                                  description="Manage the users of the htpasswd file that `wogit serve` reads.")
    commands = user.add_subparsers(dest="user_command", required=True, metavar="{add,remove,list}")
    add = commands.add_parser("add", help="add a user, or change a user's password")
    add.add_argument("name", help="user name (1-128 characters, no ':' or whitespace)")
    add.add_argument("--password-stdin", action="store_true",
                     help="read the password from one line of standard input instead of prompting")
    add.add_argument("--cost", type=_cost, default=auth.DEFAULT_COST,
                     help=f"bcrypt cost, 4-31 (default {auth.DEFAULT_COST})")
    remove = commands.add_parser("remove", help="remove a user")
    remove.add_argument("name")
    listing = commands.add_parser("list", help="list the user names")
    for command in (add, remove, listing):
        command.add_argument("--auth-file", metavar="FILE",
                             help=f"the htpasswd file ({ENVIRONMENT}); created by `add` if missing")


def run(args) -> int:
    """Execute a parsed ``wogit user`` command; return the exit code."""
    where = f"wogit user {args.user_command}"
    path = args.auth_file or os.environ.get(ENVIRONMENT)
    if not path:
        return _fail(where, f"no user file: give --auth-file FILE or set {ENVIRONMENT}", 2)
    try:
        if args.user_command == "add":
            return _add(where, path, args)
        if args.user_command == "remove":
            if not auth.remove_user(path, args.name):
                return _fail(where, f"no user {args.name!r} in {path}", 1)
            print(f"removed user {args.name}")
            return 0
        users = auth.Users(path)
        for name in users.names():
            print(name)
        for problem in users.problems:
            print(f"{where}: {problem}", file=sys.stderr)
        return 0
    except ValueError as exc:
        return _fail(where, str(exc), 2)
    except OSError as exc:
        return _fail(where, f"cannot update {path}: {exc.strerror or exc}", 1)


def _add(where: str, path: str, args) -> int:
    auth.check_name(args.name)  # before asking for a password
    if args.password_stdin:
        password = sys.stdin.readline().removesuffix("\n").removesuffix("\r")
    else:
        try:
            password = getpass.getpass(f"Password for {args.name}: ")
            if getpass.getpass("Again: ") != password:
                return _fail(where, "the passwords differ", 2)
        except EOFError:
            return _fail(where, "no password given", 2)
    if not password:
        return _fail(where, "refusing an empty password", 2)
    created = auth.add_user(path, args.name, password, cost=args.cost)
    print(f"added user {args.name}" if created else f"updated password of {args.name}")
    return 0


def _fail(where: str, message: str, code: int) -> int:
    print(f"{where}: {message}", file=sys.stderr)
    return code
