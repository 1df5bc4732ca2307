"""The config flags of `samseg segment`: one flag per field of the AMG / pool / cluster
configs, and the PipelineConfig they build (preset, then --model/--precision, then flags)."""

from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any

from samseg.apps.cli_common import UsageError
from samseg.core.config import ALGORITHMS

# CLI sections: flag group title and the config section whose every field becomes a flag.
_CONFIG_SECTIONS: tuple[tuple[str, str], ...] = (
    ("amg", "automatic mask generator (SAM's SamAutomaticMaskGenerator knobs)"),
    ("pool", "mask embedding pooling"),
    ("cluster", "clustering of mask embeddings"),
)


def eps_value(raw: str) -> Any:
    """--eps: a number, or "auto" (the knee of the k-distance curve, samseg.core.sweep)."""
    if raw.strip().lower() == "auto":
        return "auto"
    try:
        return float(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid float value: {raw!r} (or auto)") from None


_TYPES: dict[str, Any] = {"cluster.eps": eps_value}
# Fields whose allowed values come from a registry rather than a Literal type.
_CHOICES: dict[str, tuple[str, ...]] = {"cluster.algorithm": ALGORITHMS}


def add_config_flags(p: argparse.ArgumentParser) -> None:
    """One flag per field of AmgConfig / PoolConfig / ClusterConfig (dest "section.field",
    default None = the preset's value), so a new config field gets its flag for free."""
    from samseg.core.config import DEFAULT

    for section, title in _CONFIG_SECTIONS:
        group = p.add_argument_group(title)
        cls = type(getattr(DEFAULT, section))
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if isinstance(getattr(getattr(DEFAULT, section), f.name), bool):
                continue  # switches get their own flag (eps_auto: --eps auto)
            choices = typing.get_args(hints[f.name]) if typing.get_origin(hints[f.name]) is typing.Literal else None
            choices = _CHOICES.get(f"{section}.{f.name}", choices)
            default = getattr(getattr(DEFAULT, section), f.name)
            group.add_argument(
                "--" + f.name.replace("_", "-"),
                dest=f"{section}.{f.name}",
                type=_TYPES.get(f"{section}.{f.name}", type(default) if choices is None else str),
                choices=choices,
                default=None,
                metavar=None if choices else type(default).__name__.upper(),
                help=f"{section}.{f.name} ('default' preset: {default:.4g})" if isinstance(default, float)
                else f"{section}.{f.name} ('default' preset: {default})",
            )


def config_from_args(args: argparse.Namespace) -> "Any":
    """PipelineConfig = preset, then --model, then every explicitly given config flag.
    Invalid values raise UsageError with the config's own message."""
    from samseg.core.config import get_preset

    try:
        cfg = get_preset(args.preset)
        if args.model is not None:
            cfg = cfg.replace(model_type=args.model)
        if getattr(args, "precision", None) is not None:
            cfg = cfg.replace(precision=args.precision)
        changes: dict[str, dict[str, Any]] = {}
        for key, value in vars(args).items():
            section, dot, name = key.partition(".")
            if dot and value is not None:
                if (section, name) == ("cluster", "eps"):  # "auto" switches eps_auto on; a number off
                    changes.setdefault(section, {})["eps_auto"] = value == "auto"
                    if value == "auto":
                        continue
                changes.setdefault(section, {})[name] = value
        return cfg.replace(**changes) if changes else cfg
    except ValueError as exc:
        raise UsageError(str(exc)) from None
