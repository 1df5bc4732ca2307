"""`samseg classes SOURCE` (the class table) and `samseg classes edit SOURCE --rename/--merge/--split/--drop`
(a person's corrections, written as a new run): samseg.engine.curate."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "classes", help="a run's classes (id, name, masks, pixels), and edits of them: rename, merge, split, drop",
        description="`samseg classes RUN_ID_OR_DIR` prints the class table of an image run or image dir. "
        "`samseg classes edit RUN_ID_OR_DIR --rename 3=road --merge 3,7 --split 5 --drop 9 --out DIR` applies "
        "those edits (merges, splits and drops first, renames last; class ids are the source's) and writes a "
        "new image dir, logged as a new MLflow run tagged with the run it edits (--no-track: the dir only). "
        "The edit list is recorded in its summary.json. A dataset batch (its OUT folder, or its MLflow batch "
        "run) is edited as a whole: its class ids are the same in every image, so the edits apply to all of "
        "them, and OUT gets the edited batch (image dirs, classes.json, contact sheet, a new batch run).",
        epilog="examples:\n  samseg classes 3e759092\n  samseg classes edit 3e759092 --merge 1,4 --rename 0=sky "
               "--rename 1=building --out out/curated\n  samseg classes edit out/dataset --merge 2,5 --rename 2=tree "
               "--out out/dataset-curated",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("words", nargs="+", metavar="RUN_ID_OR_DIR", help="a source, or `edit` and a source")
    p.add_argument("--rename", action="append", default=[], metavar="C=NAME", help="give class C a name")
    p.add_argument("--merge", action="append", default=[], metavar="C1,C2,...", help="one class of these (C1's id and name)")
    p.add_argument("--split", action="append", default=[], metavar="C[:EPS]",
                   help="re-cluster class C's masks alone, at EPS (default: half the run's eps)")
    p.add_argument("--drop", action="append", default=[], metavar="C", help="class C's masks become noise")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="where the edit goes: the edited image dir (DIR/<image name>/), or a dataset batch's edited batch (DIR itself)")
    p.add_argument("--no-track", action="store_true", help="write the dir only, log no MLflow run")
    p.add_argument("--register-classes", default=None, metavar="NAME",
                   help="a dataset batch's edit: register the edited classes as a new version of the MLflow model NAME "
                   "(then --classes-from models:/NAME/VERSION)")
    from samseg.apps.cli.common import experiment_name

    p.add_argument("--experiment", default=None, type=experiment_name, help="MLflow experiment of the new run")
    p.set_defaults(handler=run_classes, subparser=p)


def run_classes(args: argparse.Namespace) -> int:
    from samseg.apps.cli.common import UsageError, classes_ref, experiment
    from samseg.core.curation import EditError, parse_edits
    from samseg.engine.segment import shown_name

    words = list(args.words)
    editing = words[0] == "edit"
    if editing:
        words = words[1:]
    if len(words) != 1:
        raise UsageError("name one run id or image dir (`samseg classes [edit] RUN_ID_OR_DIR`)")
    try:
        edits = parse_edits(args.rename, args.merge, args.split, args.drop)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    asked = editing
    if edits and not editing:
        editing = True  # the flags say it
    if editing and not edits:
        raise UsageError("an edit needs --rename, --merge, --split or --drop")
    if editing and args.out is None:
        raise UsageError("classes edit needs --out DIR: where the edit goes" if asked else
                         "--rename, --merge, --split and --drop edit the classes (as `classes edit`): give --out DIR, "
                         "where the edit goes")
    if args.register_classes and (not editing or args.no_track):
        raise UsageError("--register-classes needs `edit` and MLflow tracking (no --no-track)")
    try:
        source = classes_ref(words[0])  # a run id prefix is the run it starts
        from samseg.engine.curate_dataset import is_dataset_source

        dataset = is_dataset_source(source)  # a dataset batch: its classes are edited across all its images
        if not editing:
            from samseg.engine.curate import show
            from samseg.engine.curate_dataset import show_dataset

            _print_table(show_dataset(source) if dataset else show(source), shown_name)
            return 0
        from samseg.engine.curate import edit
        from samseg.engine.curate_dataset import edit_dataset
        from samseg.engine.publish import Tracking

        tracking = Tracking(track=not args.no_track, experiment=experiment(args))
        if args.register_classes and not dataset:
            raise UsageError("--register-classes registers a dataset batch's classes; this source is one image's")
        if dataset:
            res = edit_dataset(source, edits, args.out, tracking, register=args.register_classes)
        else:
            res = edit(source, edits, args.out, tracking)
    except EditError as exc:  # a bad edit (unknown class, --out the source's own, ...): nothing written, as --merge 0,0
        raise UsageError(str(exc)) from None
    _print_table(res["classes"], shown_name)
    where = res["out"] if dataset else res["out_dir"]
    kind = "MLflow batch run" if dataset else "MLflow run"
    print(f"-> {shown_name(where)}" + (f", {kind} {res['mlflow_run_id']}" if res["mlflow_run_id"] else ""))
    if res.get("not_kept"):  # a merge, split or drop refits the table on this batch: say what it leaves out
        print(f"warning: classes {', '.join(map(str, res['not_kept']))} of the source's table have no mask in this "
              "batch: the edited table does not keep them (names alone keep every class)", file=sys.stderr)
    if res.get("registered"):
        print(f"registered: {res['registered']['model_uri']} (--classes-from {res['registered']['model_uri']})")
    return 0


def _print_table(rows: list[dict[str, Any]], shown: Any) -> None:
    last = "IMAGES" if rows and "images" in rows[0] else "PIXELS"  # a dataset's class: the images it is in
    print(f"{'ID':>4}  {'NAME':30}  {'MASKS':>6}  {last:>10}")
    from samseg.core.types import class_label

    for r in rows:
        print(f"{r['id']:>4}  {shown(class_label(r['id'], r['name']))[:30]:30}  {r['masks']:>6}  {r[last.lower()]:>10}")
    if not rows:
        print("no classes", file=sys.stderr)
