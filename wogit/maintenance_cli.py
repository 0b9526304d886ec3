"""``wogit gc`` and ``wogit fsck``: maintenance of a registry repository, beside a running server.

Exit codes: 0 done (fsck: no problem), 1 fsck found problems, or gc could not sweep an unused upload
(a full disk: deleting a packed ref rewrites packed-refs; each is named on standard error), 2 usage error.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from dataclasses import asdict

from wogit import errors
from wogit.settings import Settings

DEFAULT_GRACE = "1h"
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def duration(text: str) -> float:
    """Seconds from ``90``, ``90s``, ``30m``, ``1h``, ``7d``."""
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 90s, 30m, 1h, 7d)")
    return float(match.group(1)) * _UNITS[match.group(2)]


def add_parsers(commands) -> None:
    data_help = f"the registry's bare git repository (WOGIT_DATA; default {Settings().data})"
    gc = commands.add_parser("gc", help="remove maps and configs that no tag uses, after a grace period",
                             description="Sweep the maps and configs no tag uses and untouched for the grace "
                                         "period, then prune the git objects nothing reaches. Safe while "
                                         "servers run on the same repository.")
    gc.add_argument("--data", help=data_help)
    gc.add_argument("--grace", type=duration, default=duration(DEFAULT_GRACE),
                    help=f"keep unused uploads touched more recently than this (default {DEFAULT_GRACE})")
    gc.add_argument("--dry-run", action="store_true", help="report what would be swept; change nothing")
    gc.add_argument("--json", action="store_true", help="print the report as JSON")
    fsck = commands.add_parser("fsck", help="re-hash every map and config and check every ref",
                               description="Re-hash every stored map and config against its digest, check "
                                           "every ref with the registry's rules, and run git fsck --strict. "
                                           "Exits 1 with a report on any problem.")
    fsck.add_argument("--data", help=data_help)
    fsck.add_argument("--json", action="store_true", help="print the report as JSON")


def run(args) -> int:
    from wogit import maintenance
    from wogit.store import Store

    data = os.path.abspath(Settings.from_env(data=args.data).data)
    if not os.path.isfile(os.path.join(data, "HEAD")):
        print(f"wogit {args.command}: {data} is not a registry repository")
        return 2
    store = Store(data)
    try:
        return _run(args, store)
    except errors.WogitError as exc:  # a damaged repository: say so, as fsck would
        print(f"wogit {args.command}: {exc.msg}", file=sys.stderr)
        return 1


def _run(args, store) -> int:
    from wogit import maintenance

    if args.command == "gc":
        report = maintenance.gc(store, args.grace, args.dry_run)
        if args.json:
            print(json.dumps(asdict(report), indent=1, sort_keys=True))
            return 1 if report.problems else 0
        for problem in report.problems:
            print(f"wogit gc: {problem}", file=sys.stderr)
        verb = "would sweep" if args.dry_run else "swept"
        for swept in report.swept:
            print(f"{verb} {swept.kind} {swept.digest} ({swept.size} bytes)")
        pruned = ("" if args.dry_run else
                  f"; pruned {report.pruned_objects} objects, freed {report.freed_bytes} bytes")
        print(f"{verb} {len(report.swept)} unused uploads; kept {report.kept_in_use} in use and "
              f"{report.kept_in_grace} within the grace period{pruned}")
        return 1 if report.problems else 0
    report = maintenance.fsck(store)
    if args.json:
        print(json.dumps(asdict(report), indent=1, sort_keys=True))
    else:
        for problem in report.problems:
            print(f"problem: {problem}")
        print(f"checked {report.maps} maps, {report.configs} configs, {report.tags} tags and "
              f"{report.histories} metadata histories: "
              f"{len(report.problems) or 'no'} problem{'s' if len(report.problems) != 1 else ''}")
    return 1 if report.problems else 0
