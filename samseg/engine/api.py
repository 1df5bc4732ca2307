"""samseg's Python API: `samseg.segment`, `samseg.segment_batch` and the `Result` they give.

The same path as `samseg segment`: one request (samseg.core.config.configure for the config,
samseg.engine.request for the runtime), the one stage runner, the one publish step. Defaults
suit a notebook: the `default` preset, the stage cache on (a second call with new DBSCAN
settings reads two entries), MLflow tracking off (`track=True` logs a run, as the CLI does).

    import samseg
    result = samseg.segment("photo.jpg", model="vit_b", eps=0.1)
    result.label_map          # H×W uint16, 0 = no class
    result.overlay()          # a PIL image
    result.recluster(eps=0.2) # no model, no AMG, no encoder
"""

from __future__ import annotations

import dataclasses
import hashlib
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Optional, Union

import numpy as np

from samseg.core.config import configure, knob_key, override
from samseg.edges.run_schema import EXPERIMENT_DEFAULT, FROM_PARENT_RUN
from samseg.engine.publish import Tracking
from samseg.engine.request import Runtime, SegmentJob

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

    from samseg.core.types import MaskSet
    from samseg.edges.images import LoadedImage
    from samseg.engine.runner import ImageRun

ImageInput = Union[str, Path, "PILImage", np.ndarray]
CacheOption = Union[bool, str, Path]


@dataclass
class Result:
    """One segmented image. Rows (masks, embeddings, labels) are in the AMG's mask order."""

    run: "ImageRun"
    job: SegmentJob
    out_dir: Optional[str] = None  # the image dir written (segment(out=...), save())
    mlflow_run_id: Optional[str] = None  # the run logged (track=True)
    summary: dict[str, Any] = field(default_factory=dict)  # what summary.json holds

    @property
    def label_map(self) -> np.ndarray:
        """H×W uint16: 0 = no class, c + 1 = class c."""
        return self.run.label_map

    @property
    def masks(self) -> list[dict[str, Any]]:
        """The N masks as COCO RLE ({"size": [h, w], "counts": str}; pycocotools decodes them)."""
        return self.run.masks.rles

    @property
    def mask_set(self) -> "MaskSet":
        """The masks with their areas, boxes and scores (samseg.core.types.MaskSet)."""
        return self.run.masks

    @property
    def embeddings(self) -> np.ndarray:
        """N×C float32: each mask's mean feature (the backbone's, or SAM's with features='sam')."""
        return self.run.embeddings

    @property
    def labels(self) -> np.ndarray:
        """(N,) int64: each mask's class, -1 = noise."""
        return self.run.clusters.labels

    @property
    def classes(self) -> list[dict[str, int]]:
        """One row per class: id, masks (how many masks), pixels (of the label map)."""
        pixels = np.bincount(self.label_map.ravel(), minlength=self.run.clusters.n_clusters + 1)
        masks = np.bincount(self.labels[self.labels >= 0], minlength=self.run.clusters.n_clusters)
        return [{"id": c, "masks": int(masks[c]), "pixels": int(pixels[c + 1])} for c in range(self.run.clusters.n_clusters)]

    @property
    def config(self) -> Any:
        """The PipelineConfig this image ran with (samseg.core.config)."""
        return self.run.cfg

    def overlay(self) -> "PILImage":
        """The class colours over the image, with a legend (what overlay.png holds)."""
        from PIL import Image

        from samseg.core.render import render_overlay

        clusters = self.run.clusters
        sizes = np.bincount(clusters.labels[clusters.labels >= 0], minlength=clusters.n_clusters).tolist()
        return Image.fromarray(render_overlay(self.run.image.rgb, self.label_map, sizes, clusters.n_noise,
                                              names=clusters.legend()))

    def _repr_png_(self) -> bytes:  # a notebook shows the overlay
        from samseg.edges.image_dir import png_bytes

        return png_bytes(np.asarray(self.overlay()))

    def save(self, path: Union[str, Path]) -> Path:
        """Write the image dir `samseg segment` writes (labels.png, masks.json, embeddings.npy,
        overlay.png, summary.json, …) at `path`; samseg replaces only a dir it wrote."""
        from samseg.edges.image_dir import write_image_dir

        r = self.run
        self.out_dir = str(write_image_dir(Path(path), r.image, r.masks, r.embeddings, r.clusters, r.label_map,
                                           self.summary))
        return Path(self.out_dir)

    def recluster(self, **cluster: Any) -> "Result":
        """The same masks and embeddings clustered with new settings (`eps=0.1`, `min_samples=3`,
        `algorithm="hdbscan"`, …): no model load, no AMG, no encoder. Other settings need
        `samseg.segment` (their stages are cached: only what changed computes)."""
        from samseg.edges.cache import StageCache
        from samseg.engine.recluster import recluster, recluster_summary

        changed = {knob_key(k): v for k, v in cluster.items()}
        if any(not key.startswith("cluster.") for key in changed):
            others = ", ".join(k for k, key in zip(cluster, changed) if not key.startswith("cluster."))
            raise ValueError(f"recluster changes the clustering only, not {others}; segment() the image again for that")
        cfg = override(self.run.cfg, **cluster)
        given = {"amg": (self.run.masks, FROM_PARENT_RUN), "pool": (self.run.embeddings, FROM_PARENT_RUN)}
        cache = StageCache(self.job.cache_root)
        run = recluster(self.run.image, cfg, self.run.model, cache, given=given)
        summary = recluster_summary(run, self.mlflow_run_id, cache=cache)
        return Result(run, dataclasses.replace(self.job, cfg=cfg), summary=summary.to_dict())

    def __repr__(self) -> str:
        c = self.run.clusters
        return (f"<samseg.Result {self.run.image.name} {self.run.image.hw[1]}×{self.run.image.hw[0]}: "
                f"{len(self.run.masks)} masks, {c.n_clusters} classes, {c.n_noise} noise>")


