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
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator

from samseg.core.config import (
    PRECISION_REQUESTS,
    SECTION_CLASSES,
    ConfigSection,
    PipelineConfig,
    field_types,
    get_preset,
    knob_of,
)
from samseg.sam.kernels import KERNELS
from samseg.sam.model import MODEL_TYPES

ModelType = Literal[MODEL_TYPES]  # the model registry's names (samseg.sam.model.MODELS)
_PIPE = PipelineConfig()


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


def params_model(cls: type[ConfigSection], name: Optional[str] = None) -> type[_SectionParams]:
    """The pydantic model of a config section: one field per knob (type, default, help,
    ge/gt/le/lt, choices as an enum, NaN/inf refused where the knob is finite)."""
    types = field_types(cls)
    fields: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        k = knob_of(f)
        kind: Any = Literal[k.choices] if k.choices else types[f.name]  # type: ignore[valid-type]
        bounds = {b: getattr(k, b) for b in ("ge", "gt", "le", "lt") if getattr(k, b) is not None}
        extra = {"allow_inf_nan": False} if k.finite else {}
        fields[f.name] = (kind, Field(f.default, description=k.help or None, **bounds, **extra))
    model = create_model(name or f"{cls.SECTION.capitalize()}Params", __base__=_SectionParams,
                         __doc__=f"{cls.__doc__.splitlines()[0] if cls.__doc__ else cls.SECTION} "
                                 f"(samseg.core.config.{cls.__name__})", **fields)
    _CONFIG_OF[model] = cls
    return model


SECTION_PARAMS: dict[str, type[_SectionParams]] = {name: params_model(cls) for name, cls in SECTION_CLASSES.items()}
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
    model_type=(ModelType, Field(_PIPE.model_type)),
    # fp32 | bf16 | fp16 | auto (samseg.sam.precision): auto = bf16 where the hardware has it
    precision=(Literal[PRECISION_REQUESTS], Field(_PIPE.precision)),  # type: ignore[valid-type]
    **{name: (model, Field(default_factory=model)) for name, model in SECTION_PARAMS.items()},
)


class RuntimeParams(_Params):
    """Where the run happens; none of these change results, so none enter cache keys
    except through the checkpoint's sha256."""

    checkpoint: Optional[str] = Field(None, description="checkpoint path; None = samseg's download location")
    features_checkpoint: Optional[str] = Field(
        None, description="the feature backbone's .safetensors file; None = samseg's verified download")
    device: Optional[str] = Field(None, description="cpu, cuda, cuda:1 …; None = cuda when available")
    kernels: Optional[Literal[KERNELS]] = Field(  # type: ignore[valid-type]
        None, description="fast | sam: which code runs SAM's encoder and decoder; None = sam on CUDA, fast elsewhere")
    seed: int = Field(0, description="only used by the tiny-random test model")
    cache: Optional[str] = Field(None, description="stage cache root (dir or s3://); None = $SAMSEG_CACHE or ~/.cache/samseg/cache")
    save_features: bool = Field(False, description="also write features.npy (the C×gh×gw grid pooled from) per image")

    def to_config(self) -> None:
        return None
