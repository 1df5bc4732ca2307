"""`samseg` command line: segment, weights, eval (+ commands other modules register).

`segment` runs through the engine (samseg.apps.cli.segment.run_segment; the Prefect flows with --orchestrator prefect).

Exit codes: 0 = everything done, 1 = some images (or the command's work) failed,
2 = usage error (bad flag or config value), 130 = interrupted (Ctrl-C), 143 = stopped by
SIGTERM (samseg.edges.shutdown: both start nothing new and leave no half-written output).
Expected errors print ONE line ("error: <name>: <problem>") and no traceback; an
unexpected exception on one image is reported the same way, its traceback is logged at
debug level (shown with --verbose), and the batch goes on.

Adding a subcommand: write a module with `add_parser(subparsers)` that creates its
parser and calls `parser.set_defaults(handler=fn)` where `fn(args) -> int`, then list
the module in COMMAND_MODULES. Keep that module's top-level imports light: every
module listed is imported to build `samseg --help`.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from pathlib import Path
from typing import Any, Callable, NoReturn


from samseg.apps.cli.common import UsageError, print_error
from samseg.apps.cli.config import add_config_flags as _add_config_flags
from samseg.apps.cli.config import add_tile_flags as _add_tile_flags
from samseg.core.config import PRECISION_REQUESTS
from samseg.edges.logs import setup_logging
from samseg.sam.kernels import KERNELS
log = logging.getLogger("samseg.apps.cli")

# Modules providing add_parser(subparsers): runs adds recluster, runs, serve, sweep.
COMMAND_MODULES: list[str] = ["samseg.apps.cli.runs", "samseg.apps.cli.ui", "samseg.apps.cli.export", "samseg.apps.cli.cache",
                                 "samseg.apps.cli.classes"]

# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv[0] if argv else None)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help → 0, bad flag → 2
        return int(exc.code or 0) if not isinstance(exc.code, str) else 2
    setup_logging(getattr(args, "verbose", False))
    _line_buffered_stdout()
    handler: Callable[[argparse.Namespace], int] | None = getattr(args, "handler", None)
    if handler is None:  # a command group without its action, or no command at all
        getattr(args, "subparser", parser).print_help(sys.stderr)
        return 2
    from samseg.edges import shutdown

    with shutdown.handled(getattr(args, "stop_hint", None)):
        try:
            rc = handler(args)
            shutdown.check()  # a signal that a flow swallowed still ends the command as one
            return rc
        except UsageError as exc:
            print(f"{args.subparser.short_usage()}{args.subparser.prog}: error: {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            return _interrupted(args)
        except BrokenPipeError as exc:  # `samseg runs compare | head`: the reader has what it wanted
            if _stdout_gone():
                return _pipe_closed()
            print_error(f"unexpected BrokenPipeError: {exc}")  # another pipe or socket: not the reader's choice
            return 1
        except Exception as exc:  # noqa: BLE001 — one line, traceback only with --verbose
            from samseg.core.errors import SamsegError, exit_code_of, one_line

            log.debug("error", exc_info=True)
            if shutdown.requested():  # what a stop broke (a Ctrl-C to the process group kills Prefect's
                return _interrupted(args)  # temporary server too, and the flow's next call fails) is the stop
            if isinstance(exc, SamsegError) or type(exc).__module__.startswith("samseg."):  # expected: one line
                print_error(one_line(exc))
            else:
                print_error(f"unexpected {type(exc).__name__}: {one_line(exc)}")
            return exit_code_of(exc)  # the taxonomy's exit code (samseg.core.errors), decided nowhere else


RESUMES = "a rerun resumes from the stage cache"  # a command's stop_hint: what its stopped work left (segment, recluster)


def _interrupted(args: argparse.Namespace) -> int:
    from samseg.edges import shutdown

    hint = getattr(args, "stop_hint", None)
    print("interrupted" + (f" ({hint})" if hint else ""), file=sys.stderr)
    return shutdown.exit_code()


def _stdout_gone() -> bool:
    """True when stdout is a pipe whose reader has gone (poll says POLLERR on its write end)."""
    import select

    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll, or a stdout without a file descriptor
        return False


def _pipe_closed() -> int:
    """stdout's reader went away: exit as a shell's pipeline would (128 + SIGPIPE), silently; stdout
    now writes to /dev/null, so the interpreter's last flush does not fail again."""
    import os
    import signal

    from samseg.core.errors import EXIT_SIGNAL_BASE

    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return EXIT_SIGNAL_BASE + signal.SIGPIPE