def segment(image: ImageInput, model: Optional[str] = None, preset: Optional[str] = None, *,
            out: Optional[Union[str, Path]] = None, track: bool = False, experiment: str = EXPERIMENT_DEFAULT,
            cache: CacheOption = True, precision: Optional[str] = None, device: Optional[str] = None,
            checkpoint: Optional[str] = None, features_checkpoint: Optional[str] = None, seed: int = 0,
            kernels: Optional[str] = None, **settings: Any) -> Result:
    """Segment one image: a path, an s3:// URI, a PIL image or an H×W×3 uint8 array.

    model: a SAM type (vit_h, vit_l, vit_b, tiny-random; the preset's when None). preset:
    default | notebook | smoke (`default`; `smoke` for tiny-random). settings: config knobs by
    name (`points_per_side=8`, `eps=0.1` or `"auto"`, `features="sam"`, `tile="auto"`).
    out: also write OUT/<name>/ as `samseg segment` does; track: log an MLflow run of it (needs
    out). cache: True = the stage cache ($SAMSEG_CACHE or ~/.cache/samseg/cache), False = none,
    or a dir / s3:// prefix. A wrong knob or value is one ValueError naming it.
    """
    cfg = configure(preset, model, precision, **settings)
    if track and out is None:
        raise ValueError("track=True logs the image dir it writes: give out= as well")
    with _job(cfg, out, track, experiment, cache, locals()) as job:
        job.fetch_weights()  # missing weights download now, or one CheckpointError names them all
        loaded = load_input(image)
        if out is not None:  # a folder of the user's where OUT/<name> goes: refused before any compute
            from samseg.core.errors import RefusedError
            from samseg.edges.outdirs import refused_outputs, safe_dir_name

            refused = refused_outputs(job.out, [loaded.uri], [safe_dir_name(loaded.uri)])
            if refused:
                raise RefusedError(refused[loaded.uri])
        from samseg.engine.segment import compute_image
        from samseg.engine.summary import summarize

        run = compute_image(loaded, job)
        from samseg.engine.naming import name_run

        from samseg.edges.cache import StageCache

        summary = summarize(run, extra=name_run(run, device, seed, StageCache(job.cache_root)))
        result = Result(run, job, summary=summary.to_dict())
        if out is not None:
            from samseg.edges.outdirs import safe_dir_name
            from samseg.engine.publish import publish

            where = publish(run, summary, job.out, safe_dir_name(loaded.uri), job.tracking)
            result.out_dir, result.mlflow_run_id = where["out_dir"], where["mlflow_run_id"]
    return result


