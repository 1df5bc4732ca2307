"""The FastAPI app behind `samseg ui`: HTML pages, a small JSON API, and run artifacts.

Pages are server-rendered (Jinja2) so a page always shows something — the data or an
error message — even without JavaScript; the scripts under static/ add the rerun form,
exemplar clicks, job progress and run picking for compare.
"""

from __future__ import annotations

import re

import logging
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator
from urllib.parse import urlencode

from fastapi import Body, FastAPI, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.exceptions import HTTPException as StarletteHTTPException

from samseg.apps.ui import actions, guards
from samseg.apps.ui.dataset_view import dataset_detail
from samseg.core.secrets import scrub_secrets
from samseg.apps.ui.jobs import JobRunner, QueueFull
from samseg.apps.ui.guards import TOKEN_COOKIE, UnsafePathError, token_ok
from samseg.apps.ui.service import RunDataError, RunNotFound, RunStore, StoreUnavailable, UiSettings
from samseg.apps.ui.validation import FormError, validate_batch_form, validate_rerun_form
from samseg.core.backbones import BACKBONE_NAMES
from samseg.edges.mlflow.tracking import RUN_ID_CHARS

log = logging.getLogger(__name__)
HERE = Path(__file__).parent
SCOPES = ("image", "batch")


def create_app(settings: UiSettings | None = None) -> FastAPI:
    """Build the app; `settings.token` set → every request must carry it."""
    settings = settings or UiSettings()
    jobs = JobRunner()
    guards.redact_access_log()

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        jobs.shutdown()

    app = FastAPI(title="samseg", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.settings = settings
    app.state.store = RunStore(settings)
    app.state.jobs = jobs
    app.state.templates = Jinja2Templates(directory=str(HERE / "templates"))
    from samseg.apps import count

    app.state.templates.env.filters["count"] = count  # {{ n|count("class") }}: "1 class", "2 classes"
    app.state.templates.env.globals["label_studio"] = settings.label_studio  # the pages' "Send to Label Studio"
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    _add_token_guard(app, settings.token)
    if settings.allowed_hosts:
        from starlette.middleware.trustedhost import TrustedHostMiddleware

        app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(settings.allowed_hosts))
    _add_error_handlers(app)
    _add_pages(app)
    _add_api(app)
    _add_job_api(app)
    _add_files(app)
    return app


# ------------------------------------------------------------------ guards
def _add_token_guard(app: FastAPI, token: str | None) -> None:
    """One middleware, fixed order: foreign-origin check (CSRF) → token (with a limit on
    wrong ones) → the app; every answer carries the anti-framing and nosniff headers."""
    limiter = guards.FailureLimiter()

    @app.middleware("http")
    async def guard(request: Request, call_next: Any) -> Response:
        head = request.method == "HEAD"
        if head:  # HEAD answers as GET, without the body (the routes are GET routes)
            request.scope["method"] = "GET"
        resp = await _guarded(request, call_next)
        if head:
            resp = Response(status_code=resp.status_code, headers=dict(resp.headers))
        for key, value in guards.SECURITY_HEADERS.items():
            resp.headers.setdefault(key, value)
        return resp

    async def _guarded(request: Request, call_next: Any) -> Response:
        why = guards.foreign_origin(request.method, request.headers.get("host"), request.headers.get("origin"),
                                       request.headers.get("sec-fetch-site"))
        if why:
            return _error(request, 403, why)
        if not token:
            return await call_next(request)
        client = guards.client_address(request)
        if limiter.blocked(client):
            return _error(request, 429, "too many wrong access tokens from this address; wait a minute")
        given = request.query_params.get("token")
        if request.method in ("GET", "HEAD") and given is not None and token_ok(token, f"Bearer {given}", None):
            # ?token= once → cookie, then drop the token from the address bar and history.
            rest = [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
            url = request.url.path + ("?" + urlencode(rest) if rest else "")
            resp = RedirectResponse(url, status_code=303)
            resp.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict")
            return resp
        if token_ok(token, request.headers.get("authorization"), request.cookies.get(TOKEN_COOKIE)):
            return await call_next(request)
        if given is not None or request.headers.get("authorization") or request.cookies.get(TOKEN_COOKIE):
            limiter.failed(client)
        return _error(request, 401, "this samseg UI needs its access token: open the URL with ?token=… once "
                      "or send 'Authorization: Bearer …'")


def _wants_json(request: Request) -> bool:
    return request.url.path.startswith("/api/") or "text/html" not in request.headers.get("accept", "")


REGISTERED_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._-]{0,99}")  # an MLflow model name the UI registers


