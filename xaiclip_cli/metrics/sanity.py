"""Sanity checks for image–text explanations (Adebayo et al. 2018; metrics.md §9): model-parameter randomisation of
the image and text towers (cascading top-down or bottom-up, or independent), the random-prompt test, similarity
curves and a pass band from random pairs of maps of different images (Arun et al.).

Quantus and xplique only randomise classifiers, so the tower walk and the re-initialisation are written here.
SSIM is ``skimage.metrics.structural_similarity`` (scikit-image 0.26) on min-max maps, data range 1, Gaussian
weights with σ = 6/7 so that skimage's window (2·⌊3.5σ + 0.5⌋ + 1) is 7×7, ``use_sample_covariance=False``
(Wang et al.'s definition); Spearman is ``scipy.stats.spearmanr`` of the absolute maps.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

SSIM_SIGMA = 6.0 / 7.0
SSIM_WINDOW = 7
_BLOCK_LISTS = re.compile(r"^(blocks|stages|layers|layer|resblocks|layer\d+)$")


def _minmax(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    lo, hi = float(a.min()), float(a.max())
    return (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM of two min-max maps (7×7 Gaussian window, data range 1); identical maps → 1."""
    from skimage.metrics import structural_similarity

    x, y = _minmax(a), _minmax(b)
    if np.array_equal(x, y):
        return 1.0
    if min(x.shape) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs maps of at least {SSIM_WINDOW}×{SSIM_WINDOW}, got {x.shape}")
    return float(structural_similarity(x, y, data_range=1.0, gaussian_weights=True, sigma=SSIM_SIGMA,
                                       use_sample_covariance=False))


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of |a| and |b|; identical maps → 1, a constant map against another → 0."""
    from scipy.stats import spearmanr

    x, y = np.abs(np.asarray(a, np.float64)).ravel(), np.abs(np.asarray(b, np.float64)).ravel()
    if np.array_equal(x, y):
        return 1.0
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return 0.0
    r = float(spearmanr(x, y).statistic)
    return r if np.isfinite(r) else 0.0


def similarity(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """{spearman, ssim} of a map to the original."""
    return {"spearman": spearman(a, b), "ssim": ssim(a, b)}


# ---------------------------------------------------------------------------------------------- tower units
def _units(module: Any, prefix: str) -> list[tuple[str, Any]]:
    """Children in forward order; block lists (blocks/stages/layers/layerN, encoder.layer) expanded into blocks."""
    out: list[tuple[str, Any]] = []
    for name, child in module.named_children():
        full = f"{prefix}.{name}" if prefix else name
        if not any(True for _ in child.parameters()):
            continue  # pooling, dropout, activations: nothing to re-initialise
        if _BLOCK_LISTS.match(name) and len(list(child.children())) > 1:
            out.extend((f"{full}.{n}", c) for n, c in child.named_children() if any(True for _ in c.parameters()))
        elif name in ("encoder", "transformer") and len(list(child.children())) >= 1:
            out.extend(_units(child, full))
        else:
            out.append((full, child))
    return out


def tower_units(backend: Any, tower: str = "image") -> list[tuple[str, Any]]:
    """The re-initialisable units of a tower in forward order (input side first), projection last."""
    model = getattr(backend, "model", None)
    if tower == "image":
        units = _units(backend.vision_module(), "visual")
        proj_names = ("image_proj", "visual_projection", "image_projection", "proj_image")
    else:
        text = None
        for attr in ("text", "text_model", "text_encoder", "transformer"):
            if model is not None and hasattr(model, attr):
                text = getattr(model, attr)
                break
        if text is None:
            raise ValueError(f"backend {getattr(backend, 'name', '?')} exposes no text tower to randomise")
        units = _units(text, "text")
        proj_names = ("text_proj", "text_projection", "proj_text")
    if model is not None:
        for n in proj_names:
            m = getattr(model, n, None)
            if m is not None and any(True for _ in m.parameters()):
                units.append((n, m))
    return units


def randomise(module: Any, seed: int) -> None:
    """Re-initialise every submodule with its own ``reset_parameters`` (seeded); parameters of modules without one
    (e.g. position embeddings, class tokens) are re-drawn N(0, 0.02), as timm/HF initialise them."""
    import torch

    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        covered: set[int] = set()
        for m in module.modules():
            if hasattr(m, "reset_parameters") and callable(m.reset_parameters):
                m.reset_parameters()
                covered.update(id(p) for p in m.parameters(recurse=False))
        with torch.no_grad():
            for p in module.parameters():
                if id(p) not in covered:
                    p.normal_(0.0, 0.02)
    finally:
        torch.random.set_rng_state(gen_state)


class Snapshot:
    """The trained weights (and buffers) of a module, restored after each randomisation check."""

    def __init__(self, module: Any) -> None:
        self.module = module
        self.state = copy.deepcopy(module.state_dict())

    def restore(self) -> None:
        """Put the trained weights back."""
        self.module.load_state_dict(self.state)


MapFn = Callable[[], list[np.ndarray]]


def randomisation_curve(map_fn: MapFn, units: Sequence[tuple[str, Any]], *, order: str = "top-down",
                        independent: bool = False, seed: int = 0) -> tuple[list[str], list[list[np.ndarray]]]:
    """Maps after each step: step 0 the trained model, step i re-initialises unit i (cascading: units 1..i;
    independent: unit i only). ``units`` are in forward order; top-down starts at the output side.
    The caller restores the weights (Snapshot) afterwards."""
    seq = list(units)[::-1] if order == "top-down" else list(units)
    names = ["trained"]
    maps = [map_fn()]
    snaps = [Snapshot(m) for _, m in seq] if independent else []
    for i, (name, mod) in enumerate(seq):
        randomise(mod, seed + i)
        names.append(name)
        maps.append(map_fn())
        if independent:
            snaps[i].restore()
    return names, maps


def curve_similarities(names: Sequence[str], maps: Sequence[Sequence[np.ndarray]]) -> dict[str, np.ndarray]:
    """{sim: [n_images, steps+1]} similarity of each step's map to the trained one (step 0 = 1)."""
    n = len(maps[0])
    out = {k: np.zeros((n, len(maps))) for k in ("spearman", "ssim")}
    for s, step in enumerate(maps):
        for i in range(n):
            v = similarity(step[i], maps[0][i])
            for k in out:
                out[k][i, s] = v[k]
    return out


