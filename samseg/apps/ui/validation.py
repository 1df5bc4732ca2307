"""Rerun-form validation: raw form values → the run's PipelineConfig with them, or per-field errors.

The values go through samseg.core.config.override, the function the CLI's flags and
`samseg.segment`'s keywords go through: the same knob names, the same checks, the same meaning
(an eps given is the eps used: it turns `--eps auto` off, so what the preview showed is what a
saved run clusters with). This module only parses strings to numbers and maps each config
message ("cluster.eps must be > 0") to the form field it is about, in that field's words ("eps
must be > 0"), so the page can show it next to that field.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from samseg.core.config import ClusterConfig, PipelineConfig, PoolConfig, field_types, override


def form_fields(cls: type) -> dict[str, Callable[[Any], Any]]:
    """The form fields of a config section: every knob but the switches, with its value type
    (from the config schema, samseg.core.config)."""
    return {name: kind for name, kind in field_types(cls).items() if kind is not bool}


CLUSTER_FIELDS = form_fields(ClusterConfig)
POOL_FIELDS = form_fields(PoolConfig)
FEATURES_FIELD = "features"  # the backbone's name (features.name); another one re-pools, at its default size
_TYPE_WORDS = {float: "a number", int: "a whole number", str: "text"}


def _short(name: str, limit: int = 60) -> str:
    """A field name as an error echoes it: a short prefix (a crafted 20 MB key stays on the client)."""
    return name if len(name) <= limit else name[: limit - 1] + "…"


class FormError(ValueError):
    """Invalid rerun form; `.errors` maps field name → one-line message."""

    def __init__(self, errors: dict[str, str]):
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))
        self.errors = errors


def _parse(name: str, raw: Any, kind: Callable[[Any], Any], section: str) -> Any:
    # Strict JSON types: `true` is not 1.0, a list is not a number, a number is not a name.
    if isinstance(raw, bool) or not isinstance(raw, (str, int, float)):
        raise ValueError(f"{section}.{name} must be {_TYPE_WORDS[kind]}")
    if kind is str and not isinstance(raw, str):
        raise ValueError(f"{section}.{name} must be {_TYPE_WORDS[kind]}")
    if kind is int:
        # int("3.0") fails and int(3.7) truncates: accept only integral values.
        value = float(raw)
        if not value.is_integer():
            raise ValueError(f"{section}.{name} must be a whole number")
        return int(value)
    if kind is float:
        value = float(raw)
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"{section}.{name} must be a finite number")
        return value
    return str(raw)


def _at_field(message: str, section: str, name: str) -> str:
    """A config message as its form field shows it, next to the field labelled `name`:
    "cluster.eps must be > 0" -> "eps must be > 0"."""
    key = f"{section}.{name}"
    return name + message[len(key):] if message.startswith(key) else message


def _validate_section(
    form: dict[str, Any], fields: dict[str, Callable[[Any], Any]], base: Any, section: str, errors: dict[str, str]
) -> dict[str, Any]:
    """Parse and check each field ALONE against `base` (the run's config section), so every bad
    field gets its message; returns {"section.knob": value} for override."""
    values: dict[str, Any] = {}
    for name, kind in fields.items():
        raw = form.get(name)
        if raw is None or raw == "":
            continue  # not given: keep the run's value
        try:
            value = _parse(name, raw, kind, section)
        except (TypeError, ValueError) as exc:
            msg = str(exc)
            errors[name] = _at_field(msg if msg.startswith(section + ".") else f"{section}.{name} must be {_TYPE_WORDS[kind]}",
                                     section, name)
            continue
        try:
            dataclasses.replace(base, **{name: value})
        except ValueError as exc:
            errors[name] = _at_field(str(exc), section, name)
            continue
        values[f"{section}.{name}"] = value
    return values


def validate_cluster_form(form: Any, base: PipelineConfig) -> ClusterConfig:
    """The preview's JSON: cluster fields only (missing keys keep the run's values), else FormError."""
    if not isinstance(form, dict):
        raise FormError({"form": "expected a JSON object of cluster settings"})
    errors: dict[str, str] = {_short(name): "unknown field" for name in sorted(set(form) - set(CLUSTER_FIELDS))}
    values = _validate_section(form, CLUSTER_FIELDS, base.cluster, "cluster", errors)
    if errors:
        raise FormError(errors)
    try:
        return override(base, **values).cluster
    except ValueError as exc:
        raise FormError({"form": str(exc)}) from exc


def validate_rerun_form(form: dict[str, Any], base: PipelineConfig) -> PipelineConfig:
    """The run's config with the form's values (unspecified fields keep the run's), or FormError."""
    unknown = sorted(set(form) - set(CLUSTER_FIELDS) - set(POOL_FIELDS) - {FEATURES_FIELD})
    errors: dict[str, str] = {_short(name): "unknown field" for name in unknown}
    values = {**_validate_section(form, CLUSTER_FIELDS, base.cluster, "cluster", errors),
              **_validate_section(form, POOL_FIELDS, base.pool, "pool", errors)}
    raw = form.get(FEATURES_FIELD)
    if raw not in (None, "", base.features.name):
        try:
            values["features"] = _parse("name", raw, str, "features")
            override(base, features=values["features"])
        except (TypeError, ValueError) as exc:
            errors[FEATURES_FIELD] = str(exc)
    if errors:
        raise FormError(errors)
    try:
        return override(base, **values)
    except ValueError as exc:  # a rule spanning two fields: show it on the form as a whole
        raise FormError({"form": str(exc)}) from exc


BATCH_FIELDS = {"eps": float, "min_samples": int}  # a batch page changes these, over each image's own


def validate_batch_form(form: Any, batch_params: dict[str, str]) -> dict[str, Any]:
    """A batch's recluster form: {knob: value} for samseg.apps.batch_recluster (eps may be
    "auto"; a field left empty keeps each image's own value), or FormError."""
    from pydantic import ValidationError

    from samseg.apps.batch_recluster import cluster_params

    if not isinstance(form, dict):
        raise FormError({"form": "expected a JSON object of cluster settings"})
    errors: dict[str, str] = {_short(name): "unknown field" for name in sorted(set(form) - set(BATCH_FIELDS))}
    auto = form.get("eps") == "auto"
    fields = {k: v for k, v in BATCH_FIELDS.items() if not (auto and k == "eps")}
    try:  # the batch's own settings, which the checks are against
        base = cluster_params(batch_params, {}).to_config()
    except (ValidationError, ValueError) as exc:  # recorded by an older samseg under rules since changed
        raise FormError({"form": f"this batch's recorded settings cannot be reclustered here ({said_of(exc)})"}) from None
    values = _validate_section(form, fields, base, "cluster", errors)
    if errors:
        raise FormError(errors)
    changes = {key.split(".", 1)[1]: value for key, value in values.items()}
    if auto:
        changes["eps"] = "auto"
    if not changes:
        raise FormError({"form": "give an eps (or auto) or a min_samples to recluster the batch with"})
    try:
        cluster_params(batch_params, changes).to_config()
    except (ValidationError, ValueError) as exc:  # a rule spanning two knobs (eps with the metric)
        raise FormError({"form": said_of(exc)}) from None
    return changes


def said_of(exc: Exception) -> str:
    """The one line of a config error: a pydantic ValidationError's first error as the config
    said it (its check's own message), else the error's text."""
    errors = exc.errors() if hasattr(exc, "errors") else []
    if errors:
        return str((errors[0].get("ctx") or {}).get("error") or errors[0]["msg"])
    return str(exc)
