"""`samseg cache info|prune`: what the stage cache holds, and its size bound (samseg.edges.cache_bound)."""

from __future__ import annotations

import argparse
from typing import Any

def add_parser(sub: Any) -> None:
    from samseg.apps.cli.common import CACHE_MAX_HELP

    p = sub.add_parser("cache", help="what the stage cache holds; shrink it to its size bound",
                       description="The stage cache keeps each image's encoder, AMG and pooling results, so a rerun "
                       "computes only what changed. `samseg segment` and `samseg recluster` shrink it to its bound at "
                       "their end, least recently used entries first.")
    csub = p.add_subparsers(title="actions", metavar="ACTION")
    for name, handler, helptext in (("info", run_info, "where the cache is, its entries and size per stage"),
                                    ("prune", run_prune, "remove the least recently used entries down to the bound")):
        a = csub.add_parser(name, help=helptext, description=helptext)
        a.add_argument("--cache", default=None, metavar="DIR", help="the cache root (default: $SAMSEG_CACHE, else "
                       "$SAMSEG_HOME/cache)")
        a.add_argument("--max", dest="cache_max", default=None, metavar="SIZE", help=CACHE_MAX_HELP)
        a.set_defaults(handler=handler, subparser=a)
    p.set_defaults(subparser=p)


def _bound(args: argparse.Namespace) -> int:
    from samseg.apps.cli.common import UsageError
    from samseg.edges.cache_bound import max_bytes

    try:
        return max_bytes(args.cache_max)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _root(args: argparse.Namespace) -> str:
    from samseg.apps.cli.common import UsageError
    from samseg.edges.cache import default_cache_root

    root = args.cache or default_cache_root()
    if root.startswith("s3://"):
        raise UsageError(f"{root}: an S3 cache is bounded by the bucket's lifecycle rules, not by samseg")
    return root


def run_info(args: argparse.Namespace) -> int:
    from samseg.edges.cache_bound import human, scan

    root, limit = _root(args), _bound(args)
    info = scan(root)
    print(f"stage cache: {root}")
    print(f"{len(info.entries)} entries, {human(info.total)} of a {human(limit)} bound")
    for stage, (n, size) in info.by_stage().items():
        print(f"  {stage:9} {n:6} entries  {human(size):>10}")
    return 0


def run_prune(args: argparse.Namespace) -> int:
    from samseg.edges.cache_bound import human, prune, scan

    root, limit = _root(args), _bound(args)
    removed, freed = prune(root, limit)
    print(f"stage cache {root}: removed {removed} entries ({human(freed)}); {human(scan(root).total)} left "
          f"of a {human(limit)} bound")
    return 0
