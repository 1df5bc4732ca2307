"""What naming costs on this machine, next to the default preset's encoder pass.

Timing does not depend on the weights' values, so random weights give the real cost (no download):
SAM vit_h's image encoder on one 1024-px input (what every image pays), against naming with
CLIP ViT-B/16 (samseg.sam.namer): the COCO-Stuff vocabulary's text embeddings (171 names × the
prompt templates, once per machine: kept in $SAMSEG_HOME/text-embeddings) and the crops of N
classes × masks_per_class masks (per image).

    .venv/bin/python benchmarks/names_cost.py [--classes 12]
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main() -> None:
    import torch
    from segment_anything import sam_model_registry

    from samseg.core.namers import TEMPLATES, vocabulary
    from samseg.sam import namer as namer_mod

    ap = argparse.ArgumentParser()
    ap.add_argument("--classes", type=int, default=12)
    from samseg.core.config import NamesConfig

    ap.add_argument("--crops", type=int, default=NamesConfig().masks_per_class, help="crops per class (default: the config's)")
    args = ap.parse_args()
    torch.manual_seed(0)
    sam = sam_model_registry["vit_h"](checkpoint=None).eval()
    x = torch.zeros(1, 3, 1024, 1024)
    with torch.inference_mode():
        t0 = time.perf_counter()
        sam.image_encoder(x)
        encoder_s = time.perf_counter() - t0
    del sam
    model = namer_mod._build("clip-b16")
    import open_clip

    loaded = namer_mod.LoadedNamer("clip-b16", model, open_clip.get_tokenizer("ViT-B-16"), 224,
                                   open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD, "")
    names = vocabulary("coco-stuff")
    t0 = time.perf_counter()
    namer_mod.text_embeddings(loaded, names)
    text_s = time.perf_counter() - t0
    crops = torch.zeros(args.classes * args.crops, 3, 224, 224)
    with torch.inference_mode():
        t0 = time.perf_counter()
        for s in range(0, len(crops), 16):
            model.encode_image(crops[s:s + 16])
        image_s = time.perf_counter() - t0
    print(f"threads {torch.get_num_threads()}  SAM vit_h encoder, one image: {encoder_s:.1f} s")
    print(f"naming: {len(names)} names × {len(TEMPLATES)} templates, once per process: {text_s:.1f} s")
    print(f"naming: {args.classes} classes × {args.crops} crops, per image: {image_s:.2f} s "
          f"= {100 * image_s / encoder_s:.1f} % of the encoder pass")
    _ = np


if __name__ == "__main__":
    main()
