"""Typed flow parameters, generated from samseg.core.config so the Prefect UI renders a form.

One pydantic model per config section (AmgParams, PoolParams, ClusterParams, TileParams) is
made from the section's dataclass by `params_model`: field names, defaults, help texts,
bounds and choices are the config's own knobs, never typed again here. The bounds feed the
JSON schema so the UI form flags a bad value before a run is created; the authoritative
check stays the config's own: every model's `after` validator builds the config, so a value
the config rejects is a pydantic ValidationError with the config's message.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator

from samseg.core.config import (
    DEFAULT,
    PRECISION_REQUESTS,
    SECTION_CLASSES,
    ConfigSection,
    PipelineConfig,
    field_types,
    get_preset,
    knob_of,
)
from samseg.engine.request import Runtime, ShardPlan
from samseg.sam.model import MODEL_TYPES

ModelType = Literal[MODEL_TYPES]  # the model registry's names (samseg.sam.model.MODELS)


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def to_config(self) -> Any:  # pragma: no cover - overridden
        raise NotImplementedError

    @model_validator(mode="after")
    def _config_accepts(self) -> "_Params":
        self.to_config()  # ValueError from the config → pydantic ValidationError
        return self


class _SectionParams(_Params):
    """A config section's parameters; `to_config()` is the frozen section it mirrors."""

    def to_config(self) -> ConfigSection:
        return _CONFIG_OF[type(self)](**self.model_dump())


_CONFIG_OF: dict[type, type[ConfigSection]] = {}


def params_model(cls: type[ConfigSection], name: Optional[str] = None,
                 defaults: Optional[ConfigSection] = None) -> type[_SectionParams]:
    """The pydantic model of a config section: one field per knob (type, help, ge/gt/le/lt,
    choices as an enum, NaN/inf refused where the knob is finite), defaults from `defaults`
    (the section's own when None)."""
    types = field_types(cls)
    defaults = defaults if defaults is not None else cls()
    fields: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        k = knob_of(f)
        kind: Any = Literal[k.choices] if k.choices else types[f.name]  # type: ignore[valid-type]
        bounds = {b: getattr(k, b) for b in ("ge", "gt", "le", "lt") if getattr(k, b) is not None}
        extra = {"allow_inf_nan": False} if k.finite else {}
        fields[f.name] = (kind, Field(getattr(defaults, f.name), description=k.help or None, **bounds, **extra))
    model = create_model(name or f"{cls.SECTION.capitalize()}Params", __base__=_SectionParams,
                         __doc__=f"{cls.__doc__.splitlines()[0] if cls.__doc__ else cls.SECTION} "
                                 f"(samseg.core.config.{cls.__name__})", **fields)
    _CONFIG_OF[model] = cls
    return model


# Defaults are the `default` preset's, as for the CLI and samseg.segment: a deployment run with no
# parameters segments as `samseg segment` does.
SECTION_PARAMS: dict[str, type[_SectionParams]] = {
    name: params_model(cls, defaults=getattr(DEFAULT, name)) for name, cls in SECTION_CLASSES.items()}
AmgParams, PoolParams = SECTION_PARAMS["amg"], SECTION_PARAMS["pool"]
ClusterParams, TileParams = SECTION_PARAMS["cluster"], SECTION_PARAMS["tile"]


class _PipelineBase(_Params):
    def to_config(self) -> PipelineConfig:
        return PipelineConfig(model_type=self.model_type, precision=self.precision,  # type: ignore[attr-defined]
                              **{name: getattr(self, name).to_config() for name in SECTION_PARAMS})

    @classmethod
    def from_config(cls, cfg: PipelineConfig) -> "PipelineParams":
        return cls(model_type=cfg.model_type, precision=cfg.precision,
                   **{name: model(**dataclasses.asdict(getattr(cfg, name))) for name, model in SECTION_PARAMS.items()})

    @classmethod
    def from_preset(cls, name: str) -> "PipelineParams":
        return cls.from_config(get_preset(name))


PipelineParams = create_model(
    "PipelineParams", __base__=_PipelineBase,
    __doc__="The whole run's configuration; `to_config()` gives the frozen PipelineConfig. Defaults are the "
            "`default` preset; `from_preset(\"smoke\")` gives another preset.",
    model_type=(ModelType, Field(DEFAULT.model_type)),
    # fp32 | bf16 | fp16 | auto (samseg.sam.precision): auto = bf16 where the hardware has it
    precision=(Literal[PRECISION_REQUESTS], Field(DEFAULT.precision)),  # type: ignore[valid-type]
    **{name: (model, Field(default_factory=model)) for name, model in SECTION_PARAMS.items()},
)


def _option_field(cls: type, f: dataclasses.Field) -> tuple[Any, Any]:
    choices = f.metadata.get("choices")
    kind = Optional[Literal[choices]] if choices else typing.get_type_hints(cls)[f.name]  # type: ignore[valid-type]
    return kind, Field(f.default, description=f.metadata.get("help"))


class _RuntimeBase(_Params):
    def to_config(self) -> Runtime:
        return Runtime.of(self.model_dump())


# samseg.engine.request.Runtime as flow parameters: a runtime option added there is a parameter here.
RuntimeParams = create_model(
    "RuntimeParams", __base__=_RuntimeBase,
    __doc__=Runtime.__doc__, **{f.name: _option_field(Runtime, f) for f in dataclasses.fields(Runtime)})


class _ShardBase(_Params):
    def to_config(self) -> ShardPlan:
        return ShardPlan(**self.model_dump())


# samseg.engine.request.ShardPlan as the batch flow's `shards` parameter.
ShardParams = create_model(
    "ShardParams", __base__=_ShardBase,
    __doc__=ShardPlan.__doc__, **{f.name: _option_field(ShardPlan, f) for f in dataclasses.fields(ShardPlan)})
