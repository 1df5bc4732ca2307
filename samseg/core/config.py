"""Frozen, typed configuration for every samseg stage, and the named presets.

Each stage takes exactly one of these objects. `PipelineConfig.flat()` gives the
dotted key/value view (``amg.points_per_side``) used by summary.json, MLflow params and
cache keys, so the three can never disagree about what a run was configured with.

This module is the config schema: each field is declared once with `knob(default, help,
bounds/choices)`. The checks (`ConfigSection.__post_init__`), the CLI flags
(samseg.apps.cli.config), the Prefect flow parameters (flows.params) and the UI form's
validation (samseg.apps.ui.validation) are all generated from that declaration, so a new
field or section is one edit here.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Optional

from samseg.core.algorithms import ALGORITHMS as _ALGORITHM_REGISTRY
from samseg.core.backbones import BACKBONE_NAMES, SAM, TINY_RANDOM, backbone_entry
from samseg.core.namers import NAMER_NAMES

CellRule = Literal["min_pixels", "min_coverage"]
Weighting = Literal["uniform", "coverage"]
Algorithm = str  # a name in samseg.core.algorithms.ALGORITHMS
ALGORITHMS: tuple[str, ...] = tuple(_ALGORITHM_REGISTRY)  # the registry's names, in registration order
METRICS: tuple[str, ...] = ("cosine", "euclidean", "manhattan", "l1", "l2")


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


# ---------------------------------------------------------------- the schema


@dataclass(frozen=True)
class Knob:
    """What a config field is: help text, bounds, allowed values. `invalid` overrides the
    message for a value not in `choices` ({name}, {value!r}); finite: NaN/inf refused."""

    help: str
    ge: Optional[float] = None
    gt: Optional[float] = None
    le: Optional[float] = None
    lt: Optional[float] = None
    choices: Optional[tuple[str, ...]] = None
    finite: bool = False
    invalid: Optional[str] = None


def knob(default: Any, help: str, **rules: Any) -> Any:
    """A config field declared once: its default plus a `Knob` (help, bounds, choices)."""
    return field(default=default, metadata={"knob": Knob(help, **rules)})


def knob_of(f: dataclasses.Field) -> Knob:
    return f.metadata.get("knob") or Knob(help="")


class _Shown:
    """A bad value as a message shows it: its repr, cut to a short prefix (a 20 MB form field
    must not come back in the error)."""

    MAX = 60

    def __init__(self, value: Any) -> None:
        self.value = value

    def __repr__(self) -> str:
        text = repr(self.value)
        return text if len(text) <= self.MAX else text[: self.MAX - 1] + "…"


def _num(v: float) -> str:
    return f"{v:g}"


def knob_errors(name: str, value: Any, k: Knob, kind: type) -> Optional[str]:
    """The one-line message for `value` of field `name` (e.g. "cluster.eps"), or None if valid."""
    if kind is bool:
        return None if isinstance(value, bool) else f"{name} must be true or false"
    if k.choices is not None:
        if value in k.choices:
            return None
        if k.invalid:
            return k.invalid.format(name=name, value=_Shown(value))
        allowed = " or ".join(k.choices) if len(k.choices) == 2 else "one of " + ", ".join(k.choices)
        return f"{name} must be {allowed}, got {_Shown(value)!r}"
    if k.finite and isinstance(value, (int, float)) and not math.isfinite(value):  # NaN passes no comparison
        bound = f" > {_num(k.gt)}" if k.gt is not None else f" >= {_num(k.ge)}" if k.ge is not None else ""
        return f"{name} must be a finite number{bound}"
    if (k.ge is not None and k.lt is not None) or (k.gt is not None and k.le is not None):  # an interval
        lo, lo_ok = (k.ge, value >= k.ge) if k.ge is not None else (k.gt, value > k.gt)
        hi, hi_ok = (k.lt, value < k.lt) if k.lt is not None else (k.le, value <= k.le)
        if not (lo_ok and hi_ok):
            return f"{name} must be in {'[' if k.ge is not None else '('}{_num(lo)}, {_num(hi)}{')' if k.lt is not None else ']'}"
    else:
        for bound, word, ok in ((k.ge, ">=", lambda b: value >= b), (k.gt, ">", lambda b: value > b),
                                (k.le, "<=", lambda b: value <= b), (k.lt, "<", lambda b: value < b)):
            if bound is not None and not ok(bound):
                return f"{name} must be {word} {_num(bound)}"
    return None


def field_types(cls: type) -> dict[str, type]:
    """Each field's value type (bool, int, float or str; a Literal is str)."""
    hints = typing.get_type_hints(cls)
    return {f.name: (str if typing.get_origin(hints[f.name]) is Literal else hints[f.name]) for f in dataclasses.fields(cls)}


