"""`samseg export RUN_ID_OR_OUT_DIR --format F --out DIR`: results → labelling tools' files.

The source is a samseg output dir (one image dir, or a batch's OUT with one dir per image)
or an MLflow run id (an image run, or a batch run: its nested image runs). Formats and their
layouts: samseg.edges.annotations. Writes only the export's own files into DIR and replaces
only files an earlier export wrote there (samseg.edges.owned_files); deletes nothing.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any


def add_parser(sub: Any) -> None:
    from samseg.edges.annotations import FORMATS

    p = sub.add_parser("export", help="export results for labelling tools and trainers",
                       description="Write a samseg output dir or MLflow run as COCO, CVAT (COCO 1.0), Label Studio "
                       "(tasks + labeling config), YOLO segmentation or index PNGs.")
    p.add_argument("source", metavar="RUN_ID_OR_OUT_DIR")
    p.add_argument("--format", required=True, choices=FORMATS)
    p.add_argument("--out", type=Path, metavar="DIR", help="write the export's files here (or, Label Studio: --to)")
    p.add_argument("--to", default=None, metavar="URL",
                   help="labelstudio: push into the Label Studio at URL (token: $LABEL_STUDIO_API_KEY): one task per "
                        "image, its classes as predictions; pushing again updates, never duplicates")
    p.add_argument("--project", default="samseg", metavar="NAME_OR_ID",
                   help="--to: the Label Studio project (id, or exact title: created if missing; default %(default)s)")
    p.add_argument("--image-root", default=None, metavar="URL_OR_DIR",
                   help="Label Studio: image location prefix (default: the recorded image path or s3:// URI)")
    p.add_argument("--copy-images", action="store_true",
                   help="cvat, labelstudio, yolo-seg: also copy the input images into DIR/images/ (each checked "
                        "against the sha256 its run recorded)")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(handler=run_export, subparser=p)


def run_export(args: argparse.Namespace) -> int:
    from samseg.apps.cli.common import UsageError, print_error
    from samseg.core.errors import SamsegError, exit_code_of
    from samseg.edges.annotations import image_dirs, read_image_dirs, write_export
    from samseg.edges.labelstudio import LabelStudioError
    from samseg.edges.mlflow.run_dirs import download_image_dirs
    from samseg.edges.owned_files import check_complete

    if (args.out is None) == (args.to is None):
        raise UsageError("give --out DIR (write files) or --to URL (push into Label Studio), one of them")
    if args.to is not None and args.format != "labelstudio":
        raise UsageError(f"--to pushes into Label Studio: it needs --format labelstudio, not {args.format}")
    if args.to is not None:
        from samseg.edges.labelstudio import check_url

        try:
            check_url(args.to)
        except LabelStudioError as exc:
            raise UsageError(f"--to: {exc}") from None
    try:
        with tempfile.TemporaryDirectory(prefix="samseg-export-") as tmp:
            src = Path(args.source)
            if src.exists():
                dirs = image_dirs(src)
                # a batch OUT (or an image dir in one) whose last batch did not finish is not exported
                check_complete(str(src if dirs != [src] else src.parent), str(src))
                run_ids: dict[Path, str] = {}
            else:
                from samseg.apps.cli.common import run_ref

                run_ids = download_image_dirs(run_ref(args.source), Path(tmp))
                dirs = list(run_ids)
            results = read_image_dirs(dirs)
            if args.to is not None:
                return _push(args, results, run_ids)
            files = write_export(args.format, results, args.out, image_root=args.image_root,
                                 copy_images=args.copy_images)
    except (SamsegError, OSError) as exc:  # export, tracking, storage, Label Studio, the user's files in --out
        print_error(exc)
        return exit_code_of(exc)  # FilesRefused: 2, the user's files in --out (samseg.core.errors)
    from samseg.edges.annotations import categories

    from samseg.apps import count

    print(f"{args.format}: {count(len(results), 'image')} -> {args.out} ({count(len(files), 'file')}); "
          f"{categories(results).line()}")
    if args.format == "labelstudio" and args.image_root is None and not args.copy_images:
        print("note: tasks.json names each image by its path or s3:// URI, which Label Studio shows only when it can "
              "read it: pass --image-root URL_OR_DIR (where the images are served), or push with --to URL "
              "(the push uploads them)", file=sys.stderr)
    if args.format == "yolo-seg" and not args.copy_images:
        print("note: data.yaml names images/, which is not written: --copy-images copies the images there",
              file=sys.stderr)
    return 0


def _push(args: argparse.Namespace, results: list[Any], run_ids: dict[Path, str]) -> int:
    from samseg.edges.labelstudio import push

    print(f"labelstudio: {push(args.to, results, args.project, run_ids).line()}")
    return 0
