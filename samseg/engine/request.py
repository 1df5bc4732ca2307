"""One run request: the config, where it computes, where its outputs go and how it is logged.

The CLI's flags, `samseg.segment`'s keywords, the Prefect flow parameters (flows/params.py,
generated from `Runtime`) and a deployment's parameters all become one `SegmentJob`; its config
comes from samseg.core.config.configure (one set of defaults: the `default` preset). A runtime
option is a field of `Runtime`: every path takes it from there.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

from samseg.core.config import PipelineConfig
from samseg.engine.publish import Tracking
from samseg.sam.kernels import KERNELS
from samseg.sam.source import ModelRequest


def option(default: Any, help: str, choices: Optional[tuple[str, ...]] = None) -> Any:
    """A Runtime field with its help text (the flow parameters' form shows it) and its choices."""
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass(frozen=True)
class Runtime:
    """Where and how a run computes. None of these change results, so none enter cache keys
    except through the weights' sha256."""

    checkpoint: Optional[str] = option(None, "SAM checkpoint path; None = samseg's verified download")
    features_checkpoint: Optional[str] = option(
        None, "the feature backbone's .safetensors file; None = samseg's verified download")
    device: Optional[str] = option(None, "cpu, cuda, cuda:1 …; None = cuda when available")
    kernels: Optional[str] = option(
        None, "fast | sam: which code runs SAM's encoder and decoder; None = sam on CUDA, fast elsewhere", KERNELS)
    seed: int = option(0, "only used by the tiny-random test model")
    cache: Optional[str] = option(
        None, "stage cache root (dir or s3://); None = $SAMSEG_CACHE or ~/.cache/samseg/cache")
    save_features: bool = option(False, "also write features.npy (the C×gh×gw grid pooled from) per image")

    def __post_init__(self) -> None:
        if self.kernels is not None and self.kernels not in KERNELS:
            raise ValueError(f"kernels must be one of {', '.join(KERNELS)}, got {self.kernels!r}")

    @classmethod
    def of(cls, values: Mapping[str, Any], **given: Any) -> "Runtime":
        """The fields found in `values` (the CLI's parsed flags, flow parameters), then `given`."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{**{k: v for k, v in values.items() if k in names}, **given})

    def model(self, cfg: PipelineConfig) -> ModelRequest:
        """The weights this run asks for under `cfg`."""
        return ModelRequest(cfg.model_type, self.checkpoint, self.device, self.seed, cfg.precision, self.kernels,
                            cfg.features.name, self.features_checkpoint)


@dataclass(frozen=True)
class SegmentJob:
    """Everything an image run needs besides the image: config, runtime, where outputs go
    (a dir or s3:// prefix), how they are logged."""

    cfg: PipelineConfig
    runtime: Runtime = field(default_factory=Runtime)
    out: str = ""
    tracking: Tracking = field(default_factory=Tracking)
    # classes given beforehand (samseg.engine.dataset.GivenClasses): each image's masks get their
    # ids where the image is computed (samseg.engine.dataset.assign_classes), not its own clusters
    assign_to: Any = None

    @property
    def model(self) -> ModelRequest:
        return self.runtime.model(self.cfg)

    @property
    def cache_root(self) -> str:
        from samseg.edges.cache import default_cache_root

        return self.runtime.cache or default_cache_root()

    @property
    def save_features(self) -> bool:
        return self.runtime.save_features

    def fetch_weights(self) -> None:
        """Every weights file this job reads, downloaded now if missing (first use); when some
        cannot be, one CheckpointError lists them all (samseg.sam.registry)."""
        from samseg.sam.registry import ensure

        names = self.cfg.names
        ensure(self.cfg.model_type, self.cfg.features.name, self.runtime.checkpoint, self.runtime.features_checkpoint,
               names.namer if names.enabled else None)


@dataclass(frozen=True)
class ShardPlan:
    """How a batch fanned out to workers is split and waited for (flows.fanout); the batch
    flow's `shards` parameter is generated from it (flows/params.py)."""

    size: int = option(256, "images per shard run: one model load each, one `segment` deployment run")
    in_flight: int = option(8, "most shard runs created and not yet finished")
    retries: int = option(2, "new runs for a shard whose run crashed or failed, for the images it had not written")
    timeout_s: Optional[float] = option(None, "a shard run still running after this many seconds is cancelled and its "
                                              "unwritten images fail (counted from when it starts running)")
    stale_after_s: Optional[float] = option(None, "a running shard run whose heartbeats stopped this many seconds ago is "
                                                  "marked CRASHED, its machine gone (default: 3 Prefect heartbeats)")
    fit_images: int = option(256, "--classes dataset: a batch of more images than this has its classes fitted on this many, "
                                  "spread over its input, and every image assigned to them in its own shard; a smaller one "
                                  "is fitted on all of its masks")

    def __post_init__(self) -> None:
        for name, low in (("size", 1), ("in_flight", 1), ("retries", 0), ("fit_images", 1)):
            if int(getattr(self, name)) < low:
                raise ValueError(f"shard {name} must be >= {low}, got {getattr(self, name)}")
        for name in ("timeout_s", "stale_after_s"):
            if getattr(self, name) is not None and not getattr(self, name) > 0:
                raise ValueError(f"shard {name} must be > 0, got {getattr(self, name)}")