@dataclass(frozen=True)
class ConfigSection:
    """A section of the pipeline config (amg, pool, cluster, tile): its knobs are checked on
    construction; `check()` adds the rules that span fields."""

    SECTION: ClassVar[str] = ""
    TITLE: ClassVar[str] = ""  # the CLI's flag group for this section
    FLAGS: ClassVar[bool] = True  # one CLI flag per knob (False: the section's flags are written by hand)

    def __post_init__(self) -> None:
        types = field_types(type(self))
        for f in dataclasses.fields(self):
            message = knob_errors(f"{self.SECTION}.{f.name}", getattr(self, f.name), knob_of(f), types[f.name])
            _check(message is None, message or "")
        self.check()

    def check(self) -> None:
        """Rules between fields (none by default)."""


MAX_PROMPTS = 512 * 512  # prompts per image over all crop layers (SAM's default grid: 32² = 1,024)
MAX_CROP_LAYERS = 4  # 4^4 = 256 crops in the last layer


@dataclass(frozen=True)
class AmgConfig(ConfigSection):
    """Every `segment_anything.SamAutomaticMaskGenerator` knob; defaults are SAM's own.

    `point_grids` and `output_mode` are not exposed: samseg always builds the grid from
    `points_per_side` and always keeps masks as COCO RLE between stages.
    """

    SECTION: ClassVar[str] = "amg"
    TITLE: ClassVar[str] = "automatic mask generator (SAM's SamAutomaticMaskGenerator knobs)"
    points_per_side: int = knob(32, "prompt grid is N×N points (32: 1,024 prompts on the full image)", ge=1)
    points_per_batch: int = knob(64, "prompts per decoder call (memory only, not results)", ge=1)
    pred_iou_thresh: float = knob(0.88, "drop masks whose predicted IoU is lower")
    stability_score_thresh: float = knob(0.95, "drop masks whose stability score is lower")
    stability_score_offset: float = knob(1.0, "logit offset of the stability score")
    box_nms_thresh: float = knob(0.7, "box IoU above which the lower-scored mask is dropped")
    crop_n_layers: int = knob(0, "layers of image crops, each with its own prompt grid (layer i: 4^i crops)", ge=0,
                              le=MAX_CROP_LAYERS)
    crop_nms_thresh: float = knob(0.7, "box NMS threshold between crops")
    crop_overlap_ratio: float = knob(512 / 1500, "overlap of neighbouring crops", ge=0, lt=1)
    crop_n_points_downscale_factor: int = knob(1, "prompt grid divided by this per crop layer", ge=1)
    min_mask_region_area: int = knob(0, ">0: remove holes and islands under this many pixels (OpenCV)", ge=0)

    @property
    def prompts(self) -> int:
        """Prompts per image (or tile): crop layer i has 4^i crops, each a grid of
        int(points_per_side / downscale^i)² points (SAM's build_all_layer_point_grids)."""
        return sum(4**i * int(self.points_per_side / self.crop_n_points_downscale_factor**i) ** 2
                   for i in range(self.crop_n_layers + 1))

    def check(self) -> None:
        # Each prompt is a decoder pass whose kept masks stay in memory until the image's NMS:
        # refuse a grid that would run for hours and fill the memory, before any image is read.
        n = self.prompts
        _check(n <= MAX_PROMPTS, f"amg: points_per_side {self.points_per_side} with crop_n_layers {self.crop_n_layers} "
               f"is {n:,} prompts per image, over samseg's limit of {MAX_PROMPTS:,} "
               f"({-(-n // self.points_per_batch):,} decoder calls; SAM's default is 1,024 prompts)")


