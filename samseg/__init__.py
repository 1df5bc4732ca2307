"""samseg: automatic semantic segmentation with Segment Anything.

    import samseg
    result = samseg.segment("photo.jpg")          # or an s3:// URI, a PIL image, an H×W×3 uint8 array
    result.label_map, result.classes, result.overlay()
    result.recluster(eps=0.1)                      # new classes, no model run
    samseg.segment_batch("photos/", out="out/")    # what `samseg segment photos/ --out out/` does

docs/python.md has the whole API. Heavy imports (torch, segment_anything, sklearn) are
deferred until a function runs, so `import samseg` and `samseg --help` stay fast.
"""

from typing import Any

__version__ = "0.1.0"
__all__ = ["segment", "segment_batch", "Result", "configure", "PRESETS", "__version__"]

# name -> the module that defines it (imported on first use)
_API = {"segment": "samseg.engine.api", "segment_batch": "samseg.engine.api", "Result": "samseg.engine.api",
        "configure": "samseg.core.config", "PRESETS": "samseg.core.config"}


def __getattr__(name: str) -> Any:
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'samseg' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