def _line_buffered_stdout() -> None:
    """Per-image lines reach a redirected stdout (a log file, `| tee`) as they are printed,
    not in one block at the end of the batch (Python block-buffers a stdout that is not a TTY)."""
    reconfigure = getattr(sys.stdout, "reconfigure", None)
    if reconfigure is not None:
        try:
            reconfigure(line_buffering=True)
        except (ValueError, OSError):  # a closed or exotic stream: leave it as it is
            pass


class Parser(argparse.ArgumentParser):
    """argparse with a usage error a person can act on: a short usage line, then the error line
    last, with "did you mean" for a mistyped flag or command; an unknown flag is reported by the
    command it was given to, not by the top-level parser. No abbreviated flags: `--min-sample` is
    a typo with its "did you mean", not silently --min-samples (and not another flag once one is added)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def parse_args(self, args: Any = None, namespace: Any = None) -> argparse.Namespace:  # type: ignore[override]
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            getattr(parsed, "subparser", self).unrecognized(extras)
        return parsed

    def unrecognized(self, extras: list[str]) -> None:
        flags = [s for a in self._actions for s in a.option_strings]
        first = next((x for x in extras if x.startswith("-")), extras[0])
        self.error(f"unrecognized argument {first}" + did_you_mean(first.split("=", 1)[0], flags))

    def error(self, message: str) -> NoReturn:
        import re

        m = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if m:
            message += did_you_mean(m.group(1), re.findall(r"'([^']*)'", m.group(2)))
        self.exit(2, f"{self.short_usage()}{self.prog}: error: {message}\n")

    def short_usage(self) -> str:
        """One usage line: the positionals only, and where the options are listed."""
        shown = [a.metavar or a.dest for a in self._get_positional_actions() if a.help != argparse.SUPPRESS]
        return f"usage: {self.prog} [options] {' '.join(map(str, shown))}  ({self.prog} --help lists them)\n"


def did_you_mean(word: str, choices: list[str]) -> str:
    """"; did you mean X?" for the closest of `choices`, or ""."""
    import difflib

    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else ""


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The `samseg` parser. Given the command a command line starts with (`segment`, `weights`,
    `eval`), only that command's parser is built: `samseg segment` neither imports the other
    commands' modules nor lists every weights file. Any other command, a mistyped one, or none
    (`samseg --help`) builds them all, so help and "did you mean" see every command."""
    parser = Parser(
        prog="samseg",
        description="Automatic semantic segmentation with Segment Anything: AMG masks, "
        "pooled encoder embeddings, density clustering into classes.",
    )
    parser.add_argument("--version", action="version", version=f"samseg {_version()}")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")
    if command in BUILT_IN:
        BUILT_IN[command](sub, command)
        return parser
    for name, add in BUILT_IN.items():
        add(sub, name)
    for module in COMMAND_MODULES:
        importlib.import_module(module).add_parser(sub)
    return parser


def _version() -> str:
    from samseg import __version__

    return __version__


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging, tracebacks of unexpected errors")
    p.set_defaults(subparser=p)


# -------------------------------------------------------------------------- segment


SEGMENT_EXAMPLES = """examples:
  samseg segment photos/ --out out/run1                        # the default preset: vit_h masks, DINOv2-B, eps auto
  samseg segment photo.jpg --out out/nb --preset notebook      # the original notebook's settings
  samseg segment photos/ --out out/ds --classes dataset        # one set of classes for every image
  samseg segment big.tif --out out/geo --tile auto             # a large image, tile by tile
  samseg segment photos/ --out out/t --model tiny-random       # offline plumbing check (meaningless classes)
  samseg segment s3://bucket/in/ --out s3://bucket/out/        # S3 in and out
then: samseg runs list · samseg recluster RUN_ID --eps 0.1 --out out/re · samseg ui"""