@dataclass(frozen=True)
class PoolConfig(ConfigSection):
    """How a mask's embedding is pooled from the C×64×64 encoder feature grid.

    Cells are the 16×16-pixel patches of SAM's 1024-px input frame (long side resized to
    1024, padded bottom/right). Padding cells are never used.
    - cell_rule="min_pixels": a cell is used when the mask covers MORE than `min_pixels`
      pixels of it at input scale. The notebook's rule is `> 1 pixel` (min_pixels=1).
    - cell_rule="min_coverage": a cell is used when the covered fraction of its valid
      (non-padding) area is >= `min_coverage`.
    - weighting="uniform" averages the selected cells equally (the notebook);
      "coverage" weights each selected cell by its covered fraction.
    A mask that selects no cell falls back to the single cell it overlaps most.
    """

    SECTION: ClassVar[str] = "pool"
    TITLE: ClassVar[str] = "mask embedding pooling"
    cell_rule: CellRule = knob("min_pixels", "which feature cells a mask uses", choices=typing.get_args(CellRule))
    min_pixels: int = knob(1, "min_pixels rule: a cell is used above this many mask pixels", ge=0)
    min_coverage: float = knob(0.5, "min_coverage rule: the covered fraction a cell needs", gt=0, le=1)
    weighting: Weighting = knob("uniform", "how used cells are averaged", choices=typing.get_args(Weighting))


MAX_MIN_SAMPLES = 100_000


@dataclass(frozen=True)
class ClusterConfig(ConfigSection):
    """Clustering of the N×C mask embeddings (scikit-learn).

    eps=0.06 / min_samples=8 / cosine are the notebook's DBSCAN values. For HDBSCAN,
    `min_samples` is also its min_cluster_size (HDBSCAN needs >= 2). Agglomerative uses
    average linkage cut at `distance_threshold`; its singletons are reported as noise.
    """

    SECTION: ClassVar[str] = "cluster"
    TITLE: ClassVar[str] = "clustering of mask embeddings"
    algorithm: Algorithm = knob("dbscan", "clustering algorithm (samseg.core.algorithms)", choices=ALGORITHMS)
    eps: float = knob(0.06, "DBSCAN neighbourhood radius (cosine distance), or auto: the knee of the k-distance curve",
                      gt=0, finite=True)
    # More than any batch's mask count is meaningless (everything is noise) and a huge
    # value is an attack on the clustering's memory, not a setting.
    min_samples: int = knob(8, "masks a class needs around a core mask", ge=1, le=MAX_MIN_SAMPLES)
    metric: str = knob("cosine", "distance between mask embeddings", choices=METRICS,
                       invalid="{name} {value!r} is not supported")
    distance_threshold: float = knob(0.3, "agglomerative: the linkage distance the tree is cut at", gt=0, finite=True)
    # DBSCAN's eps from the knee of the k-distance curve (samseg.core.sweep); `eps` is the
    # fallback when there is no knee (fewer masks than min_samples, a straight curve).
    eps_auto: bool = knob(False, "eps from the knee of the k-distance curve (eps = fallback)")

    def check(self) -> None:
        # a cosine distance is 1 − cos, at most 2: a larger radius reaches every mask, as 2 does
        radius = COSINE_RADII.get(self.algorithm)
        for name in (radius,) if radius else ():
            _check(self.metric != "cosine" or getattr(self, name) <= COSINE_MAX,
                   f"cluster.{name} must be <= {COSINE_MAX:g} with the cosine metric (cosine distances are at most "
                   f"{COSINE_MAX:g}: a larger value puts every mask in one class, as {COSINE_MAX:g} does)")


COSINE_MAX = 2.0
COSINE_RADII = {"dbscan": "eps", "agglomerative": "distance_threshold"}  # the knob each algorithm reaches with


# `--tile auto` tiles an image whose long side is over this many tile sides: SAM would see
# it at under half its resolution (a 2048-px side at 1024 px), so a 16-px patch covers 32+ pixels.
TILE_AUTO_SIDES = 2