def _error(request: Request, status: int, message: str, **extra: Any) -> Response:
    message = guards.public_message(message)
    if _wants_json(request):
        return JSONResponse({"detail": message, **extra}, status_code=status)
    templates = request.app.state.templates
    return templates.TemplateResponse(request, "error.html", {"status": status, "message": message}, status_code=status)


# Expected errors → HTTP status; the message is the exception's one line (server paths removed).
_ERROR_STATUS: tuple[tuple[type[Exception], int], ...] = (
    (RunNotFound, 404), (UnsafePathError, 404), (FileNotFoundError, 404), (RunDataError, 409),
    (StoreUnavailable, 503), (QueueFull, 429),
)


def _status_handler(status: int) -> Any:
    async def handler(request: Request, exc: Exception) -> Response:
        return _error(request, status, str(exc))

    return handler


def _add_error_handlers(app: FastAPI) -> None:
    for exc_type, status in _ERROR_STATUS:
        app.add_exception_handler(exc_type, _status_handler(status))

    @app.exception_handler(FormError)
    async def bad_form(request: Request, exc: FormError) -> Response:
        return _error(request, 422, str(exc), errors=exc.errors)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        return _error(request, exc.status_code, str(exc.detail))


    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        # The details (SQL, paths) go to the server log only.
        log.exception("unexpected error on %s", request.url.path)
        return _error(request, 500, f"internal error ({type(exc).__name__}); the details are in the server log")


# ------------------------------------------------------------------- pages
def _add_pages(app: FastAPI) -> None:
    @app.get("/", response_class=HTMLResponse)
    def runs_page(request: Request, experiment: str | None = None, image: str | None = None) -> Response:
        store: RunStore = request.app.state.store
        exp = experiment or store.settings.experiment
        rows = store.list_runs(exp, image)
        ctx = {"runs": rows, "experiment": exp, "image": image or "", "tracking_uri": scrub_secrets(store.tracking_uri)}
        return request.app.state.templates.TemplateResponse(request, "runs.html", ctx)

    @app.get("/runs/{run_id}", response_class=HTMLResponse)
    def run_page(request: Request, run_id: str) -> Response:
        store: RunStore = request.app.state.store
        full = store.resolve(run_id) if len(run_id) < RUN_ID_CHARS else run_id
        if full != run_id:  # a prefix, as the runs list and the CLI show ids: its run's page
            return RedirectResponse(f"/runs/{full}", status_code=307)
        try:
            run = store.get_any_run(run_id)
        except RunNotFound:  # a batch of per-image classes: its page lists its images
            from samseg.apps.ui.dataset_view import batch_detail

            batch = store.shard_batch(run_id)  # a shard run: its line on its batch's page
            if batch is not None:
                return RedirectResponse(f"/runs/{batch}#shard-{run_id}", status_code=307)
            batch = store.get_batch_run(run_id)
            return request.app.state.templates.TemplateResponse(request, "batch.html", batch_detail(store, batch))
        if store.is_dataset_run(run):
            return request.app.state.templates.TemplateResponse(request, "dataset.html", dataset_detail(store, run))
        return request.app.state.templates.TemplateResponse(request, "run.html", run_detail(store, run_id))

    @app.get("/compare", response_class=HTMLResponse)
    def compare_page(request: Request, runs: list[str] = Query(default=[])) -> Response:
        store: RunStore = request.app.state.store
        ids = _split_ids(runs)
        try:
            data = actions.compare(store, ids)
        except ValueError as exc:
            return _error(request, 400, str(exc))
        return request.app.state.templates.TemplateResponse(request, "compare.html", data)


