"""A person corrects the classes: rename, merge, split, drop — on a run's masks and embeddings.

`apply_edits(labels, embeddings, edits, cfg, names)` is pure: the (N,) class ids of the masks
(AMG order, -1 = noise) become new ones. Edits name classes by the ids the run has and apply in
order; the result is renumbered by decreasing size (as any clustering is), names following their
class. A split re-clusters only that class's masks with DBSCAN at a smaller eps (half the run's,
or the one given), its largest part keeping the name; masks the split calls noise stay in that
largest part, so a split never loses a mask. Bad edits are one ValueError line, nothing applied.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np

MAX_NAME = 200  # characters of a class name


class EditError(ValueError):
    """A person's edit that cannot be applied (an unknown class, a bad name, ...): a usage error,
    nothing written."""


@dataclass(frozen=True)
class Edit:
    """One edit: op rename | merge | split | drop; classes: the ids it names; name: rename's;
    eps: split's DBSCAN eps (None: half the run's)."""

    op: str
    classes: tuple[int, ...]
    name: Optional[str] = None
    eps: Optional[float] = None

    def record(self) -> dict[str, Any]:
        """What summary.json's `edits` holds for it."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


def check_name(name: str) -> str:
    if not name.strip() or len(name) > MAX_NAME or not name.isprintable():
        raise EditError(f"class name {name[:40]!r}: a name is 1 to {MAX_NAME} printable characters")
    return name.strip()


def _ids(text: str, what: str) -> tuple[int, ...]:
    try:
        ids = tuple(int(t) for t in text.split(","))
    except ValueError:
        raise EditError(f"{what} {text!r}: class ids are numbers, e.g. 3 or 3,7") from None
    if len(set(ids)) != len(ids):
        raise EditError(f"{what} {text!r}: a class is named twice")
    return ids


def parse_edits(rename: list[str] = (), merge: list[str] = (), split: list[str] = (),  # type: ignore[assignment]
                drop: list[str] = ()) -> list[Edit]:  # type: ignore[assignment]
    """The CLI's `--rename 3=road --merge 3,7 --split 5[:EPS] --drop 9` as edits (merges, splits and
    drops first, renames last, so a name can go to a merged class by its id)."""
    edits = []
    for text in merge:
        ids = _ids(text, "--merge")
        if len(ids) < 2:
            raise EditError(f"--merge {text!r}: merging needs two classes or more, e.g. 3,7")
        edits.append(Edit("merge", ids))
    for text in split:
        cls, _, eps = text.partition(":")
        try:
            value = float(eps) if eps else None
        except ValueError:
            raise EditError(f"--split {text!r}: give CLASS or CLASS:EPS, e.g. 5 or 5:0.03") from None
        if value is not None and not value > 0:
            raise EditError(f"--split {text!r}: eps must be > 0")
        edits.append(Edit("split", _ids(cls, "--split")[:1], eps=value))
    for text in drop:
        edits.append(Edit("drop", _ids(text, "--drop")))
    renamed: set[tuple[int, ...]] = set()
    for text in rename:
        cls, eq, name = text.partition("=")
        if not eq:
            raise EditError(f"--rename {text!r}: give CLASS=NAME, e.g. 3=road")
        ids = _ids(cls, "--rename")[:1]
        if ids in renamed:  # two names for one class on one command line: which one was meant is not ours to pick
            raise EditError(f"--rename: class {ids[0]} is renamed twice")
        renamed.add(ids)
        edits.append(Edit("rename", ids, name=check_name(name)))
    return edits


OPS = ("rename", "merge", "split", "drop")
MAX_EDITS = 200  # more edits than this in one request is not a person at work


