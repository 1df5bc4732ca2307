"""The config flags of `samseg segment`: one flag per field of the AMG / pool / cluster
configs, the PipelineConfig they build (preset, then --model/--precision, then flags), and how a
bad value is said: by its flag, in the config's words (flag_message, flag_errors)."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any, Optional

from samseg.apps.cli.common import UsageError



def _auto_or(cast: Any, what: str) -> Any:
    """An argparse type: "auto", or the value `cast` makes of the text."""
    def parse(raw: str) -> Any:
        if raw.strip().lower() == "auto":
            return "auto"
        try:
            return cast(raw)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{raw!r} is not {what} or auto") from None

    return parse


eps_value = _auto_or(float, "a number")  # --eps: a number, or the knee of the k-distance curve (core.sweep)
tile_size = _auto_or(int, "a tile size in pixels")  # --tile: pixels (0 = off), or 1024-px tiles for images over 2048 px


_TYPES: dict[str, Any] = {"cluster.eps": eps_value}
_METAVARS = {"cluster.eps": "FLOAT|auto"}  # a flag whose type takes more than its field's type says


def add_config_flags(p: argparse.ArgumentParser) -> None:
    """One flag per knob of every config section with FLAGS (amg, pool, cluster), generated from
    the config schema (samseg.core.config), so a new field or section gets its flags for free."""
    from samseg.core.config import DEFAULT, SECTION_CLASSES

    for section, cls in SECTION_CLASSES.items():
        if cls.FLAGS:
            add_section_flags(p.add_argument_group(cls.TITLE or section), cls, getattr(DEFAULT, section))


def _shown(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def preset_values(section: str, name: str, defaults: Any) -> str:
    """A knob's value in the 'default' preset (`defaults`), as it runs (eps auto shows as auto),
    then where another preset differs: "0.06; notebook: 0.06; smoke: 8" → what the help shows."""
    from samseg.core.config import PRESETS

    def value(sec: Any) -> str:
        if (section, name) == ("cluster", "eps") and getattr(sec, "eps_auto", False):
            return "auto"
        return _shown(getattr(sec, name, None))

    first = value(defaults)
    others = [f"{preset}: {value(getattr(cfg, section))}" for preset, cfg in PRESETS.items()
              if preset != "default" and hasattr(getattr(cfg, section), name) and value(getattr(cfg, section)) != first]
    return "; ".join([first, *others])


def add_section_flags(group: Any, cls: type, defaults: Any) -> None:
    """`--field-name` (dest "section.field", default None = the preset's value) for each knob of
    config section `cls`; help and choices are the knob's, the shown default the 'default' preset's."""
    from samseg.core.config import field_types, knob_of

    types = field_types(cls)
    for f in dataclasses.fields(cls):
        if types[f.name] is bool:
            continue  # switches get their own flag (eps_auto: --eps auto)
        k, dest = knob_of(f), f"{cls.SECTION}.{f.name}"
        choices = None if k.invalid else k.choices  # a knob with its own message for a bad value says it itself
        shown = preset_values(cls.SECTION, f.name, defaults)
        group.add_argument(
            flag_of(f.name),
            dest=dest,
            type=_TYPES.get(dest, types[f.name] if choices is None else str),
            choices=choices,
            default=None,
            metavar=None if choices else _METAVARS.get(dest, types[f.name].__name__.upper()),
            help=f"{k.help + '; ' if k.help else ''}{dest} (default: {shown})",
        )


_BOUNDS = {"greater_than": ("gt", ">"), "greater_than_equal": ("ge", ">="), "less_than": ("lt", "<"),
           "less_than_equal": ("le", "<=")}  # pydantic's bound errors, said as `samseg segment` says them


def flag_errors(exc: Any) -> str:
    """A pydantic ValidationError of the cluster flags as one line naming each flag, in the words
    `samseg segment` uses for the same value: "--eps must be > 0"."""
    import re

    def line(e: dict[str, Any]) -> str:
        if not e.get("loc"):  # the config's own check ("cluster.eps must be ..."), not pydantic's "Value error, ..."
            said = str((e.get("ctx") or {}).get("error") or e["msg"])
            return re.sub(r"^[a-z]+\.([a-z_]+)\b", lambda m: flag_of(m.group(1)), said)
        flag, bound = flag_of(str(e["loc"][-1])), _BOUNDS.get(e.get("type", ""))
        if bound is not None and bound[0] in (e.get("ctx") or {}):
            value = e["ctx"][bound[0]]
            return f"{flag} must be {bound[1]} {value:g}" if isinstance(value, (int, float)) else f"{flag} must be {bound[1]} {value}"
        return f"{flag}: {e['msg']}"

    return "; ".join(line(e) for e in exc.errors())


def flag_of(field: str) -> str:
    """The command-line flag of a config field: min_samples -> --min-samples."""
    return "--" + field.replace("_", "-")


def add_tile_flags(p: argparse.ArgumentParser) -> None:
    from samseg.core.config import AUTO_TILE_SIZE, TILE_AUTO_SIDES, TileConfig, knob_of

    d = TileConfig()
    helps = {f.name: knob_of(f).help for f in dataclasses.fields(TileConfig)}
    g = p.add_argument_group(TileConfig.TITLE)
    g.add_argument("--tile", dest="tile.size", type=tile_size, default=None, metavar="SIZE|auto",
                   help=f"cut the image into SIZE-px tiles, each segmented at full resolution; auto = "
                        f"{AUTO_TILE_SIZE}-px tiles for images whose long side is over {TILE_AUTO_SIDES * AUTO_TILE_SIZE} px "
                        "(default: no tiling)")
    g.add_argument("--tile-overlap", dest="tile.overlap", type=int, default=None, metavar="PX",
                   help=f"{helps['overlap']}; objects cut by a seam are joined there (default {d.overlap})")
    g.add_argument("--tile-merge-iou", dest="tile.merge_iou", type=float, default=None, metavar="FLOAT",
                   help=f"{helps['merge_iou']} (default {d.merge_iou})")


def add_features_flags(p: argparse.ArgumentParser) -> None:
    """--features NAME, --features-size PX, --features-checkpoint FILE (samseg.core.backbones)."""
    from samseg.core.backbones import BACKBONE_NAMES
    from samseg.core.config import FeaturesConfig, knob_of

    helps = {f.name: knob_of(f).help for f in dataclasses.fields(FeaturesConfig)}
    g = p.add_argument_group(FeaturesConfig.TITLE)
    g.add_argument("--features", dest="features_name", choices=BACKBONE_NAMES, default=None, metavar="NAME",
                   help=f"{helps['name']}: {', '.join(BACKBONE_NAMES)}. sam = SAM's own encoder (the original method, "
                        "no second pass); default: the preset's (dinov2-b for 'default', sam with --model tiny-random). "
                        "A backbone without a measured eps clusters with --eps auto unless --eps is given")
    g.add_argument("--features-size", dest="features.input_size", type=int, default=None, metavar="PX",
                   help=f"{helps['input_size']} (518 for DINOv2, 512 for DINOv3)")
    g.add_argument("--features-checkpoint", default=None, metavar="FILE",
                   help="the backbone's weights file (.safetensors), e.g. for offline use (default: the verified download)")


def add_names_flags(p: argparse.ArgumentParser) -> None:
    """--names VOCAB, --namer NAME (samseg.core.config.NamesConfig)."""
    from samseg.core.config import DEFAULT, NamesConfig, knob_of
    from samseg.core.namers import NAMER_NAMES

    helps = {f.name: knob_of(f).help for f in dataclasses.fields(NamesConfig)}
    g = p.add_argument_group(NamesConfig.TITLE)
    g.add_argument("--names", dest="names.vocabulary", default=None, metavar="VOCAB",
                   help=f"name the classes from {helps['vocabulary']} (default: {preset_values('names', 'vocabulary', DEFAULT.names)}); "
                        "an unnamed class stays class_<c>")
    g.add_argument("--namer", dest="names.namer", choices=NAMER_NAMES, default=None, metavar="NAME",
                   help=f"{helps['namer']}: {', '.join(NAMER_NAMES)} (default {DEFAULT.names.namer}; tiny-random: random "
                        "weights, meaningless names)")
    g.add_argument("--names-min-prob", dest="names.min_prob", type=float, default=None, metavar="P",
                   help=f"{helps['min_prob']} (default {DEFAULT.names.min_prob})")


def config_from_args(args: argparse.Namespace) -> "Any":
    """The PipelineConfig of the flags (samseg.core.config.configure: preset, --model, --features,
    --precision, then every config flag given). Invalid values raise UsageError with the config's
    own message."""
    from samseg.core.config import configure

    knobs = {key: value for key, value in vars(args).items() if "." in key}
    if knobs.get("tile.size") and getattr(args, "save_features", False):
        raise UsageError("--save-features keeps one image's C×64×64 features; a tiled image has one grid per tile "
                         "(they are in the stage cache): leave out --tile or --save-features")
    try:
        return configure(args.preset, args.model, getattr(args, "precision", None),
                         features=getattr(args, "features_name", None), **knobs)
    except ValueError as exc:
        raise UsageError(flag_message(str(exc), getattr(args, "subparser", None))) from None


def flag_message(message: str, parser: Optional[argparse.ArgumentParser]) -> str:
    """A config error as the command line says it: "cluster.eps must be > 0" -> "--eps must be > 0",
    "tile.size ..." -> "--tile ..." (the flag whose dest is the key; the UI names its form field: samseg.apps.ui.validation)."""
    import re

    flags = {a.dest: a.option_strings[-1] for a in getattr(parser, "_actions", ()) if a.option_strings}
    return re.sub(r"^[a-z]+\.[a-z_]+\b", lambda m: flags.get(m.group(0), m.group(0)), message)
