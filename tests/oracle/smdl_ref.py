"""Reference-style SMDL oracle (smdl.md §14): a literal restatement of §5–6 for parity tests and benchmarks.

Written from the spec's definitions, not from the reference code (which has no licence): region images are uint8
arrays summed in NumPy, the complement is I − sum, every candidate goes through PIL → Resize → ToTensor → Normalize on
its own, one batch per side, ``torch.argmax``/``torch.topk`` for the picks, ε = 1e-7. ``ref_recorded_auc`` restates
the reference evaluator on the exported region images (metrics.md §1).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision import transforms

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def clip_transform(size: int = 224) -> Callable:
    """The reference CLIP preprocessing: Resize (no-op at model size) → ToTensor → Normalize."""
    return transforms.Compose([transforms.Resize((size, size)), transforms.ToTensor(),
                               transforms.Normalize(CLIP_MEAN, CLIP_STD)])


class RefSMDL:
    """Greedy (exact) and LIMA bidirectional search on uint8 region images, as the reference scripts compose them.

    image_features(pixels [B,3,S,S]) → unit features; semantic [C,d] unit prototypes; s the logit scale.
    ``bgr_compat``: region images are BGR arrays fed to PIL as they are (reference CLIP scripts); otherwise they are
    converted to RGB before PIL.
    """

    def __init__(self, image_features: Callable, semantic: torch.Tensor, s: float, lambdas=(0.0, 0.05, 1.0, 1.0),
                 transform: Callable | None = None, bgr_compat: bool = False, pending: int = 8) -> None:
        self.image_features = image_features
        self.semantic = semantic.float()
        self.s = float(s)
        self.l1, self.l2, self.l3, self.l4 = (float(v) for v in lambdas)
        self.transform = transform or clip_transform()
        self.bgr_compat = bgr_compat
        self.pending = int(pending)
        self.forwards = 0
        self.model_seconds = 0.0

    # --- per-candidate preprocessing (the reference's cost) ------------------------------------------------------
    def preprocess(self, img_bgr: np.ndarray) -> torch.Tensor:
        arr = img_bgr if self.bgr_compat else img_bgr[:, :, ::-1]
        return self.transform(Image.fromarray(np.ascontiguousarray(arr)))

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        t0 = time.perf_counter()
        with torch.no_grad():
            f = self.image_features(batch)
        self.model_seconds += time.perf_counter() - t0
        self.forwards += batch.shape[0]
        return f

    def probs(self, batch: torch.Tensor) -> torch.Tensor:
        f = self.forward(batch)
        return torch.softmax((f @ self.semantic.T) * self.s, dim=-1)

    def consistency(self, batch: torch.Tensor, target: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(p_target, confidence = 1 − H/log C, p) of a batch."""
        p = self.probs(batch)
        entropy = -torch.sum(p * torch.log(p + 1e-7), dim=1)
        return p[:, target], 1 - entropy / math.log(p.shape[1]), p

    def effectiveness(self, subsets: list[list[int]]) -> torch.Tensor:
        out = []
        for s in subsets:
            if len(s) == 1:
                out.append(torch.zeros((), dtype=self.dist.dtype))
                continue
            idx = torch.tensor(s, dtype=torch.long)
            out.append(self.dist[idx][:, idx].min(1)[0].sum())
        return torch.stack(out)

    def _setup(self, regions: list[np.ndarray]) -> None:
        self.V = np.array(regions)
        self.org = self.V.sum(0).astype(np.uint8)
        feats = self.forward(torch.stack([self.preprocess(r) for r in regions]))
        cos = torch.clamp(feats @ feats.T, -1, 1)
        self.dist = torch.acos(cos) / math.pi
        self.dist.fill_diagonal_(1)

    def _merge(self, subsets: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        ins = torch.stack([self.preprocess(self.V[s].sum(0).astype(np.uint8)) for s in subsets])
        rev = torch.stack([self.preprocess((self.org - self.V[s].sum(0)).astype(np.uint8)) for s in subsets])
        return ins, rev

    def _evaluate(self, subsets: list[list[int]], target: int, back: bool = False):
        ins, rev = self._merge(subsets)
        eff = self.effectiveness(subsets)
        if back:  # removed set D′: kept image = complement
            cons, conf, _ = self.consistency(rev, target)
            colla = 1 - self.consistency(ins, target)[0]
        else:
            cons, conf, _ = self.consistency(ins, target)
            colla = 1 - self.consistency(rev, target)[0]
        score = self.l1 * conf + self.l2 * eff + self.l3 * cons + self.l4 * colla
        return conf, eff, cons, colla, score

    def exact(self, regions: list[np.ndarray], target: int, k: int | None = None) -> dict:
        """Plain greedy: returns order and the five curves (lists of floats), p_full, forwards."""
        self.forwards = 0
        self.model_seconds = 0.0
        self._setup(regions)
        n = len(regions)
        p_full = float(self.consistency(self.preprocess(self.org)[None], target)[0][0])
        main: list[int] = []
        cands = list(range(n))
        rec = {t: [] for t in ("confidence", "effectiveness", "consistency", "collaboration", "objective")}
        for _ in range(k or n):
            subsets = [main + [c] for c in cands]
            terms = self._evaluate(subsets, target)
            j = torch.argmax(terms[4]).item()
            for key, v in zip(rec, terms, strict=True):
                rec[key].append(float(v[j]))
            main.append(cands.pop(j))
        return {"order": main, **rec, "p_full": p_full, "forwards": self.forwards}

    def bidirectional(self, regions: list[np.ndarray], target: int) -> dict:
        """LIMA EfficientV2: front greedy + back list of the worst among the P lowest screened; stitched curves."""
        self.forwards = 0
        self.model_seconds = 0.0
        self._setup(regions)
        n = len(regions)
        P = self.pending
        p_full_t, conf_full, _ = self.consistency(self.preprocess(self.org)[None], target)  # full image, once
        main: list[int] = []
        dec: list[int] = []
        cands = list(range(n))
        keys = ("confidence", "effectiveness", "consistency", "collaboration", "objective")
        inc_rec = {t: [] for t in keys}
        dec_rec = {t: [] for t in keys}
        while cands:
            if len(cands) == 1:
                main.append(cands.pop())
                break
            subsets = [main + [c] for c in cands]
            conf, eff, cons, colla, score = self._evaluate(subsets, target)
            j = torch.argmax(score).item()
            for key, v in zip(keys, (conf, eff, cons, colla, score), strict=True):
                inc_rec[key].append(float(v[j]))
            b = None
            if len(cands) > P:
                eff_dec = self.effectiveness([dec + [c] for c in cands])
                screen = self.l1 * conf + self.l2 * eff_dec + self.l3 * cons + self.l4 * colla
                low = [i for i in torch.topk(screen, P, largest=False)[1].tolist() if i != j]
                if low:
                    terms = self._evaluate([dec + [cands[i]] for i in low], target, back=True)
                    m = torch.argmin(terms[4]).item()
                    for key, v in zip(keys, terms, strict=True):
                        dec_rec[key].append(float(v[m]))
                    b = cands[low[m]]
            a = cands[j]
            main.append(a)
            cands.remove(a)
            if b is not None:
                dec.append(b)
                cands.remove(b)
        p_black_t = self.consistency(self.preprocess(np.zeros_like(self.org))[None], target)[0]
        order = main + dec[::-1]
        rec = {t: list(inc_rec[t]) for t in keys}
        nf = len(inc_rec["objective"])
        for jj in range(nf, n):
            t_back = n - 1 - jj
            eff = float(self.effectiveness([order[:jj + 1]])[0])
            if t_back == 0:
                conf, cons, colla = float(conf_full[0]), float(p_full_t[0]), float(1 - p_black_t[0])
            else:
                i = t_back - 1
                conf, cons, colla = (dec_rec["confidence"][i], dec_rec["consistency"][i],
                                     dec_rec["collaboration"][i])
            obj = float(self.l1 * torch.tensor([conf]) + self.l2 * torch.tensor([eff]) + self.l3 * torch.tensor([cons])
                        + self.l4 * torch.tensor([colla]))
            for key, v in zip(keys, (conf, eff, cons, colla, obj), strict=True):
                rec[key].append(v)
        return {"order": order, **rec, "front_len": len(main), "forwards": self.forwards,
                "increase": inc_rec, "decrease": dec_rec}


def ref_regions(image_bgr: np.ndarray, labels: np.ndarray, ids: np.ndarray) -> list[np.ndarray]:
    """uint8 region images (image × mask of each id), as the reference's element set V."""
    return [(image_bgr * (labels == i)[..., None]).astype(np.uint8) for i in ids]


def ref_recorded_auc(npy_path: str | Path, json_path: str | Path) -> tuple[float, float]:
    """Insertion/deletion AUC from an exported npy (uint8 [k,H,W,3]) + json, restating the reference evaluator."""
    from sklearn.metrics import auc

    regions = np.load(npy_path)
    doc = json.loads(Path(json_path).read_text())
    c = doc["consistency_score"]
    q = doc["collaboration_score"]
    k, h, w = regions.shape[:3]
    full = regions.astype(np.int64).sum(0)
    ins_x, del_x = [0.0], [1 - ((full.sum(-1) != 0).sum()) / (h * w)]
    ins_y, del_y = [1 - q[-1]], [c[-1]]
    cum = np.zeros_like(full)
    for j in range(k):
        cum = cum + regions[j]
        ins_x.append((cum.sum(-1) != 0).sum() / (h * w))
        del_x.append(1 - ((full - cum).sum(-1) != 0).sum() / (h * w))
        ins_y.append(c[j])
        del_y.append(1 - q[j])
    return float(auc(ins_x, ins_y)), float(auc(del_x, del_y))