def edits_from_json(items: Any) -> list[Edit]:
    """The UI's edit list ([{"op", "classes", "name"?, "eps"?}, …]) as edits; ValueError naming the bad one."""
    if not isinstance(items, list) or not items or len(items) > MAX_EDITS:
        raise EditError(f"edits must be a list of 1 to {MAX_EDITS} edits")
    edits = []
    for k, item in enumerate(items, 1):
        if not isinstance(item, dict) or item.get("op") not in OPS:
            raise EditError(f"edit {k}: op must be one of {', '.join(OPS)}")
        classes = item.get("classes")
        if not isinstance(classes, list) or not classes or not all(isinstance(c, int) and c >= 0 for c in classes) \
                or len(set(classes)) != len(classes):
            raise EditError(f"edit {k}: classes must be distinct class ids")
        op = item["op"]
        if op == "merge" and len(classes) < 2:
            raise EditError(f"edit {k}: merging needs two classes or more")
        if op in ("rename", "split") and len(classes) != 1:
            raise EditError(f"edit {k}: {op} takes one class")
        name = check_name(str(item.get("name") or "")) if op == "rename" else None
        eps = item.get("eps")
        if op == "split" and eps is not None:
            if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0 or eps != eps:
                raise EditError(f"edit {k}: split eps must be a number > 0")
            eps = float(eps)
        edits.append(Edit(op, tuple(classes), name=name, eps=eps if op == "split" else None))
    return edits


def apply_edits(labels: np.ndarray, embeddings_nc: np.ndarray, edits: list[Edit], cfg: Any,
                names: Optional[dict[int, str]] = None, renumbered: bool = True,
                cluster: Optional[Callable[[np.ndarray, Any], np.ndarray]] = None) -> tuple[np.ndarray, dict[int, str]]:
    """(new labels, {new class id: name}) after `edits` (see the module docstring). cfg: the run's
    ClusterConfig. renumbered=False keeps the ids as the edits leave them (renames only: every id
    stays). cluster: (N×C, ClusterConfig) -> (N,) labels for a split (default: the run's own
    clustering, samseg.core.cluster; a dataset's splits pass its blocked cosine DBSCAN)."""
    from samseg.core.cluster import cluster_embeddings, renumber

    split_fn = cluster or (lambda x, c: cluster_embeddings(x, c).labels)

    out = np.asarray(labels, dtype=np.int64).copy()
    named = dict(names or {})
    known = set(int(c) for c in out[out >= 0])
    gone: dict[int, str] = {}  # a class an earlier edit took away -> what did (its error says so)
    next_id = max(known, default=-1) + 1
    for e in edits:
        missing = [c for c in e.classes if c not in known]
        if missing:
            c = missing[0]
            if c in gone:
                raise EditError(f"{e.op}: class {c} {gone[c]} by an earlier edit")
            raise EditError(f"{e.op}: class {c} is not a class of this run (classes: "
                             f"{', '.join(map(str, sorted(known))) or 'none'})")
        if e.op == "rename":  # the last name wins: the UI sends each name a person retypes as one more rename
            named[e.classes[0]] = e.name or ""
        elif e.op == "merge":
            keep = e.classes[0]
            for c in e.classes[1:]:
                out[out == c] = keep
                known.discard(c)
                named.pop(c, None)
                gone[c] = f"was merged into {keep}"
        elif e.op == "drop":
            for c in e.classes:
                out[out == c] = -1
                known.discard(c)
                named.pop(c, None)
                gone[c] = "was dropped"
        elif e.op == "split":
            c = e.classes[0]
            rows = np.flatnonzero(out == c)
            eps = e.eps if e.eps is not None else cfg.eps / 2
            try:  # an eps the run's metric does not take (cosine: past 2) is the edit's error, not the run's
                split_cfg = dataclasses.replace(cfg, algorithm="dbscan", eps=eps, eps_auto=False)
            except ValueError as exc:
                raise EditError(f"split of class {c}: eps {eps:g} is not one the {cfg.metric} metric takes ({exc})") from None
            sub = split_fn(embeddings_nc[rows], split_cfg)
            sub = np.where(sub < 0, 0, sub)  # the split's noise stays in the largest part: no mask is lost
            for part in range(1, int(sub.max(initial=0)) + 1):
                out[rows[sub == part]] = next_id
                known.add(next_id)
                next_id += 1
        else:
            raise EditError(f"unknown edit {e.op!r}")
    if not renumbered:  # ids as the edits leave them: every name stays on its id (a class absent here too)
        return out, {int(c): n for c, n in named.items() if n}
    final = renumber(out)
    new_names = {}
    for old, name in named.items():
        where = np.flatnonzero(out == old)
        if len(where) and name:
            new_names[int(final[where[0]])] = name
    return final, new_names