def run_detail(store: RunStore, run_id: str) -> dict[str, Any]:
    """Everything the run page shows (also GET /api/runs/{id})."""
    from samseg.core.render import class_color
    from samseg.edges.layout import CLASSES_DIR, cutout_name

    from samseg.apps.ui.dataset_view import dataset_note

    run = store.get_run(run_id)
    summary = store.summary(run_id)
    row = store.row(run)
    masks, _, labels = store.outputs(run_id)
    sizes = [int((labels == c).sum()) for c in range(int(labels.max(initial=-1)) + 1)]
    names = summary.get("class_names") or {}
    try:  # the cut-outs the run holds: a run logged before named cut-outs has class_<c>.png only
        held = {f.path for f in store.client.list_artifacts(run_id, CLASSES_DIR)}
    except Exception:  # noqa: BLE001 — an artifact store that cannot list: the names the run would have
        held = set()

    def cutout(c: int) -> str:
        named = cutout_name(c, names.get(str(c)))
        return named if named in held or cutout_name(c) not in held else cutout_name(c)

    scores = {int(r["id"]): r["score"] for r in (summary.get("naming") or {}).get("classes", [])
              if isinstance(r, dict) and r.get("name") and r.get("score") is not None}  # the namer's, for named classes
    classes = [
        {"id": c, "n_masks": n, "color": "#%02x%02x%02x" % class_color(c), "name": names.get(str(c)),
         "score": scores.get(c) if names.get(str(c)) else None, "cutout_url": f"/runs/{run_id}/files/{cutout(c)}"}
        for c, n in enumerate(sizes) if n  # a dataset class this image does not have: no row, no cut-out
    ]
    noise = [int(i) for i in (labels < 0).nonzero()[0]]
    table = [
        {"index": i, "area": int(masks.areas[i]), "predicted_iou": round(float(masks.predicted_iou[i]), 4),
         "stability_score": round(float(masks.stability_score[i]), 4), "cluster": int(labels[i])}
        for i in range(len(masks))
    ]
    return {
        "run": row,
        "dataset": dataset_note(store, row, summary),
        "summary": summary,
        "image_hw": list(masks.image_hw),
        "classes": classes,
        "edit_rows": classes,  # the curation panel's rows (templates/_curation.html)
        "noise": noise,
        "noise_url": f"/runs/{run_id}/highlight.png?masks=" + ",".join(map(str, noise)) if noise else None,
        "masks": table,
        "form": actions.form_defaults(actions.run_config(store, run_id, summary), summary),
        "backbones": backbone_choices(),  # the rerun form's features choices: another one re-pools
        "input_url": f"/runs/{run_id}/files/input.jpg",
    }


def backbone_choices() -> list[dict[str, Any]]:
    """The features menu: every backbone, and whether its weights are here (SAM's own encoder and
    seeded test weights always are); one that is not would download on first use."""
    from samseg.core.backbones import SAM
    from samseg.sam.backbones import BACKBONE_WEIGHTS
    from samseg.sam.weights import weight

    return [{"name": n, "ready": n == SAM or weight(n, BACKBONE_WEIGHTS).present} for n in BACKBONE_NAMES]


def _rerun(store: RunStore, run_id: str, new: Any, cfg: Any, progress: Any) -> dict[str, Any]:
    """In this process, or through the Prefect `recluster` deployment (UiSettings.submit).
    new: (cluster, pool, features) configs; a re-pool (pool or backbone changed) runs here."""
    from samseg.apps.ui import prefect_submit

    cluster_cfg, pool_cfg, features_cfg = new
    s = store.settings
    if prefect_submit.use_prefect(s.submit, pool_cfg != cfg.pool or features_cfg != cfg.features, s.prefect_deployment):
        out = s.prefect_out or str(store.cache_dir / "recluster-out")
        return prefect_submit.rerun_via_prefect(store, run_id, cluster_cfg, out, progress, s.prefect_deployment)
    return {**actions.rerun(store, run_id, cluster_cfg, pool_cfg, progress, features_cfg), "via": "local"}


def _push_to_label_studio(store: RunStore, run_id: str, progress: Any) -> dict[str, Any]:
    import tempfile
    from pathlib import Path

    from samseg.edges.labelstudio import LabelStudioError, push_run

    s = store.settings
    actions.image_runs_only(store, run_id, f"push it with `samseg export {run_id[:8]} --format labelstudio --to URL`")
    progress("downloading the run's outputs and pushing them to Label Studio")
    with tempfile.TemporaryDirectory(prefix="samseg-ls-") as tmp:
        try:
            res = push_run(str(s.label_studio), run_id, s.label_studio_project, Path(tmp))
        except LabelStudioError as exc:
            raise RunDataError(str(exc)) from None
    return {"project_url": res.project_url, "line": res.line(), "created": res.created, "matched": res.matched}


