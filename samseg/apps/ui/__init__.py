"""`samseg ui`: a small web UI over samseg's MLflow runs (FastAPI + server-rendered pages).

Browse runs, inspect a run's classes and masks, rerun the clustering from the stored
masks/embeddings, query by exemplar, compare runs. `create_app(UiSettings(...))` builds
the ASGI app; `samseg.apps.cli.ui` is the command line entry.
"""

from samseg.apps.ui.service import UiSettings


def create_app(settings: UiSettings | None = None):  # -> fastapi.FastAPI
    from samseg.apps.ui.app import create_app as _create

    return _create(settings)


__all__ = ["UiSettings", "create_app"]
