"""POST /api/runs/{run_id}/preview: the class overlay for new clustering settings, drawn from
the run's masks and embeddings (samseg.engine.preview), no run created. Answers image/png
(long side at most 1024 px) with X-Samseg-Clusters / X-Samseg-Noise; "Save as run" is the
rerun endpoint. The last few runs' sessions stay in memory, so a slider drag costs one
clustering and one paint per frame."""

from __future__ import annotations

import threading
from concurrent.futures import Future
from collections import OrderedDict
from typing import Any

from fastapi import Body, FastAPI, Request, Response

from samseg.apps.ui import actions
from samseg.apps.ui.service import RunDataError, RunStore
from samseg.apps.ui.validation import validate_cluster_form

MAX_SESSIONS = 4
MAX_SESSION_BYTES = 512 * 2**20  # all sessions together; the newest is kept whatever its size


class PreviewSessions:
    """LRU of PreviewSession by run id (each holds one image's masks, embeddings and canvas),
    bounded in count and in bytes (a few 100-MP runs must not hold gigabytes after a burst).

    Single flight: a burst of first previews of one run builds its session once; the other
    requests wait for that one (and get its error, if it fails) instead of each decoding
    the run's masks at the same time."""

    def __init__(self, store: RunStore, size: int = MAX_SESSIONS, max_bytes: int = MAX_SESSION_BYTES) -> None:
        self.store, self.size, self.max_bytes = store, size, max_bytes
        self._sessions: OrderedDict[str, Any] = OrderedDict()
        self._building: dict[str, Future] = {}
        self._lock = threading.Lock()

    def get(self, run_id: str) -> Any:
        with self._lock:
            if run_id in self._sessions:
                self._sessions.move_to_end(run_id)
                self._evict()
                return self._sessions[run_id]
            building = self._building.get(run_id)
            if building is None:
                mine = self._building[run_id] = Future()
        if building is not None:
            return building.result()  # the session another request is building
        try:
            session = self._open(run_id)
        except Exception as exc:
            with self._lock:
                del self._building[run_id]
            mine.set_exception(exc)
            raise
        with self._lock:
            del self._building[run_id]
            self._sessions[run_id] = session
            self._evict()
        mine.set_result(session)
        return session

    def _evict(self) -> None:
        """Oldest first, until both bounds hold (a session's canvas grows it after its first use)."""
        while len(self._sessions) > 1 and (len(self._sessions) > self.size or self.held_bytes() > self.max_bytes):
            self._sessions.popitem(last=False)

    def held_bytes(self) -> int:
        return sum(int(getattr(s, "nbytes", 0)) for s in self._sessions.values())

    def _open(self, run_id: str) -> Any:
        from samseg.engine.preview import PreviewSession
        from samseg.engine.recluster import ReclusterError, parent_model

        masks, embeddings, labels = self.store.outputs(run_id)
        summary = self.store.summary(run_id)
        try:
            model = parent_model(summary)
        except ReclusterError as exc:
            raise RunDataError(f"run {run_id}: {exc}") from None
        cfg = actions.run_config(self.store, run_id, summary)
        return PreviewSession(self.store.load_image(run_id), masks, embeddings, cfg, model, labels, summary)


def add_preview_api(app: FastAPI) -> None:
    app.state.previews = PreviewSessions(app.state.store)

    @app.post("/api/runs/{run_id}/preview")
    def api_preview(request: Request, run_id: str, body: Any = Body(...)) -> Response:
        store: RunStore = request.app.state.store
        cfg = actions.run_config(store, run_id)  # RunNotFound -> 404 before validating
        cluster_cfg = validate_cluster_form(body, cfg)  # FormError -> 422 naming the field
        png, clusters = request.app.state.previews.get(run_id).png(cluster_cfg)
        headers = {"X-Samseg-Clusters": str(clusters.n_clusters), "X-Samseg-Noise": str(clusters.n_noise),
                   "Cache-Control": "no-store"}
        return Response(content=png, media_type="image/png", headers=headers)

    @app.post("/api/runs/{run_id}/classes/preview")
    def api_edits_preview(request: Request, run_id: str, body: dict[str, Any] = Body(...)) -> Response:
        """The overlay after a person's class edits (the curation panel's list), no run created."""
        from samseg.core.curation import edits_from_json

        store: RunStore = request.app.state.store
        store.get_run(run_id)  # an image run (RunNotFound -> 404): a dataset batch has no one overlay
        try:
            clusters = request.app.state.previews.get(run_id).edited(edits_from_json(body.get("edits")))
        except ValueError as exc:  # an unknown class, a bad name, ...: 422 naming the edits
            from samseg.apps.ui.validation import FormError

            raise FormError({"edits": str(exc)}) from None
        png, _ = request.app.state.previews.get(run_id).draw(clusters)
        headers = {"X-Samseg-Clusters": str(clusters.n_clusters), "X-Samseg-Noise": str(clusters.n_noise),
                   "Cache-Control": "no-store"}
        return Response(content=png, media_type="image/png", headers=headers)

    @app.get("/api/runs/{run_id}/sweep")
    def api_sweep(request: Request, run_id: str, eps_range: str | None = None) -> Any:
        """n_clusters / noise over an eps grid and the k-distance knee (samseg.engine.sweep), under
        the run's own cluster settings."""
        store: RunStore = request.app.state.store
        return _sweep(store, run_id, actions.run_config(store, run_id).cluster, eps_range)

    @app.post("/api/runs/{run_id}/sweep")
    def api_sweep_form(request: Request, run_id: str, eps_range: str | None = None, body: Any = Body(...)) -> Any:
        """The same under the form's settings (as the preview takes them): its min_samples and
        metric shape the curve and its knee, so a click on the chart gives an eps for that form."""
        store: RunStore = request.app.state.store
        cfg = actions.run_config(store, run_id)  # RunNotFound -> 404 before validating
        return _sweep(store, run_id, validate_cluster_form(body, cfg), eps_range)


def _sweep(store: RunStore, run_id: str, cluster: Any, eps_range: str | None) -> dict[str, Any]:
    from samseg.apps.ui.validation import FormError
    from samseg.core.sweep import eps_grid, largest_distance
    from samseg.engine.sweep import sweep_report

    try:
        eps_grid(eps_range, largest_distance(cluster))
    except ValueError as exc:
        raise FormError({"eps_range": str(exc)}) from None
    _, embeddings, _ = store.outputs(run_id)
    return {"run_id": run_id, **sweep_report(embeddings, cluster, eps_range)}