def _finite(value: Any) -> float:
    """A finite number (JSON number or numeric string, as form inputs send; never a bool,
    "nan" or "inf"), else ValueError."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError("not a number")
    v = float(value)
    if v != v or v in (float("inf"), float("-inf")):
        raise ValueError("not finite")
    return v


def _split_ids(values: list[str]) -> list[str]:
    out: list[str] = []
    for v in values:
        out.extend(x.strip() for x in v.split(",") if x.strip())
    return out


# --------------------------------------------------------------------- api
def _add_api(app: FastAPI) -> None:
    from samseg.apps.ui.preview_api import add_preview_api

    add_preview_api(app)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        # async: answered on the event loop, not on the thread pool that sync routes may fill
        return {"status": "ok"}

    @app.get("/api/runs")
    def api_runs(request: Request, experiment: str | None = None, image: str | None = None) -> dict[str, Any]:
        store: RunStore = request.app.state.store
        return {"runs": store.list_runs(experiment, image)}

    @app.get("/api/runs/{run_id}")
    def api_run(request: Request, run_id: str) -> dict[str, Any]:
        store: RunStore = request.app.state.store
        run = store.get_any_run(run_id)
        if store.is_dataset_run(run):
            return dataset_detail(store, run)
        detail = run_detail(store, run_id)
        detail.pop("summary", None)
        return detail

    @app.post("/api/runs/{run_id}/rerun", status_code=202)
    def api_rerun(request: Request, run_id: str, form: dict[str, Any] = Body(...)) -> dict[str, Any]:
        store: RunStore = request.app.state.store
        batch = store.batch_or_none(run_id)
        if batch is not None:  # its images, each with the form's values over its own, as one new batch
            changes = validate_batch_form(form, dict(batch.data.params))
            job = request.app.state.jobs.submit("rerun", lambda p: actions.rerun_batch(store, batch, changes, p))
            return job.to_dict()
        cfg = actions.run_config(store, run_id)  # RunNotFound → 404 before validating
        new_cfg = validate_rerun_form(form, cfg)
        new = (new_cfg.cluster, new_cfg.pool, new_cfg.features)
        job = request.app.state.jobs.submit("rerun", lambda p: _rerun(store, run_id, new, cfg, p))
        return job.to_dict()

    @app.post("/api/runs/{run_id}/classes", status_code=202)
    def api_edit_classes(request: Request, run_id: str, body: dict[str, Any] = Body(...)) -> Any:
        """A person's edits of the run's classes (rename, merge, split, drop), saved as a new run: a job."""
        from samseg.core.curation import edits_from_json

        store: RunStore = request.app.state.store
        run = store.get_any_run(run_id)  # RunNotFound → 404 before a job
        try:
            edits = edits_from_json(body.get("edits"))
        except ValueError as exc:
            return _error(request, 422, str(exc))
        register = body.get("register") or None  # a dataset batch's edited classes, as a model version
        if not store.is_dataset_run(run):
            if register is not None:
                raise FormError({"register": "only a dataset batch's classes are registered"})
            job = request.app.state.jobs.submit("classes", lambda p: actions.save_edits(store, run_id, edits, p))
            return job.to_dict()
        if register is not None and not (isinstance(register, str) and REGISTERED_NAME.fullmatch(register)):
            raise FormError({"register": "a model name is 1 to 100 letters, digits, spaces, '.', '_' or '-'"})
        job = request.app.state.jobs.submit("classes", lambda p: actions.save_dataset_edits(store, run_id, edits, p,
                                                                                             register))
        return job.to_dict()

    @app.post("/api/runs/{run_id}/label-studio", status_code=202)
    def api_label_studio(request: Request, run_id: str) -> Any:
        """Push the run (an image run, or a batch run's images) into the configured Label Studio, as a job."""
        store: RunStore = request.app.state.store
        s = store.settings
        if not s.label_studio:
            return _error(request, 409, "no Label Studio is configured: start the UI with `samseg ui --label-studio URL`")
        store.get_any_run(run_id)  # RunNotFound → 404 before a job
        job = request.app.state.jobs.submit("label-studio", lambda p: _push_to_label_studio(store, run_id, p),
                                            key=(run_id, s.label_studio, s.label_studio_project))
        return job.to_dict()

    @app.post("/api/runs/{run_id}/query")
    def api_query(request: Request, run_id: str, body: dict[str, Any] = Body(...)) -> Any:
        store: RunStore = request.app.state.store
        store.get_run(run_id)
        try:
            x, y = _finite(body["x"]), _finite(body["y"])
            max_distance = _finite(body.get("max_distance", 0.1))
            scope = str(body.get("scope", "image"))
        except (KeyError, TypeError, ValueError):
            return _error(request, 422, "query needs finite numbers x, y (pixels) and max_distance")
        errors = {}
        if not 0.0 <= max_distance <= 2.0:
            errors["max_distance"] = "max_distance must be in [0, 2] (cosine distance)"
        if scope not in SCOPES:
            errors["scope"] = f"scope must be one of {', '.join(SCOPES)}"
        if errors:
            return _error(request, 422, "; ".join(errors.values()), errors=errors)
        return actions.exemplar_query(store, run_id, x, y, max_distance, scope)



def _add_job_api(app: FastAPI) -> None:
    @app.post("/api/classes", status_code=202)
    def api_save_class(request: Request, body: dict[str, Any] = Body(...)) -> Any:
        store: RunStore = request.app.state.store
        selections = body.get("selections")
        if not isinstance(selections, list) or not selections:
            return _error(request, 422, "selections must be a non-empty list of {run_id, indices}")
        for sel in selections:
            if not isinstance(sel, dict) or not isinstance(sel.get("indices"), list) or not sel["indices"]:
                return _error(request, 422, "every selection needs a run_id and a non-empty list of mask indices")
            masks, _, _ = store.outputs(str(sel.get("run_id")))  # RunNotFound → 404
            indices = sel["indices"]
            if not all(isinstance(i, int) and not isinstance(i, bool) for i in indices):
                return _error(request, 422, "mask indices must be whole numbers")
            if len(set(indices)) != len(indices):
                return _error(request, 422, "mask indices must not repeat")
            try:
                actions.selection_labels(len(masks), indices)
            except (TypeError, ValueError) as exc:
                return _error(request, 422, str(exc))
        run_ids = [str(sel.get("run_id")) for sel in selections]
        if len(set(run_ids)) != len(run_ids):
            return _error(request, 422, "each run may appear in one selection only")
        query = {k: body[k] for k in ("source_run_id", "mask", "max_distance") if k in body}
        job = request.app.state.jobs.submit("save-class", lambda p: actions.save_class(store, selections, query, p))
        return job.to_dict()

    @app.get("/api/jobs/{job_id}")
    def api_job(request: Request, job_id: str) -> Any:
        job = request.app.state.jobs.get(job_id)
        if job is None:
            return _error(request, 404, f"job {job_id} not found (jobs are kept in memory by this UI process)")
        return job.to_dict()

    @app.get("/api/compare")
    def api_compare(request: Request, runs: list[str] = Query(default=[])) -> Any:
        try:
            return actions.compare(request.app.state.store, _split_ids(runs))
        except ValueError as exc:
            return _error(request, 400, str(exc))


# ------------------------------------------------------------------- files
def _add_files(app: FastAPI) -> None:
    @app.get("/runs/{run_id}/files/{path:path}")
    def run_file(request: Request, run_id: str, path: str) -> Response:
        full = request.app.state.store.file_path(run_id, path)
        return FileResponse(full, headers={"Cache-Control": "private, max-age=3600"})

    @app.get("/runs/{run_id}/highlight.png")
    def highlight(request: Request, run_id: str, masks: str = "") -> Response:
        try:
            indices = [int(v) for v in masks.split(",") if v.strip()]
        except ValueError:
            return _error(request, 422, "masks must be a comma-separated list of mask indices")
        try:
            png = actions.highlight_png(request.app.state.store, run_id, indices)
        except ValueError as exc:
            return _error(request, 422, str(exc))
        return Response(png, media_type="image/png")