@dataclass(frozen=True)
class TileConfig(ConfigSection):
    """Tiled segmentation of large images (samseg.core.tiling; the `tiles` stage of samseg.engine.stages).

    size: tile side in pixels (0 = no tiling: the whole image is one SAM input). overlap:
    pixels shared by neighbouring tiles; an object cut by a seam is matched with its
    continuation there. auto: tile only images whose long side exceeds TILE_AUTO_SIDES·size
    (resolved per image, so smaller images keep their untiled cache entries). merge_iou:
    two tiles' masks are one object when their IoU inside the shared region reaches it.
    """

    SECTION: ClassVar[str] = "tile"
    TITLE: ClassVar[str] = "tiling of large images (one class map over all tiles)"
    FLAGS: ClassVar[bool] = False  # --tile SIZE|auto, --tile-overlap, --tile-merge-iou (samseg.apps.cli.config)
    size: int = knob(0, "tile side in px; 0 = no tiling")
    overlap: int = knob(256, "px shared by neighbouring tiles", ge=0)
    auto: bool = knob(False, f"tile only images whose long side is over {TILE_AUTO_SIDES} tile sides")
    merge_iou: float = knob(0.5, "IoU in the shared region that makes two tiles' masks one", gt=0, le=1)

    def check(self) -> None:
        _check(self.size == 0 or self.size >= 64, "tile.size must be 0 (no tiling) or >= 64 pixels")
        _check(self.size == 0 or self.overlap * 2 <= self.size, "tile.overlap must be at most half of tile.size")

    @property
    def enabled(self) -> bool:
        return self.size > 0

    def for_image(self, image_hw: tuple[int, int]) -> "TileConfig":
        """This image's tiling: `auto` resolved (off, or on with auto=False), so equal work keys equally."""
        if not self.enabled or (self.auto and max(image_hw) <= TILE_AUTO_SIDES * self.size):
            return TileConfig()
        return dataclasses.replace(self, auto=False)


# The largest backbone input long side: 4096 px is a 292×292 grid of 14-px patches (85,000 tokens),
# whose attention matrix alone is 29 GB per head in fp32; a larger image is split with --tile.
MAX_FEATURES_SIZE = 4096


@dataclass(frozen=True)
class FeaturesConfig(ConfigSection):
    """Which image encoder's features the mask embeddings are pooled from (samseg.core.backbones).

    name: `sam` = SAM's own encoder (the original method: the AMG's one encoder pass); a DINOv2 /
    DINOv3 name = that backbone's patch features, pooled under SAM's masks. input_size: the
    backbone's input long side in px, a multiple of its patch (0 = the row's default; `sam`
    always sees SAM's 1024-px frame). The weights file is a run setting (--features-checkpoint),
    not config: its sha256 is what keys the cache and the summary records.
    """

    SECTION: ClassVar[str] = "features"
    TITLE: ClassVar[str] = "embedding features (the backbone mask embeddings are pooled from)"
    FLAGS: ClassVar[bool] = False  # --features NAME, --features-size PX (samseg.apps.cli.config)
    name: str = knob(SAM, "feature backbone (samseg weights list)", choices=BACKBONE_NAMES,
                     invalid="{name} {value!r} is not a feature backbone; see `samseg weights list`")
    input_size: int = knob(0, "backbone input long side in px, a multiple of its patch; 0 = its default", ge=0,
                           le=MAX_FEATURES_SIZE)

    def check(self) -> None:
        row = backbone_entry(self.name)
        if self.name == SAM:
            _check(self.input_size in (0, row.input_size), "features.input_size does not apply to --features sam "
                                                          "(SAM always sees its 1024-px frame)")
        _check(self.input_size % row.patch_size == 0, f"features.input_size {self.input_size} is not a multiple of "
               f"{self.name}'s {row.patch_size}-px patch (e.g. {row.input_size})")

    @property
    def long_side(self) -> int:
        """The input long side this config runs at (the row's default for 0)."""
        return self.input_size or backbone_entry(self.name).input_size


