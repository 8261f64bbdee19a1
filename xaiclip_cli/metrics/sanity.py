"""Sanity checks for image–text explanations (Adebayo et al. 2018; metrics.md §9): model-parameter randomisation of
the image and text towers (cascading top-down or bottom-up, or independent), the random-prompt test, similarity
curves and a pass band from random pairs of maps of different images (Arun et al.). The maps come from a CAM method
(the caller) or from SMDL attributions re-run at every step and turned into rank maps (``AttribMaps``, §3).

Quantus and xplique only randomise classifiers, so the tower walk and the re-initialisation are written here.
SSIM is ``skimage.metrics.structural_similarity`` (scikit-image 0.26) on min-max maps, data range 1, Gaussian
weights with σ = 6/7 so that skimage's window (2·⌊3.5σ + 0.5⌋ + 1) is 7×7, ``use_sample_covariance=False``
(Wang et al.'s definition); Spearman is ``scipy.stats.spearmanr`` of the absolute maps.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from xaiclip_cli.errors import UsageError

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
    import torch

    out: list[tuple[str, Any]] = []
    for name, child in module.named_children():
        full = f"{prefix}.{name}" if prefix else name
        if not any(True for _ in child.parameters()):
            continue  # pooling, dropout, activations: nothing to re-initialise
        # A ModuleList is a list of blocks even with one entry (HF encoder.layers of a 1-layer tower); a Sequential
        # stage with one block (timm ResNet layerN) stays one unit.
        n_kids = len(list(child.children()))
        if _BLOCK_LISTS.match(name) and (n_kids > 1 or (n_kids == 1 and isinstance(child, torch.nn.ModuleList))):
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


# ---------------------------------------------------------------------------------------------- attrib rank maps
ATTRIB = "attrib"  # the --method value that checks SMDL attributions instead of a CAM method


@dataclass(frozen=True)
class AttribSpec:
    """The SMDL attribution re-run at every step: division (grid cells or SLICO), search, fill (cheap defaults)."""

    division: str = "grid"
    grid: int = 5
    region_size: str = "auto"
    search: str = "lazy"
    fill: str = "black"

    def division_kwargs(self, size: int) -> dict[str, Any]:
        """The keywords of ``smdl.divide`` for an S-px image."""
        from xaiclip_cli.explain.smdl import auto_region_size

        if self.division == "grid":
            return {"grid": int(self.grid)}
        if self.division == "slico":
            return {"region_size": auto_region_size(size) if self.region_size == "auto" else int(self.region_size)}
        raise ValueError(f"sanity attrib division must be grid or slico, got {self.division!r}")

    def config(self) -> Any:
        """The SMDL search config (default λ; every region ranked)."""
        from xaiclip_cli.explain.smdl import SmdlConfig

        return SmdlConfig(search=self.search)

    def record(self, size: int) -> dict[str, Any]:
        """What eval.json records about the attribution."""
        cfg = self.config()
        return {"division": self.division, **self.division_kwargs(size), "search": self.search, "fill": self.fill,
                "lambdas": list(cfg.lambdas), "k": "all regions",
                "map": "rank map: region at position i of k gets k - i (metrics.md §3), at the model input size"}


class AttribMaps:
    """SMDL attributions of fixed images as rank maps, recomputed on the backend's current weights at every call.

    The division and the normalised image/fill depend on the pixels only, so they are computed once (every step ranks
    the same regions); the text prototypes and the scorer are rebuilt per call because the text tower may have been
    re-initialised. The score family and logit scale are the backend's (as `attrib run` without --score)."""

    def __init__(self, backend: Any, images: Sequence[np.ndarray], spec: AttribSpec) -> None:
        import torch

        from xaiclip_cli.explain.smdl import divide, elements, prepare
        from xaiclip_cli.explain.smdl.pipeline import bgr_at_size

        self.backend, self.spec = backend, spec
        self.size = int(backend.image_size)
        self.family = str(getattr(backend, "score_family", "softmax"))
        self.labels: list[np.ndarray] = []
        self.inputs: list[tuple[Any, Any, Any, np.ndarray]] = []
        div = spec.division_kwargs(self.size)
        # Checked here with the sanity flag names (divide() would name attrib run's --grid/--region-size).
        if spec.division == "grid" and not 2 <= int(spec.grid) <= self.size:
            raise UsageError(f"--attrib-grid must be between 2 and the model input size {self.size}, got {spec.grid}")
        if spec.division == "slico" and not 1 <= div["region_size"] <= self.size // 2:
            raise UsageError(f"--attrib-region-size {div['region_size']} does not fit a {self.size}px input: SMDL "
                             f"needs at least 2 regions (use at most {self.size // 2})")
        for im in images:
            bgr = bgr_at_size(im, self.size)
            labels = divide(bgr, spec.division, **div)
            _ids, masks = elements(labels)
            x, b = prepare(backend, bgr, fill=spec.fill)
            self.labels.append(labels)
            self.inputs.append((x, b, torch.from_numpy(masks), bgr.astype(np.int32).sum(2) != 0))
        self.forwards = 0

    @property
    def logit_scale(self) -> float:
        """The multiplier of the cosines in the SMDL scores."""
        return float(self.backend.logit_scale)

    def scorer(self, prompts: Sequence[str]) -> Any:
        """A ClipScorer of the image tower against one prototype per prompt (current text tower)."""
        from xaiclip_cli.explain.smdl import ClipScorer, text_prototypes

        feats = text_prototypes(self.backend, [[p] for p in prompts])
        bias = float(self.backend.logit_bias) if self.family == "sigmoid" else 0.0
        return ClipScorer(self.backend, feats.to(self.backend.device), self.logit_scale, family=self.family,  # type: ignore[arg-type]
                          logit_bias=bias)

    def best_targets(self, prompts: Sequence[str]) -> list[int]:
        """The highest-scoring prompt of each full image."""
        import torch

        sc = self.scorer(prompts)
        x = torch.stack([inp[0] for inp in self.inputs])
        return [int(t) for t in sc.probs(x).argmax(1).tolist()]

    def maps(self, prompts: Sequence[str], targets: Sequence[int], which: Sequence[int] | None = None
             ) -> list[np.ndarray]:
        """Rank maps [S,S] of images ``which`` (default all) for their target prompt index."""
        from xaiclip_cli.explain.smdl import attribute
        from xaiclip_cli.metrics.maps import rank_map

        idx = list(range(len(self.inputs))) if which is None else list(which)
        sc = self.scorer(prompts)
        out = []
        for i, t in zip(idx, targets, strict=True):
            x, b, masks, nonblack = self.inputs[i]
            res = attribute(sc, x, b, masks, int(t), self.spec.config(), nonblack)
            out.append(rank_map(self.labels[i], res.order))  # order holds element positions (ids ascending)
        self.forwards += sc.forwards
        return out
