"""The class namers' registry and vocabularies: which CLIP-family model names classes, from which words.

A row is pure data (no torch, no open_clip); samseg.sam.namer builds and loads what it names.
Vocabularies ship as data (samseg/core/vocab/*.txt, one name a line): COCO-Stuff's 171 categories
(80 things, 91 stuff, with COCO-Stuff's "-other" and "-stuff" suffixes written as plain words:
"building-other" is "building") and ADE20K's 150 (SceneParse150's first names). Prompt templates
are data too: each name is embedded as the mean of its templates' text embeddings.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

VOCAB_DIR = Path(__file__).with_name("vocab")
BUILTIN_VOCABULARIES = ("coco-stuff", "ade20k")
NO_NAMES = "none"
MAX_VOCABULARY = 5000  # names: every one is a text embedding held while naming
MAX_NAME = 200
TEMPLATES: tuple[str, ...] = ("a photo of a {}.", "a photo of the {}.", "a cropped photo of a {}.",
                              "a close-up photo of the {}.", "there is a {} in the scene.")


@dataclass(frozen=True)
class NamerEntry:
    """One namer. open_clip_name: open_clip's model config; url, filename: its weights
    (.safetensors, verified like every weights file: sha256 pinned, or recorded at the first
    download when None); licence: named at download; quick_gelu: OpenAI's CLIP activation;
    seeded: random weights built from a seed (tests and offline smoke runs: its names are
    meaningless and never presented as a result); tiny: the seeded model's dimensions."""

    open_clip_name: Optional[str]
    url: Optional[str]
    filename: str
    licence: str
    sha256: Optional[str] = None
    size: Optional[int] = None
    quick_gelu: bool = False
    seeded: bool = False

    @property
    def downloadable(self) -> bool:
        return not self.seeded and self.url is not None


NAMERS: dict[str, NamerEntry] = {
    # OpenAI's CLIP ViT-B/16 (open_clip "ViT-B-16", pretrained "openai"), as the timm Hub repo serves it;
    # its BPE tokenizer ships inside open_clip, so naming works offline once the weights are here.
    "clip-b16": NamerEntry("ViT-B-16", "https://huggingface.co/timm/vit_base_patch16_clip_224.openai/resolve/main/"
                           "open_clip_model.safetensors", "vit_base_patch16_clip_224.openai.safetensors",
                           "MIT (OpenAI CLIP)", quick_gelu=True),
    "tiny-random": NamerEntry(None, None, "", "none (seeded test weights)", seeded=True),
}
NAMER_NAMES: tuple[str, ...] = tuple(NAMERS)


def namer_entry(name: str) -> NamerEntry:
    if name not in NAMERS:
        raise ValueError(f"unknown namer {name!r}; choose one of: {', '.join(NAMERS)}")
    return NAMERS[name]


def vocabulary(spec: str) -> list[str]:
    """The names of `spec`: none → []; coco-stuff / ade20k → the shipped list; a file (one name a
    line, # comments) → its names; else "a,b,c". Once each, in order; ValueError naming what is wrong."""
    spec = spec.strip()
    if spec == NO_NAMES:
        return []
    if spec in BUILTIN_VOCABULARIES:
        text, what = (VOCAB_DIR / f"{spec}.txt").read_text(encoding="utf-8"), spec
        names = text.splitlines()
    elif Path(spec).is_file():
        try:
            names = Path(spec).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"{spec}: not a readable vocabulary file ({exc})") from None
        what = spec
    elif "," not in spec:
        raise ValueError(f"vocabulary {spec!r}: not {', '.join(BUILTIN_VOCABULARIES)}, a file of names, or a list "
                         "\"a,b,c\" (one name alone: \"road,\")")
    else:
        names, what = spec.split(","), "the names given"
    names = [n.split("#", 1)[0].strip() for n in names]
    names = list(dict.fromkeys(n for n in names if n))
    if not names:
        raise ValueError(f"{what}: no names (a vocabulary is coco-stuff, ade20k, a file of names, or \"a,b,c\")")
    if len(names) > MAX_VOCABULARY:
        raise ValueError(f"{what}: {len(names):,} names, over samseg's limit of {MAX_VOCABULARY:,}")
    bad = next((n for n in names if len(n) > MAX_NAME or not n.isprintable()), None)
    if bad is not None:
        raise ValueError(f"{what}: the name {bad[:40]!r} is not 1 to {MAX_NAME} printable characters")
    return names


# A name must stand out from the vocabulary: its cosine this many standard deviations above the
# vocabulary's mean cosine. The best of 171 names unrelated to the image reaches about 3, rarely 4 (the maximum
# of 171 normal draws), so noise stays unnamed; CLIP's softmax alone is peaked even for noise.
MIN_Z = 4.5


def pick_names(image_kd, text_vd, names: list[str], min_prob: float, logit_scale: float = 100.0) -> list[dict]:
    """Per class (row of image_kd, L2-normalised K×D class embeddings): the vocabulary's best name
    by CLIP's softmax over `names` (text_vd: V×D, normalised), its probability, how far its cosine
    stands above the vocabulary's (z), and the runner-up. Unnamed (name None) unless the
    probability reaches `min_prob` and z reaches MIN_Z: never a confident name from noise."""
    import numpy as np

    image_kd, text_vd = np.asarray(image_kd, np.float64), np.asarray(text_vd, np.float64)
    cos = image_kd @ text_vd.T
    z = (cos - cos.mean(axis=1, keepdims=True)) / np.maximum(cos.std(axis=1, keepdims=True), 1e-12)
    # n values' largest z is at most sqrt(n - 1): a short list ("road,car,sky") could never reach MIN_Z
    z_needed = min(MIN_Z, 0.8 * float(np.sqrt(max(len(names) - 1, 1))))
    logits = logit_scale * cos
    logits -= logits.max(axis=1, keepdims=True)
    prob = np.exp(logits)
    prob /= prob.sum(axis=1, keepdims=True)
    rows = []
    for p, zk in zip(prob, z):
        order = np.argsort(-p, kind="stable")
        best, second = int(order[0]), int(order[1]) if len(order) > 1 else None
        named = p[best] >= min_prob and (len(names) < 3 or zk[best] >= z_needed)
        rows.append({"name": names[best] if named else None, "best": names[best],
                     "score": round(float(p[best]), 4), "z": round(float(zk[best]), 2),
                     "runner_up": names[second] if second is not None else None,
                     "runner_up_score": round(float(p[second]), 4) if second is not None else None})
    return rows