def segment_batch(images: Union[str, Path, list[Union[str, Path]]], out: Union[str, Path], model: Optional[str] = None,
                  preset: Optional[str] = None, *, classes: Optional[str] = None, classes_from: Optional[str] = None,
                  track: bool = False, experiment: str = EXPERIMENT_DEFAULT, cache: CacheOption = True,
                  precision: Optional[str] = None, device: Optional[str] = None, checkpoint: Optional[str] = None,
                  features_checkpoint: Optional[str] = None, seed: int = 0, kernels: Optional[str] = None,
                  **settings: Any) -> dict[str, Any]:
    """Segment every image of a folder, glob, file or s3:// prefix (or a list of them) into
    OUT/<name>/ each, as `samseg segment` does; returns the batch report (what
    OUT/batch_summary.json holds: one entry per image, "completed" or "failed" with its error
    line). classes="dataset" (or classes_from=<dataset run id / classes.json>) gives one set of
    class ids across the images; classes="image" (the default without classes_from) ids of each
    image's own. The other arguments are `segment`'s."""
    from samseg.engine.batch import ClassesRequest, dataset_classes_wanted, segment_local

    wanted = dataset_classes_wanted(classes, classes_from)  # ValueError: a bad classes, or "image" with classes_from
    cfg = configure(preset, model, precision, **settings)
    request = ClassesRequest(classes_from) if wanted else None
    source = [str(i) for i in images] if isinstance(images, list) else str(images)
    with _job(cfg, out, track, experiment, cache, locals()) as job:
        return segment_local(source, job, request)


@contextmanager
def _job(cfg: Any, out: Any, track: bool, experiment: str, cache: CacheOption,
         arguments: dict[str, Any]) -> Iterator[SegmentJob]:
    """The run request of a call: its runtime options are the arguments named as Runtime's fields."""
    with _cache_root(cache) as root:
        yield SegmentJob(cfg, Runtime.of(arguments, cache=root), str(out) if out is not None else "",
                         Tracking(track=track, experiment=experiment))


@contextmanager
def _cache_root(cache: CacheOption) -> Iterator[str]:
    """The stage cache root for `cache` (True: the default one; False: a private one, removed after)."""
    if cache is False:
        with tempfile.TemporaryDirectory(prefix="samseg-nocache-") as tmp:
            yield tmp
        return
    if cache is True:
        from samseg.edges.cache import default_cache_root

        yield default_cache_root()
        return
    yield str(cache)


def load_input(image: ImageInput) -> "LoadedImage":
    """A path or s3:// URI (read and decoded as `samseg segment` reads it), a PIL image or an
    H×W×3 uint8 array (its identity: the sha256 of its pixels and shape)."""
    from samseg.edges.images import LoadedImage, check_size, max_pixels_from_env

    if isinstance(image, (str, Path)):
        from samseg.engine.segment import read_image

        return read_image(str(image))
    if hasattr(image, "convert") and hasattr(image, "size"):  # a PIL image
        name = Path(getattr(image, "filename", "") or "image.png").name
        rgb = np.asarray(image.convert("RGB"))
    elif isinstance(image, np.ndarray):
        name = "array.png"
        rgb = image
    else:
        raise ValueError(f"image must be a path, an s3:// URI, a PIL image or an H×W×3 uint8 array, not {type(image).__name__}")
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"image array must be H×W×3 uint8 (RGB), got shape {rgb.shape} {rgb.dtype}")
    check_size(name, rgb.shape[1], rgb.shape[0], max_pixels_from_env())
    rgb = np.ascontiguousarray(rgb)
    sha = hashlib.sha256(f"rgb:{rgb.shape[0]}x{rgb.shape[1]}:".encode() + rgb.tobytes()).hexdigest()
    return LoadedImage(rgb=rgb, sha256=sha, name=name, uri=f"<{name}>")
