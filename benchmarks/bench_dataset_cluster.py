"""Time and peak memory of dataset-level DBSCAN at 100k × 256 (issue 6).

Synthetic, seeded data shaped like a batch of SAM mask embeddings: `--classes` kinds of
object with Zipf-like sizes (largest ≈ 5 % of the batch), members within ~0.04 cosine
distance of each other, plus `--noise` uniformly scattered masks. Clustered with the
notebook's DBSCAN (eps=0.06 cosine, min_samples=8) by each method:

  chunked           samseg.core.dataset.cluster_batch (exact chunked cosine DBSCAN, float32 BLAS)
  sklearn-brute     sklearn DBSCAN(metric="cosine", algorithm="brute") on the raw vectors
  sklearn-balltree  sklearn DBSCAN(euclidean, eps=sqrt(2·eps), algorithm="ball_tree") on unit vectors
  assign            samseg.core.dataset.assign_to_classes of all rows against the chunked classes

Every method runs in a fresh subprocess so its peak RSS (ru_maxrss) is its own; the
reported "extra" memory is peak RSS minus RSS just before clustering (data excluded).

Measured 2026-11-25 on the dev machine (2 AMD EPYC cores, OpenBLAS, shared with other jobs:
load average ~9, so times are pessimistic), 100 classes + 10 % scattered, eps=0.06, min_samples=8:

  n=100k  chunked           394 s   +582 MB over the data (peak RSS 895 MB)   ARI 1.0
  n=100k  sklearn-brute     945 s   +2613 MB (peak RSS 2926 MB)               ARI 1.0
  n=100k  assign (K=100)    1.6 s   (labels 100k masks by prototype)
  n=10k   chunked           2.7 s   +122 MB
  n=10k   sklearn-brute     3.7 s   +1080 MB
  n=10k   sklearn-balltree  163 s   +75 MB   (a 256-d tree prunes almost nothing)

    python benchmarks/bench_dataset_cluster.py                     # 100k, chunked + assign + sklearn-brute
    python benchmarks/bench_dataset_cluster.py --n 20000 --methods chunked,sklearn-brute,sklearn-balltree
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np


def make_data(n: int, dim: int, n_classes: int, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(N×dim float32 embeddings, (N,) truth with -1 for scattered masks)."""
    rng = np.random.default_rng(seed)
    n_noise = int(round(n * noise))
    weights = 1.0 / np.arange(1, n_classes + 1) ** 0.6
    sizes = np.maximum(8, np.floor(weights / weights.sum() * (n - n_noise))).astype(int)
    sizes[0] += n - n_noise - sizes.sum()
    centers = rng.normal(size=(n_classes, dim))
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    # per-dim sigma s gives member–member cosine distance ≈ 1 − 1/(1 + dim·s²); 0.0128 → ~0.04
    sigma = 0.0128 * np.sqrt(256 / dim)
    truth = np.repeat(np.arange(n_classes), sizes)
    x = centers[truth] + sigma * rng.normal(size=(len(truth), dim))
    x = np.concatenate([x, rng.normal(size=(n_noise, dim))]).astype(np.float32)
    truth = np.concatenate([truth, np.full(n_noise, -1)])
    x *= rng.uniform(0.5, 2.0, size=(len(x), 1)).astype(np.float32)  # pooled features are not unit length
    return x, truth


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def worker(method: str, args: argparse.Namespace) -> dict:
    from sklearn.metrics import adjusted_rand_score

    from samseg.core.config import ClusterConfig
    from samseg.core.dataset import ClassTable, _unit, assign_to_classes, classify_batch, eps_euclidean, prototypes_and_radii, renumber

    cfg = ClusterConfig(algorithm="dbscan", eps=args.eps, min_samples=args.min_samples, metric="cosine")
    x, truth = make_data(args.n, args.dim, args.classes, args.noise, args.seed)
    table = None
    if method == "assign":  # classes from the truth: assignment cost depends only on N and K
        protos, radii = prototypes_and_radii(_unit(x), truth)
        table = ClassTable(protos, radii, np.bincount(truth[truth >= 0]), [{}] * len(radii), ["bench"])
    before = rss_mb()
    t0 = time.perf_counter()
    if method == "chunked":
        labels = classify_batch([x], ["bench"], cfg)[0][0].labels
    elif method == "assign":
        labels = assign_to_classes(x, table).labels
    elif method == "sklearn-brute":
        from sklearn.cluster import DBSCAN

        labels = renumber(DBSCAN(eps=args.eps, min_samples=args.min_samples, metric="cosine", algorithm="brute").fit_predict(x))
    elif method == "sklearn-balltree":
        from sklearn.cluster import DBSCAN

        unit = x / np.linalg.norm(x, axis=1, keepdims=True)
        db = DBSCAN(eps=eps_euclidean(args.eps), min_samples=args.min_samples, algorithm="ball_tree")
        labels = renumber(db.fit_predict(unit))
    else:
        raise SystemExit(f"unknown method {method!r}")
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "method": method, "n": args.n, "dim": args.dim, "seconds": round(seconds, 2),
        "peak_rss_mb": round(peak), "extra_mb": round(peak - before),
        "n_classes": int(labels.max()) + 1, "n_noise": int((labels < 0).sum()),
        "ari_vs_truth": round(float(adjusted_rand_score(truth, labels)), 4),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--classes", type=int, default=100)
    p.add_argument("--noise", type=float, default=0.1)
    p.add_argument("--eps", type=float, default=0.06)
    p.add_argument("--min-samples", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--methods", default="chunked,assign,sklearn-brute")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per method before it is reported as too slow")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args)))
        return
    rows = []
    for method in args.methods.split(","):
        cmd = [sys.executable, __file__, "--worker", method] + [
            f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if k not in ("worker", "methods", "timeout")
        ]
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, check=True).stdout
            row = json.loads(out.strip().splitlines()[-1])
        except subprocess.TimeoutExpired:
            row = {"method": method, "n": args.n, "dim": args.dim, "seconds": f">{args.timeout:.0f} (stopped)"}
        except subprocess.CalledProcessError as exc:
            row = {"method": method, "n": args.n, "error": (exc.stderr or "").strip().splitlines()[-1:]}
        rows.append(row)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