def _add_segment_parser(sub: Any, name: str) -> None:
    from samseg.core.config import PRESETS
    from samseg.sam.model import MODEL_TYPES

    p = sub.add_parser(
        name,
        help="segment images into classes",
        description="Segment every image (the engine in this process, or the Prefect flows: --orchestrator); results go to OUT/<image stem>/ (a repeated "
        "stem gets -2, -3, ...). Flags left out take the preset's value.",
        epilog=SEGMENT_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR", help="image files, directories (not recursive) or globs")
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="output root; one sub-directory per image")
    p.add_argument("--model", choices=MODEL_TYPES, default=None, help="SAM variant (default: the preset's)")
    p.add_argument("--checkpoint", default=None, metavar="FILE", help="weights file (default: the verified cached official one)")
    p.add_argument("--preset", choices=tuple(PRESETS), default=None,
                   help="named config (default: default; smoke with --model tiny-random, whose random masks fail "
                        "SAM's filters)")
    p.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:N or mps")
    p.add_argument("--kernels", choices=KERNELS, default=None,
                   help="which code runs SAM's encoder and decoder: fast (samseg's, same outputs within fp32 rounding) "
                        "or sam (segment_anything's own modules); default $SAMSEG_KERNELS, else sam on CUDA, fast elsewhere")
    p.add_argument("--seed", type=int, default=0, help="tiny-random weights seed (default: %(default)s)")
    p.add_argument("--precision", choices=PRECISION_REQUESTS, default=None,
                   help="encoder/decoder precision (default fp32); auto = bf16 on a CUDA GPU with bf16 or a CPU with "
                   "AMX/AVX512-BF16, else fp32; fp16 needs CUDA. Thresholds and post-processing stay fp32")
    p.add_argument("--save-features", action="store_true",
                   help="also write features.npy (the C×gh×gw float32 grid the embeddings were pooled from)")
    _add_config_flags(p)
    from samseg.apps.cli.config import add_features_flags, add_names_flags

    add_features_flags(p)
    add_names_flags(p)
    _add_tile_flags(p)
    _add_common(p)
    from samseg.apps.cli import segment as cli_segment  # light module; Prefect/MLflow load only when a handler runs

    cli_segment.add_segment_arguments(p)
    p.set_defaults(handler=cli_segment.run_segment, stop_hint=RESUMES)


# -------------------------------------------------------------------------- weights


def _weights_names() -> tuple[str, ...]:
    """What `samseg weights download` takes: SAM checkpoints, feature backbones, class namers."""
    from samseg.sam.registry import downloadable

    return tuple(w.name for w in downloadable())


def _weights_name(name: str) -> str:
    """An argparse type: a name `samseg weights download` takes (argparse checks no choices of an
    empty nargs='*' list on Python 3.11, so the check is here)."""
    names = _weights_names()
    if name not in names:
        import difflib

        close = difflib.get_close_matches(name, names, n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        raise argparse.ArgumentTypeError(f"invalid choice: {name!r} (choose from {', '.join(names)}){hint}")
    return name


def _add_weights_parser(sub: Any, name: str) -> None:
    p = sub.add_parser(name, help="download or list SAM checkpoints, feature backbones and class namers",
                       description="Official SAM checkpoints, DINOv2/DINOv3 feature backbones and the CLIP class namer, "
                                   "sha256-checked, kept in $SAMSEG_HOME/checkpoints.")
    wsub = p.add_subparsers(title="actions", metavar="ACTION")
    d = wsub.add_parser("download", help="download and verify weights files (by name, or all a preset needs)")
    d.add_argument("names", nargs="*", metavar="NAME", type=_weights_name, help=" | ".join(_weights_names()))
    d.add_argument("--preset", default=None, metavar="PRESET",
                   help="every weights file the preset needs (its SAM model, feature backbone and namer), e.g. default")
    _add_common(d)
    d.set_defaults(handler=_run_weights_download)
    ls = wsub.add_parser("list", help="where each weights file is kept, whether it is present, and its licence")
    _add_common(ls)
    ls.set_defaults(handler=_run_weights_list)
    _add_common(p)


def _run_weights_download(args: argparse.Namespace) -> int:
    """Each file in turn (progress, licence line), its path printed; the ones that could not be
    fetched named together in one line at the end (exit 1)."""
    from samseg.apps.cli.common import UsageError, print_error
    from samseg.core.config import get_preset
    from samseg.sam.registry import find, missing_message, needed
    from samseg.sam.weights import CheckpointError, Weight

    wanted = [find(name) for name in args.names]
    if args.preset is not None:
        try:
            cfg = get_preset(args.preset)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        wanted += needed(cfg.model_type, cfg.features.name, namer=cfg.names.namer if cfg.names.enabled else None)
    if not wanted:
        raise UsageError("name the weights (e.g. vit_b dinov2-b) or --preset NAME")
    failed: list[tuple[Weight, CheckpointError]] = []
    for name, w in {w.name: w for w in wanted}.items():
        try:  # a file to fetch names its URL and licence as it starts
            print(w.download())
        except CheckpointError as exc:
            failed.append((w, exc))
    if failed:
        print_error(missing_message(failed))
        return 1
    return 0


def _run_weights_list(args: argparse.Namespace) -> int:
    from samseg.sam.registry import downloadable

    rows = [(w.name, "present" if w.present else "missing", str(w.path),
             w.licence + ("" if w.file and w.file.sha256 else " [sha256 not pinned: recorded at download]"))
            for w in downloadable()]
    if not sys.stdout.isatty():  # a script piping the rows: tab-separated, no header
        for row in rows:
            print("\t".join(row))
        return 0
    rows.insert(0, ("NAME", "STATUS", "FILE", "LICENCE"))  # a person reads aligned columns, named
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[3])
    return 0