@dataclass(frozen=True)
class NamesConfig(ConfigSection):
    """Names for the classes, without training (samseg.core.namers, samseg.sam.namer): each class's
    most central masks are cropped from the image and embedded by a CLIP-family model, and the
    vocabulary's name whose text embedding they match best names the class when CLIP's softmax
    over the vocabulary gives it at least `min_prob`; otherwise the class stays unnamed."""

    SECTION: ClassVar[str] = "names"
    TITLE: ClassVar[str] = "class names (open vocabulary)"
    FLAGS: ClassVar[bool] = False  # --names VOCAB, --namer NAME (samseg.apps.cli.config)
    vocabulary: str = knob("none", "none | coco-stuff | ade20k | a file (one name a line) | \"a,b,c\"")
    namer: str = knob("clip-b16", "the CLIP-family model that names classes", choices=NAMER_NAMES)
    min_prob: float = knob(0.3, "a class is named when its best name's probability over the vocabulary reaches this",
                           gt=0, le=1)
    # 2: measured on a 2-core CPU, 12 classes × 8 crops cost 48 % of vit_h's encoder pass, 2 crops ~12 %
    # (benchmarks/names_cost.py); raise it on a GPU, where crops cost next to nothing.
    masks_per_class: int = knob(2, "the class's most central masks whose crops are embedded", ge=1, le=32)

    def check(self) -> None:
        _check(bool(self.vocabulary.strip()), "names.vocabulary must not be empty (none: no names)")

    @property
    def enabled(self) -> bool:
        return self.vocabulary.strip() != "none"


# The precisions the encoder and decoder can run in; "auto" picks one per machine (samseg.sam.precision).
PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16")
PRECISION_REQUESTS: tuple[str, ...] = (*PRECISIONS, "auto")