def random_pair_baseline(maps: Sequence[np.ndarray], n_pairs: int = 50, seed: int = 0) -> dict[str, float]:
    """Mean similarity of ``n_pairs`` seeded random pairs of maps of different images (the pass band)."""
    n = len(maps)
    if n < 2:
        return {"spearman": float("nan"), "ssim": float("nan"), "pairs": 0}
    rng = np.random.Generator(np.random.PCG64(seed))
    vals: dict[str, list[float]] = {"spearman": [], "ssim": []}
    for _ in range(n_pairs):
        i, j = rng.choice(n, size=2, replace=False)
        v = similarity(maps[int(i)], maps[int(j)])
        for k in vals:
            vals[k].append(v[k])
    return {"spearman": float(np.mean(vals["spearman"])), "ssim": float(np.mean(vals["ssim"])), "pairs": n_pairs}


def verdict(final: np.ndarray, band: float, b: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Pass when the mean similarity after full randomisation is at or below the random-pair band."""
    from xaiclip_cli.metrics.bootstrap import bootstrap_ci

    ci = bootstrap_ci(np.asarray(final, dtype=np.float64), b, seed)
    ok = bool(np.isfinite(band) and ci["mean"] is not None and ci["mean"] <= band)
    return {"final_mean": ci["mean"], "ci_low": ci["ci_low"], "ci_high": ci["ci_high"], "band": band,
            "margin": None if not np.isfinite(band) else float(band - ci["mean"]), "pass": ok}


def random_token_prompt(backend: Any, prompt: str, rng: np.random.Generator) -> str:
    """A prompt of random tokens with the same token count as ``prompt`` (decoded from random vocabulary ids when the
    backend's tokenizer can, else random lowercase words of the prompt's word lengths)."""
    tok = getattr(backend, "tokenizer", None)
    try:
        ids, mask = backend.tokenize([prompt])
        n = int(mask[0].sum()) - 2  # without the start/end tokens
        vocab = int(getattr(tok, "vocab_size", 0) or len(tok.get_vocab()))
        special = set(getattr(tok, "all_special_ids", []) or [])
        pick = [int(i) for i in rng.integers(1000 if vocab > 2000 else 1, vocab, size=max(n, 1) * 2)
                if int(i) not in special][: max(n, 1)]
        text = tok.decode(pick, skip_special_tokens=True).strip()
        if text:
            return text
    except Exception:  # noqa: BLE001 - any tokenizer without these methods: fall back to random words
        pass
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    return " ".join("".join(rng.choice(letters, size=len(w))) for w in prompt.split())