# ----------------------------------------------------------------------------- eval


def _add_eval_parser(sub: Any, name: str) -> None:
    p = sub.add_parser(
        name,
        help="score predicted class maps against ground truth",
        description="PRED_DIR/<stem>/labels.png against GT_DIR/<stem>.png (0 = background): "
        "Hungarian-matched per-class IoU, mIoU, ARI, NMI.",
    )
    p.add_argument("pred_dir", type=Path, metavar="PRED_DIR")
    p.add_argument("gt_dir", type=Path, metavar="GT_DIR")
    p.add_argument("--csv", type=Path, default=None, metavar="FILE",
                   help="write the per-image table to FILE and the per-class table to FILE with suffix .classes.csv")
    p.add_argument("--ignore-index", type=int, default=None, metavar="ID", help="GT id excluded from scoring (e.g. 255)")
    _add_common(p)
    p.set_defaults(handler=_run_eval)


def _run_eval(args: argparse.Namespace) -> int:
    from samseg.core.eval import EvalInputError, evaluate_dirs

    try:
        per_image, per_class, summary = evaluate_dirs(args.pred_dir, args.gt_dir, ignore_index=args.ignore_index)
    except EvalInputError as exc:
        print_error(str(exc))
        return 1
    print("per-class IoU (GT class → matched predicted cluster id, -1 = unmatched)")
    print(per_class.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print("\nper image")
    print(per_image.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print(f"\nmean over {summary['n_images']} images: mIoU {summary['mean_miou']:.4f}  "
          f"ARI {summary['mean_ari']:.4f}  NMI {summary['mean_nmi']:.4f}")
    if summary.get("unscored_predictions"):
        print(f"not scored (no ground truth): {', '.join(summary['unscored_predictions'])}")
    if args.csv is not None:
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        per_image.to_csv(args.csv, index=False)
        per_class.to_csv(args.csv.with_suffix(".classes.csv"), index=False)
    return 0


# The commands this module adds, by name (build_parser builds one alone when a command line names it).
BUILT_IN: dict[str, Callable[[Any, str], None]] = {"segment": _add_segment_parser, "weights": _add_weights_parser,
                                              "eval": _add_eval_parser}


def run() -> None:
    """The `samseg` command (and `python -m samseg.apps.cli`): main(), then an exit that a
    thread still blocked on a frozen peer cannot hold after Ctrl-C / SIGTERM."""
    from samseg.edges import shutdown
    from samseg.edges.mlflow import process

    process.allow()  # this process is the command: its MLflow calls may run in a process of their own
    shutdown.exit_process(main())


if __name__ == "__main__":
    run()