@dataclass(frozen=True)
class PipelineConfig:
    """The whole run: which model and how each stage is configured."""

    model_type: str = "vit_h"
    amg: AmgConfig = field(default_factory=AmgConfig)
    pool: PoolConfig = field(default_factory=PoolConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    # fp32 | bf16 | fp16 | auto for the encoder and decoder (samseg.sam.precision); "auto" is
    # resolved per machine at run time, and the resolved value is what the caches key on.
    precision: str = "fp32"
    tile: TileConfig = field(default_factory=TileConfig)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    names: NamesConfig = field(default_factory=NamesConfig)

    def __post_init__(self) -> None:
        _check(self.precision in PRECISION_REQUESTS, f"precision must be one of {', '.join(PRECISION_REQUESTS)}, got {self.precision!r}")

    @staticmethod
    def section_classes() -> dict[str, type[ConfigSection]]:
        """{section name: its class}, in field order: the sections of `flat()`, the CLI and the flows."""
        hints = typing.get_type_hints(PipelineConfig)
        return {f.name: hints[f.name] for f in dataclasses.fields(PipelineConfig)
                if isinstance(hints[f.name], type) and issubclass(hints[f.name], ConfigSection)}

    def flat(self) -> dict[str, Any]:
        """Dotted view: {'model_type': 'vit_h', 'precision': 'fp32', 'amg.points_per_side': 32, ...}."""
        out: dict[str, Any] = {"model_type": self.model_type, "precision": self.precision}
        for name in SECTION_CLASSES:
            for key, value in dataclasses.asdict(getattr(self, name)).items():
                out[f"{name}.{key}"] = value
        return out

    def replace(self, **sections: Any) -> "PipelineConfig":
        """`cfg.replace(cluster={'eps': 0.1})` → new config with those fields changed."""
        changes: dict[str, Any] = {}
        for name, value in sections.items():
            if isinstance(value, dict):
                changes[name] = dataclasses.replace(getattr(self, name), **value)
            else:
                changes[name] = value
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_flat(cls, flat: dict[str, Any]) -> "PipelineConfig":
        """Inverse of `flat()`, for a config a run recorded; unknown keys raise ValueError."""
        sections: dict[str, dict[str, Any]] = {name: {} for name in SECTION_CLASSES}
        model_type = flat.get("model_type", cls.model_type)
        for key, value in flat.items():
            if key in ("model_type", "precision"):
                continue
            section, _, name = key.partition(".")
            if section not in sections:
                raise ValueError(f"unknown config key {key!r}")
            sections[section][name] = value
        cluster = sections["cluster"]
        if cluster.get("metric", ClusterConfig.metric) == "cosine":  # a run an older samseg let reach past 2:
            for name in COSINE_RADII.values():  # the same clustering at 2 (every mask within reach)
                if isinstance(cluster.get(name), (int, float)) and cluster[name] > COSINE_MAX:
                    cluster[name] = COSINE_MAX
        # a section missing from an older summary (tile, before tiling) gets its defaults
        return cls(model_type=model_type, precision=str(flat.get("precision", cls.precision)),
                   **{name: section_cls(**sections[name]) for name, section_cls in SECTION_CLASSES.items()})

    def with_features(self, name: str) -> "PipelineConfig":
        """Features from backbone `name` at its default size, with its measured eps, or --eps auto
        where none was measured (eps 0.06 was tuned for SAM's features only)."""
        from samseg.core.backbones import default_eps

        eps = default_eps(name)
        cluster = {"eps_auto": False, "eps": eps} if eps is not None else {"eps_auto": True}
        return self.replace(features=FeaturesConfig(name=name), cluster=cluster)

    def for_image(self, image_hw: tuple[int, int]) -> "PipelineConfig":
        """The config one image runs with: `tile.auto` resolved for its size."""
        tile = self.tile.for_image(image_hw)
        return self if tile == self.tile else dataclasses.replace(self, tile=tile)


SECTION_CLASSES: dict[str, type[ConfigSection]] = PipelineConfig.section_classes()
SECTIONS: tuple[str, ...] = tuple(SECTION_CLASSES)  # the config sections of `flat()`


# The original notebook's values: vit_h, 51×51 points, one crop layer, DBSCAN(0.06, 8, cosine).
NOTEBOOK = PipelineConfig(
    model_type="vit_h",
    amg=AmgConfig(
        points_per_side=51,
        pred_iou_thresh=0.86,
        stability_score_thresh=0.92,
        crop_n_layers=1,
        crop_n_points_downscale_factor=2,
        min_mask_region_area=100,
    ),
    pool=PoolConfig(cell_rule="min_pixels", min_pixels=1, weighting="uniform"),
    cluster=ClusterConfig(algorithm="dbscan", eps=0.06, min_samples=8, metric="cosine"),
)

# SAM's AMG defaults (~5× fewer prompts than `notebook`), vit_h masks, DINOv2-B embeddings
# (docs/features.md: why), eps from the knee of the k-distance curve, classes named with COCO-Stuff's
# vocabulary by CLIP ViT-B/16 (docs/names.md).
DEFAULT = PipelineConfig().with_features("dinov2-b").replace(names={"vocabulary": "coco-stuff"})

# For tiny-random smoke runs: a random SAM's masks nearly all fail SAM's IoU/stability
# filters and collapse under box NMS, so the filters are opened up and the grid is small.
SMOKE = PipelineConfig(
    model_type="tiny-random",
    amg=AmgConfig(points_per_side=8, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0),
    cluster=ClusterConfig(algorithm="dbscan", eps=0.06, min_samples=3, metric="cosine"),
)

PRESETS: dict[str, PipelineConfig] = {"default": DEFAULT, "notebook": NOTEBOOK, "smoke": SMOKE}


def get_preset(name: str) -> PipelineConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return PRESETS[name]



# ---------------------------------------------------------------- one config from a request

# `tile="auto"`: tiles of SAM's own input side (each seen at full resolution), for images whose
# long side is over TILE_AUTO_SIDES of them.
AUTO_TILE_SIZE = 1024
# Override names besides "section.knob" and a knob's own name (unique across sections): the
# knobs whose bare name says too little. They are the CLI's flags (--features, --tile-overlap).
ALIASES: dict[str, str] = {
    "features": "features.name", "features_size": "features.input_size", "tile": "tile.size",
    "tile_overlap": "tile.overlap", "tile_merge_iou": "tile.merge_iou", "names": "names.vocabulary",
    "namer": "names.namer",
}


def _knob_names() -> dict[str, str]:
    """{override name: "section.knob"}: every dotted key, the knob names of the sections with a
    flag per knob (amg, pool, cluster) where unique, the aliases (tile's `size` alone says too little)."""
    dotted = [f"{section}.{f.name}" for section, cls in SECTION_CLASSES.items() for f in dataclasses.fields(cls)]
    bare: dict[str, list[str]] = {}
    for key in dotted:
        if SECTION_CLASSES[key.split(".", 1)[0]].FLAGS:
            bare.setdefault(key.split(".", 1)[1], []).append(key)
    names = {key: key for key in dotted}
    names.update({name: keys[0] for name, keys in bare.items() if len(keys) == 1})
    names.update(ALIASES)
    return names


KNOB_NAMES: dict[str, str] = _knob_names()


def knob_key(name: str) -> str:
    """"section.knob" for an override name; ValueError naming it (and the closest names) otherwise."""
    if name in KNOB_NAMES:
        return KNOB_NAMES[name]
    import difflib

    close = difflib.get_close_matches(name, list(KNOB_NAMES), n=3)
    hint = f"; did you mean {' or '.join(close)}?" if close else ""
    raise ValueError(f"unknown setting {name!r}{hint} (settings: samseg.core.config.KNOB_NAMES)")


def configure(preset: Optional[str] = None, model: Optional[str] = None, precision: Optional[str] = None,
              **overrides: Any) -> "PipelineConfig":
    """The one way a run's config is built, from the CLI's flags, `samseg.segment`'s keywords or
    anything else: the preset (`default`; `smoke` for model tiny-random, whose random masks fail
    SAM's filters), then the model (tiny-random: features sam, which needs no download), then
    `override`. A wrong name or value is one ValueError naming it."""
    cfg = get_preset(preset or ("smoke" if model == TINY_RANDOM else "default"))
    if model is not None:
        cfg = cfg.replace(model_type=model)
    keyed = {knob_key(name): value for name, value in overrides.items()}
    if model == TINY_RANDOM:  # the offline smoke model downloads nothing: SAM's own features, no namer unless asked
        if keyed.get("features.name") is None:
            keyed["features.name"] = SAM
        if keyed.get("names.vocabulary") is None:
            keyed["names.vocabulary"] = "none"
        if keyed.get("names.namer") is None:
            keyed["names.namer"] = TINY_RANDOM
    return override(cfg, precision, **keyed)


def override(cfg: "PipelineConfig", precision: Optional[str] = None, **overrides: Any) -> "PipelineConfig":
    """`cfg` with knobs changed by name (`points_per_side=8`, `eps=0.1` or `eps="auto"`,
    `features="sam"` — with that backbone's eps unless eps is given —, `tile="auto"`,
    `cluster.min_samples=3`), then the precision. None values are ignored (a flag not given)."""
    changes: dict[str, dict[str, Any]] = {}
    features = None
    for name, value in overrides.items():
        key = knob_key(name)
        if value is None:
            continue
        section, knob_name = key.split(".", 1)
        if key == "features.name":
            features = value
            continue
        if key == "cluster.eps":  # "auto" switches eps_auto on; a number off
            changes.setdefault(section, {})["eps_auto"] = value == "auto"
            if value == "auto":
                continue
        if key == "tile.size":  # "auto": AUTO_TILE_SIZE tiles, large images only
            changes.setdefault(section, {})["auto"] = value == "auto"
            value = AUTO_TILE_SIZE if value == "auto" else value
        changes.setdefault(section, {})[knob_name] = value
    if features is not None and features != cfg.features.name:  # its eps first: an eps given overrides it
        cfg = cfg.with_features(features)
    if precision is not None:
        cfg = cfg.replace(precision=precision)
    tile = changes.get("tile", {})
    if {"overlap", "merge_iou"} & set(tile) and not tile.get("size", cfg.tile.size):
        raise ValueError("the tile overlap and merge IoU need tiling on: --tile SIZE or --tile auto "
                         "(in Python: tile=SIZE or tile='auto')")
    if tile.get("size") and "overlap" not in tile:  # the default overlap, at most a quarter of a small tile
        tile["overlap"] = min(cfg.tile.overlap, tile["size"] // 4)
    for section, knobs in changes.items():  # a value of the wrong type is a ValueError too
        _check_types(section, knobs)
    if changes.get("names", {}).get("vocabulary") is not None:  # a typo is an error now, not a vocabulary of one
        from samseg.core.namers import vocabulary

        vocabulary(changes["names"]["vocabulary"])
    return cfg.replace(**changes) if changes else cfg


def _check_types(section: str, knobs: dict[str, Any]) -> None:
    types = field_types(SECTION_CLASSES[section])
    for name, value in knobs.items():
        kind = types[name]
        ok = isinstance(value, bool) if kind is bool else \
            isinstance(value, kind) and not isinstance(value, bool) or (kind is float and isinstance(value, int)
                                                                         and not isinstance(value, bool))
        _check(ok, f"{section}.{name} must be {kind.__name__}, got {value!r}")
