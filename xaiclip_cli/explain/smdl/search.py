"""SMDL subset search (smdl.md §5–6): exact greedy, LIMA bidirectional, and a lazy-greedy fast mode.

Candidates are composited as boolean masks on the normalised image (``torch.where(M, x̃, b̃)``, §7), which is
bit-identical to the reference's uint8 compositing + per-candidate preprocessing when the image is at model size, and
removes all per-candidate CPU work. The greedy loops are hand-written: no library implements this objective's
two-sided (insertion + complement) evaluation, LIMA's back list or the recorded curves.

Objective (§5) of a kept set S′ with complement I − S′:
  F = λ1·confidence + λ2·effectiveness + λ3·consistency + λ4·collaboration,
  confidence = 1 − H(p(S′))/log C (softmax) or 1 − H_b(p_t(S′))/log 2 (sigmoid family, see scorer.py),
  effectiveness = Σ_{i∈S′} min_{j∈S′, j≠i} d_ij with d_ij = arccos(clamp(cos(f_i, f_j)))/π (0 when |S′| = 1),
  consistency = p_t(S′), collaboration = 1 − p_t(I − S′).

Lazy mode (design, §6 "lazy"): every candidate keeps the probability part of its last fresh gain
δ_α = F(S_α ∪ α) − F(S_α); at each step its bound is that stale probability gain plus the *exact* effectiveness gain
for the current S (no forwards). Candidates are sorted by bound (descending, ties smallest id), the top
``lazy_batch`` are re-evaluated, and the best fresh gain is accepted once it is ≥ every remaining stale bound, else
the next batch is evaluated. All candidates are re-evaluated every ``lazy_refresh`` steps and, in addition, at the
step after a *stale* one: a step whose top stale bound exceeded the picked fresh gain by more than ``lazy_stale``
(the cached gains had gone out of date; F is far from submodular on small sets, where adding a region can raise
another's gain). The first step takes the insertion side of every candidate (the region alone on the fill) from the
element-feature forwards, which are the same images, so it forwards the complement side only. F is not provably
submodular, so this is a heuristic judged by measured AUC against exact (benchmarks/attrib_speed.py); the values
recorded for each pick are always fresh.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from xaiclip_cli.errors import UsageError

EPS = 1e-7
SEARCHES = ("exact", "bidirectional", "lazy")
TERMS = ("confidence", "effectiveness", "consistency", "collaboration", "objective")


@dataclass
class SmdlConfig:
    """Search settings: λ, search mode (+ lazy for bidirectional), k, LIMA's pending P, lazy batch/refresh, caps."""

    lambdas: tuple[float, float, float, float] = (0.0, 0.05, 1.0, 1.0)
    search: str = "exact"
    lazy: bool = False
    k: int | None = None
    pending: int = 8
    lazy_batch: int = 4  # 4, not 8: measured ≤ 1/3 of exact forwards at n=49 (benchmarks/attrib_speed.py)
    lazy_refresh: int = 10
    lazy_stale: float = 0.03  # objective units (F ∈ [0, 2] at the default λ); chosen in benchmarks/attrib_speed.py
    lazy_budget: float = 1 / 3  # share of exact's forwards the optional lazy work may use (0 = no cap)
    max_batch: int = 0
    record_candidates: bool = False
    record_counterfactual: bool = False

    def validate(self, n: int) -> None:
        """Refuse settings that cannot run on n elements (one-line UsageError)."""
        if self.search not in SEARCHES:
            raise UsageError(f"unknown search {self.search!r} (choose from {', '.join(SEARCHES)})")
        if len(self.lambdas) != 4 or not all(math.isfinite(float(v)) for v in self.lambdas):
            raise UsageError(f"lambdas must be 4 finite numbers, got {self.lambdas!r}")
        if self.lazy and self.search != "bidirectional":
            raise UsageError("lazy=True combines with search 'bidirectional' only (use search 'lazy' for greedy)")
        if self.k is not None and not 1 <= int(self.k) <= n:
            raise UsageError(f"--k must be between 1 and the number of regions {n}, got {self.k}")
        if self.search == "bidirectional" and self.k is not None and int(self.k) != n:
            raise UsageError("bidirectional search ranks all regions; --k does not apply")
        if int(self.pending) < 1:
            raise UsageError(f"--pending must be >= 1, got {self.pending}")
        if int(self.lazy_batch) < 1 or int(self.lazy_refresh) < 1:
            raise UsageError("--lazy-batch and --lazy-refresh must be >= 1")
        if not (math.isfinite(float(self.lazy_stale)) and float(self.lazy_stale) >= 0):
            raise UsageError(f"--lazy-stale must be a finite number >= 0, got {self.lazy_stale}")
        if not (math.isfinite(float(self.lazy_budget)) and 0 <= float(self.lazy_budget) <= 1):
            raise UsageError(f"--lazy-budget must be between 0 and 1 (a share of exact's forwards), got "
                             f"{self.lazy_budget}")
        if int(self.max_batch) < 0:
            raise UsageError(f"--max-batch must be >= 0 (0 = full batches), got {self.max_batch}")


@dataclass
class SmdlResult:
    """One image's attribution: selection order (element positions), the five curves, areas, counts and timings."""

    order: np.ndarray
    confidence: np.ndarray
    effectiveness: np.ndarray
    consistency: np.ndarray
    collaboration: np.ndarray
    objective: np.ndarray
    p_full: float
    p_black: float
    area_ins: np.ndarray
    area_del: np.ndarray
    front_len: int | None
    forwards: int
    seconds: float
    model_seconds: float
    prediction: int
    p_pred: np.ndarray | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def confidence_term(p: torch.Tensor, target: int, family: str) -> torch.Tensor:
    """1 − H(p)/log C (softmax, H = −Σ p·log(p + 1e-7)) or 1 − H_b(p_t)/log 2 (sigmoid), per row of p [B,C]."""
    if family == "sigmoid":
        q = p[:, target]
        hb = -(q * torch.log(q + EPS) + (1 - q) * torch.log(1 - q + EPS))
        return 1 - hb / math.log(2.0)
    entropy = -torch.sum(p * torch.log(p + EPS), dim=1)
    return 1 - entropy / math.log(p.shape[1])


def distance_matrix(features: torch.Tensor) -> torch.Tensor:
    """d_ij = arccos(clamp(f_i·f_j, −1, 1))/π for unit features [n,d], diagonal 1 (so a row's min skips itself)."""
    cos = torch.clamp(features @ features.T, -1, 1)
    d = torch.acos(cos) / math.pi
    d.fill_diagonal_(1)
    return d


def effectiveness_of_sets(dist: torch.Tensor, sets: torch.Tensor) -> torch.Tensor:
    """Σ_i min_{j≠i} d_ij for each row of ``sets`` [m,k] (element positions); 0 for single-element sets."""
    if sets.shape[1] <= 1:
        return torch.zeros(sets.shape[0], dtype=dist.dtype, device=dist.device)
    sub = dist[sets[:, :, None], sets[:, None, :]]
    return sub.min(dim=2).values.sum(dim=1)


def objective_of(lambdas: tuple[float, ...], conf: torch.Tensor, eff: torch.Tensor, cons: torch.Tensor,
                 colla: torch.Tensor) -> torch.Tensor:
    """F = λ1·conf + λ2·eff + λ3·cons + λ4·colla (evaluated left to right, as the oracle does)."""
    l1, l2, l3, l4 = (float(v) for v in lambdas)
    return l1 * conf + l2 * eff + l3 * cons + l4 * colla


class _Engine:
    """Shared state of one image's search: composited batches, forwards, effectiveness and term evaluation."""

    def __init__(self, scorer: Any, x: torch.Tensor, b: torch.Tensor, masks: torch.Tensor, target: int,
                 cfg: SmdlConfig) -> None:
        self.scorer = scorer
        dev = getattr(scorer, "device", x.device)
        self.x = x.to(dev, torch.float32)[None]
        self.b = b.to(dev, torch.float32)[None]
        self.masks = masks.to(dev)
        self.union = self.masks.any(0)
        self.n = int(masks.shape[0])
        # Element position of every pixel (n = none) and each element's flat pixel indices: a kept set's mask is one
        # gather, and a candidate batch is one copy of the base image plus one indexed paste of the new element.
        self.pos_map = torch.full(self.union.shape, self.n, dtype=torch.long, device=dev)
        for i in range(self.n):
            self.pos_map[self.masks[i]] = i
        flat = self.masks.flatten(1)
        npix = flat.shape[1]
        self.plane = 3 * npix
        pix = [torch.nonzero(flat[i]).flatten() for i in range(self.n)]
        # Per element: flat indices into one [3,S,S] image (all channels) and the x̃ / b̃ values there.
        self.pix3 = [torch.cat([p + ch * npix for ch in range(3)]) for p in pix]
        xf, bf = self.x.reshape(-1), self.b.reshape(-1)
        self.src = {"x": [xf[p] for p in self.pix3], "b": [bf[p] for p in self.pix3]}
        self.target = int(target)
        self.cfg = cfg
        self.lambdas = tuple(float(v) for v in cfg.lambdas)
        self.family = scorer.family
        self.pred: int | None = None
        self.p_full_vec: torch.Tensor | None = None  # set by attribute(): p(full image), p(fill only)
        self.p_black_vec: torch.Tensor | None = None
        self.element_probs: torch.Tensor | None = None  # p of each element alone on the fill (element_features)
        self.forwards0 = int(getattr(scorer, "forwards", 0))  # the scorer's count before this image
        self.candidates: list[dict[str, Any]] = []

    def used_forwards(self) -> int:
        """Images forwarded for this image so far."""
        return int(getattr(self.scorer, "forwards", 0)) - self.forwards0

    def set_mask(self, members: list[int]) -> torch.Tensor:
        """Union mask [S,S] of the elements at ``members`` (one gather through the position map)."""
        sel = torch.zeros(self.n + 1, dtype=torch.bool, device=self.pos_map.device)
        if members:
            sel[torch.as_tensor(members, dtype=torch.long, device=sel.device)] = True
        return sel[self.pos_map]

    def _paste_batch(self, base_img: torch.Tensor, cands: list[int], src: str) -> torch.Tensor:
        """[m,3,S,S]: base_img copied m times, then candidate i's element pixels taken from x̃ or b̃ (exact values).

        A plain copy plus one index_copy_ is ~5× cheaper than a broadcast torch.where over the batch (measured on a
        CPU), and gives the same values.
        """
        m = len(cands)
        out = torch.empty((m, *base_img.shape), dtype=base_img.dtype, device=base_img.device)
        out.copy_(base_img.expand_as(out))
        lens = torch.tensor([len(self.pix3[c]) for c in cands], device=out.device)
        offsets = torch.repeat_interleave(torch.arange(m, device=out.device) * self.plane, lens)
        idx = torch.cat([self.pix3[c] for c in cands]) + offsets
        vals = torch.cat([self.src[src][c] for c in cands])
        out.view(-1).index_copy_(0, idx, vals)
        return out

    def probs_of_sets(self, base: list[int], cands: list[int],
                      images: tuple[torch.Tensor, torch.Tensor] | None = None,
                      p_add: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(p of base∪α kept, p of I − (base∪α) kept) for each α, batched per side under max_batch.

        ``images``: the two candidate batches when the caller maintains them (exact mode), else built here.
        ``p_add``: the insertion side when already known (lazy's first step), so only the complement is forwarded.
        """
        cap = int(self.cfg.max_batch) or len(cands)
        if images is not None:
            ins, comp = images
            p_ins = [self.scorer.probs(ins[i:i + cap]) for i in range(0, len(cands), cap)]
            p_comp = [self.scorer.probs(comp[i:i + cap]) for i in range(0, len(cands), cap)]
            return torch.cat(p_ins), torch.cat(p_comp)
        base_mask = self.set_mask(base)
        ins_base = torch.where(base_mask, self.x[0], self.b[0])
        comp_base = torch.where(self.union & ~base_mask, self.x[0], self.b[0])
        p_ins = [p_add] if p_add is not None else [
            self.scorer.probs(self._paste_batch(ins_base, cands[i:i + cap], "x")) for i in range(0, len(cands), cap)]
        p_comp = [self.scorer.probs(self._paste_batch(comp_base, cands[i:i + cap], "b"))
                  for i in range(0, len(cands), cap)]
        return torch.cat(p_ins), torch.cat(p_comp)

    def probs(self, keep: torch.Tensor) -> torch.Tensor:
        """p [m,C] of the images keeping pixels ``keep`` [m,S,S] (rest = fill), in chunks of max_batch."""
        cap = int(self.cfg.max_batch) or keep.shape[0]
        out = []
        for i in range(0, keep.shape[0], cap):
            imgs = torch.where(keep[i:i + cap, None], self.x, self.b)
            out.append(self.scorer.probs(imgs))
        return torch.cat(out)

    def element_features(self) -> torch.Tensor:
        """Unit features of each element alone on the fill (n forwards, once per image); keeps their p as well."""
        cap = int(self.cfg.max_batch) or self.n
        both = getattr(self.scorer, "features_and_probs", None)  # scorers with features() only: no probs kept
        feats, probs = [], []
        for i in range(0, self.n, cap):
            imgs = torch.where(self.masks[i:i + cap, None], self.x, self.b)
            if both is None:
                feats.append(self.scorer.features(imgs))
                continue
            f, p = both(imgs)
            feats.append(f)
            probs.append(p)
        self.element_probs = torch.cat(probs) if probs else None
        return torch.cat(feats).float()

    def paste_all(self, buf: torch.Tensor, m: int, element: int, src: str) -> None:
        """Copy element's pixels from x̃ or b̃ into rows 0..m−1 of a candidate batch, in place."""
        p = self.pix3[element]
        idx = (p[None, :] + torch.arange(m, device=buf.device)[:, None] * self.plane).reshape(-1)
        buf.view(-1).index_copy_(0, idx, self.src[src][element].repeat(m))

    def evaluate(self, base: list[int], cands: list[int], dist: torch.Tensor, side: str = "front",
                 step: int = 0, images: tuple[torch.Tensor, torch.Tensor] | None = None,
                 p_add: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Terms of base ∪ {α} for each α in cands. side 'front': kept = base∪α; 'back': removed = base∪α."""
        dev = self.masks.device
        c = torch.as_tensor(cands, dtype=torch.long, device=dev)
        p_add, p_comp = self.probs_of_sets(base, cands, images, p_add)
        sets = torch.cat([torch.as_tensor(base, dtype=torch.long, device=dev).expand(len(cands), len(base)),
                          c[:, None]], dim=1)
        eff = effectiveness_of_sets(dist, sets)
        p_kept, p_removed = (p_add, p_comp) if side == "front" else (p_comp, p_add)
        conf = confidence_term(p_kept, self.target, self.family)
        cons = p_kept[:, self.target]
        colla = 1 - p_removed[:, self.target]
        obj = objective_of(self.lambdas, conf, eff, cons, colla)
        out = {"confidence": conf, "effectiveness": eff, "consistency": cons, "collaboration": colla,
               "objective": obj, "p_kept": p_kept}
        if self.cfg.record_candidates:
            self.candidates.append({"step": step, "side": side, "candidates": list(map(int, cands)),
                                    **{k: out[k].cpu().numpy().astype(np.float32).tolist() for k in TERMS}})
        return out


def _areas(masks: np.ndarray, order: np.ndarray, nonblack: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """area_ins[j] = non-black share of the first j regions; area_del[j] = 1 − non-black share of I minus them."""
    s = masks.shape[1] * masks.shape[2]
    nb = np.asarray(nonblack, bool)
    counts = np.array([int((masks[i] & nb).sum()) for i in order], dtype=np.int64)
    total = int((masks.any(0) & nb).sum())
    cum = np.concatenate([[0], np.cumsum(counts)])
    return (cum / s).astype(np.float32), (1.0 - (total - cum) / s).astype(np.float32)


def _pick(values: torch.Tensor) -> int:
    """Index of the first maximum (torch.argmax returns the first one among ties)."""
    return int(torch.argmax(values))


def _exact(eng: _Engine, dist: torch.Tensor, k: int) -> dict[str, Any]:
    n = eng.n
    selected: list[int] = []
    remaining = list(range(n))
    rec: dict[str, list[float]] = {t: [] for t in TERMS}
    p_pred: list[float] = []
    last_p_comp_black = None
    # Both candidate batches live across steps: after a pick, its pixels are pasted into every row and its row is
    # dropped by shifting the later rows up (about half the bytes of rebuilding the batches, same values).
    ins = eng._paste_batch(eng.b[0], remaining, "x")
    comp = eng._paste_batch(torch.where(eng.union, eng.x[0], eng.b[0]), remaining, "b")
    for step in range(k):
        m = len(remaining)
        ev = eng.evaluate(selected, remaining, dist, "front", step, images=(ins[:m], comp[:m]))
        j = _pick(ev["objective"])
        for t in TERMS:
            rec[t].append(float(ev[t][j]))
        if eng.pred is not None:
            p_pred.append(float(ev["p_kept"][j, eng.pred]))
        a = remaining[j]
        if step + 1 < k:
            eng.paste_all(ins, m, a, "x")
            eng.paste_all(comp, m, a, "b")
            for r in range(j, m - 1):  # ascending row copies never overlap
                ins[r].copy_(ins[r + 1])
                comp[r].copy_(comp[r + 1])
        selected.append(remaining.pop(j))
        if not remaining:
            last_p_comp_black = 1.0 - rec["collaboration"][-1]
    return {"order": selected, "rec": rec, "p_pred": p_pred, "p_black": last_p_comp_black}


@dataclass
class _LazyState:
    """Lazy search memory: cache[α] = (stale probability-part gain, stale F(S_α∪α), its conf, cons, colla) — the
    last four for LIMA's screening — and whether the next step re-evaluates every candidate (stale ranking seen)."""

    cache: dict[int, tuple[float, ...]] = field(default_factory=dict)
    refresh_next: bool = False
    refreshes: int = 0  # full re-evaluations after the first step (periodic + stale-triggered)
    stale_triggers: int = 0
    budget: int | None = None  # forwards the whole image may use (lazy_budget × exact's count), None = no cap
    k: int = 0  # steps of the search (for the budget's projection)
    skipped_for_budget: int = 0  # stale refreshes or extra batches not run because the budget was spent

    def slack(self, eng: _Engine, step: int, n_rem: int, batch: int) -> float:
        """Forwards this step may still spend and leave enough budget for the plain schedule of later steps.

        The plain schedule: each later step re-evaluates the top ``batch`` (2 forwards each), and every periodic step
        all remaining candidates; the last region costs nothing (its two images are the full and the fill-only one).
        """
        if self.budget is None:
            return math.inf
        ahead = 0
        for t in range(step + 1, self.k):
            m = n_rem - (t - step)
            if m <= 1:
                break
            ahead += 2 * (m if t % int(eng.cfg.lazy_refresh) == 0 or m <= batch else batch)
        return self.budget - eng.used_forwards() - ahead

    def spread(self, eng: _Engine, step: int, n_rem: int, batch: int) -> int:
        """Extra candidates this step may re-evaluate: the budget left over the plain schedule, spread evenly over
        the remaining steps (so early steps, which shape the curves most, are never starved by later ones)."""
        if self.budget is None:
            return 0
        steps_left = max(1, min(self.k, step + n_rem - 1) - step)
        room = max(0, min(n_rem, int(self.slack(eng, step, n_rem, batch)) // 2 - batch))
        return room // steps_left


def _lazy_front(eng: _Engine, dist: torch.Tensor, selected: list[int], remaining: list[int], step: int,
                st: _LazyState, f_sel: float, eff_sel: float) -> tuple[int, dict[str, float], float | None]:
    """One lazy step: (position in remaining of the pick, its fresh terms, its p_pred or None)."""
    cfg = eng.cfg
    cache = st.cache
    l2 = eng.lambdas[1]
    dev = dist.device
    if len(remaining) == 1 and eng.p_full_vec is not None and eng.p_black_vec is not None and bool(eng.union.all()):
        # The last region: kept = the full image, complement = the fill only; both already forwarded.
        pf, pb = eng.p_full_vec[None], eng.p_black_vec[None]
        eff = float(effectiveness_of_sets(dist, torch.as_tensor(selected + remaining, device=dev)[None])[0])
        conf = confidence_term(pf, eng.target, eng.family)
        obj = objective_of(eng.lambdas, conf, torch.tensor([eff], device=dev), pf[:, eng.target],
                           1 - pb[:, eng.target])
        terms = {"confidence": float(conf[0]), "effectiveness": eff, "consistency": float(pf[0, eng.target]),
                 "collaboration": float(1 - pb[0, eng.target]), "objective": float(obj[0])}
        return 0, terms, float(pf[0, eng.pred]) if eng.pred is not None else None
    periodic = step % int(cfg.lazy_refresh) == 0
    bsz = int(cfg.lazy_batch)
    stale_refresh = st.refresh_next
    first = bsz
    slack = st.slack(eng, step, len(remaining), bsz) if stale_refresh and not periodic else math.inf
    if stale_refresh and not periodic and 2 * len(remaining) > slack:
        stale_refresh = False
        st.skipped_for_budget += 1
        # What the budget still allows goes to the candidates with the highest stale bounds (a partial refresh).
        first = max(bsz, min(len(remaining), int(slack) // 2))
    elif not periodic and cache and len(remaining) > bsz:
        first = bsz + st.spread(eng, step, len(remaining), bsz)
    full = periodic or stale_refresh or len(remaining) <= bsz or not cache
    if full and cache:
        st.refreshes += 1
    st.refresh_next = False
    # Nothing kept yet: each candidate's insertion image is its element alone on the fill, already forwarded.
    p_add0 = eng.element_probs if not selected and eng.element_probs is not None else None
    if full:
        order = list(range(len(remaining)))
        batches = [order]
    else:
        # Exact effectiveness gains for the current S (no forwards), stale probability gains from the cache.
        sets = torch.cat([torch.as_tensor(selected, dtype=torch.long, device=dev).expand(len(remaining),
                                                                                          len(selected)),
                          torch.as_tensor(remaining, dtype=torch.long, device=dev)[:, None]], dim=1)
        eff_gain = (effectiveness_of_sets(dist, sets).double() - eff_sel) * l2
        bound = torch.tensor([cache[a][0] for a in remaining], dtype=torch.float64, device=dev) + eff_gain
        # Descending bound, ties → smallest id (remaining is ascending and the sort is stable).
        order = torch.argsort(-bound, stable=True).tolist()
        batches = [order[:first]] + [order[i:i + bsz] for i in range(first, len(order), bsz)]
        bound_l = bound.tolist()
    best_pos, best_val, best_terms, best_pp = -1, -math.inf, None, None
    done = 0
    for bi, batch in enumerate(batches):
        cands = [remaining[i] for i in batch]
        p_add = p_add0[torch.as_tensor(cands, device=p_add0.device)] if p_add0 is not None else None
        ev = eng.evaluate(selected, cands, dist, "front", step, p_add=p_add)
        obj = ev["objective"].double()
        for r, i in enumerate(batch):
            a = remaining[i]
            prob_part = float(obj[r]) - l2 * float(ev["effectiveness"][r])
            cache[a] = (prob_part - (f_sel - l2 * eff_sel), float(ev["objective"][r]),
                        *(float(ev[t][r]) for t in ("confidence", "consistency", "collaboration")))
            val = float(obj[r])
            if val > best_val or (val == best_val and i < best_pos):
                best_pos, best_val = i, val
                best_terms = {t: float(ev[t][r]) for t in TERMS}
                best_pp = float(ev["p_kept"][r, eng.pred]) if eng.pred is not None else None
        done += len(batch)
        if full or bi == len(batches) - 1:
            break
        rest = max(bound_l[i] for i in order[done:])
        if best_val - f_sel >= rest:
            break
        if 2 * len(batches[bi + 1]) > st.slack(eng, step, len(remaining), bsz):
            st.skipped_for_budget += 1
            break  # the budget is spent: accept the best fresh gain so far
    if not full and bound_l[order[0]] - (best_val - f_sel) > float(cfg.lazy_stale):
        st.refresh_next = True  # the cached gains overestimated the best one by more than lazy_stale
        st.stale_triggers += 1
    assert best_terms is not None
    return best_pos, best_terms, best_pp


def _lazy(eng: _Engine, dist: torch.Tensor, k: int, f_empty: float) -> dict[str, Any]:
    n = eng.n
    selected: list[int] = []
    remaining = list(range(n))
    rec: dict[str, list[float]] = {t: [] for t in TERMS}
    p_pred: list[float] = []
    budget = float(eng.cfg.lazy_budget)
    # The cap counts every forward of the image, as SmdlResult.forwards does; exact's count is n + 1 + n(n+1).
    st = _LazyState(budget=int(budget * (n + 1 + n * (n + 1))) if budget > 0 else None, k=k)
    f_sel, eff_sel = f_empty, 0.0
    for step in range(k):
        pos, terms, pp = _lazy_front(eng, dist, selected, remaining, step, st, f_sel, eff_sel)
        for t in TERMS:
            rec[t].append(terms[t])
        if pp is not None:
            p_pred.append(pp)
        a = remaining.pop(pos)
        st.cache.pop(a, None)
        selected.append(a)
        f_sel, eff_sel = terms["objective"], terms["effectiveness"]
    return {"order": selected, "rec": rec, "p_pred": p_pred, "p_black": None,
            "lazy_stats": {"refreshes": st.refreshes, "stale_triggers": st.stale_triggers,
                           "budget": st.budget, "skipped_for_budget": st.skipped_for_budget}}


def _bidirectional(eng: _Engine, dist: torch.Tensor, lazy: bool, f_empty: float,
                   p_full_vec: torch.Tensor) -> dict[str, Any]:
    n, P = eng.n, int(eng.cfg.pending)
    dev = dist.device
    front: list[int] = []
    back: list[int] = []
    remaining = list(range(n))
    inc: dict[str, list[float]] = {t: [] for t in TERMS}
    dec: dict[str, list[float]] = {t: [] for t in TERMS}
    inc_pp: list[float] = []
    dec_pp: list[float] = []
    st = _LazyState()
    cache = st.cache
    f_sel, eff_sel = f_empty, 0.0
    step = 0
    while remaining:
        if len(remaining) == 1:  # one candidate left: append, no evaluation
            front.append(remaining.pop())
            break
        if lazy:
            j, terms, pp = _lazy_front(eng, dist, front, remaining, step, st, f_sel, eff_sel)
            # Screening uses each candidate's latest fresh insertion-side terms (no forwards).
            ins = {t: torch.tensor([cache[a][2 + i] if a in cache else 0.0 for a in remaining], device=dev)
                   for i, t in enumerate(("confidence", "consistency", "collaboration"))}
            f_sel, eff_sel = terms["objective"], terms["effectiveness"]
        else:
            ev = eng.evaluate(front, remaining, dist, "front", step)
            j = _pick(ev["objective"])
            terms = {t: float(ev[t][j]) for t in TERMS}
            pp = float(ev["p_kept"][j, eng.pred]) if eng.pred is not None else None
            ins = {t: ev[t] for t in ("confidence", "consistency", "collaboration")}
        for t in TERMS:
            inc[t].append(terms[t])
        if pp is not None:
            inc_pp.append(pp)
        if len(remaining) > P:
            sets = torch.cat([torch.as_tensor(back, dtype=torch.long, device=dev).expand(len(remaining), len(back)),
                              torch.as_tensor(remaining, dtype=torch.long, device=dev)[:, None]], dim=1)
            eff_d = effectiveness_of_sets(dist, sets)
            screen = objective_of(eng.lambdas, ins["confidence"].to(eff_d.dtype), eff_d,
                                  ins["consistency"].to(eff_d.dtype), ins["collaboration"].to(eff_d.dtype))
            low = torch.topk(screen, P, largest=False).indices.tolist()
            low = [i for i in low if i != j]
            if low:
                evb = eng.evaluate(back, [remaining[i] for i in low], dist, "back", step)
                m = int(torch.argmin(evb["objective"]))
                for t in TERMS:
                    dec[t].append(float(evb[t][m]))
                if eng.pred is not None:
                    dec_pp.append(float(evb["p_kept"][m, eng.pred]))
                b_pos = low[m]
                b_id = remaining[b_pos]
            else:
                b_id = None
        else:
            b_id = None
        a_id = remaining[j]
        front.append(a_id)
        remaining.remove(a_id)
        cache.pop(a_id, None)
        if b_id is not None:
            back.append(b_id)
            remaining.remove(b_id)
            cache.pop(b_id, None)
        step += 1
    # Last point (all kept): the fill-only image (1 forward) and the all-kept image, which is the full image's
    # forward when the elements cover every pixel (the divisions always do), else 1 more forward.
    p_black_all = eng.probs(torch.zeros_like(eng.union)[None])
    p_kept_all = p_full_vec[None] if bool(eng.union.all()) else eng.probs(eng.union[None])
    p_all = torch.cat([p_kept_all, p_black_all])
    order = front + back[::-1]
    n_front_rec = len(inc["objective"])
    # Stitched curves: entry j describes kept set = first j+1 regions of the order. Front entries come from the
    # front records; the others from the back record t = n−1−j (kept = I − D_t: consistency p(I − D_t),
    # collaboration 1 − p(D_t)), with t = 0 from the extra forwards. Effectiveness and objective are those of the
    # kept set (computed, no forwards), so every stitched curve describes the same kept set.
    rec = {t: list(inc[t]) for t in TERMS}
    pp_out = list(inc_pp)
    for jj in range(n_front_rec, n):
        t_back = n - 1 - jj
        kept = torch.as_tensor(order[:jj + 1], dtype=torch.long, device=dev)[None]
        eff = float(effectiveness_of_sets(dist, kept)[0])  # summed in selection order, as the curves are
        if t_back == 0:
            p_k = p_all[0:1]
            conf = float(confidence_term(p_k, eng.target, eng.family)[0])
            cons = float(p_k[0, eng.target])
            colla = float(1 - p_all[1, eng.target])
            if eng.pred is not None:
                pp_out.append(float(p_k[0, eng.pred]))
        else:
            i = t_back - 1
            conf, cons, colla = dec["confidence"][i], dec["consistency"][i], dec["collaboration"][i]
            if eng.pred is not None:
                pp_out.append(dec_pp[i])
        obj = float(objective_of(eng.lambdas, torch.tensor([conf]), torch.tensor([eff]), torch.tensor([cons]),
                                 torch.tensor([colla]))[0])
        for t, v in zip(TERMS, (conf, eff, cons, colla, obj), strict=True):
            rec[t].append(v)
    out = {"order": order, "rec": rec, "p_pred": pp_out, "p_black": float(p_all[1, eng.target]),
           "front_len": len(front), "increase": inc, "decrease": dec}
    if lazy:
        out["lazy_stats"] = {"refreshes": st.refreshes, "stale_triggers": st.stale_triggers}
    return out


def attribute(scorer: Any, x_norm: torch.Tensor, fill_norm: torch.Tensor, masks: torch.Tensor, target: int,
              cfg: SmdlConfig, nonblack: np.ndarray) -> SmdlResult:
    """Rank the n elements (bool masks [n,S,S]) for class ``target``; ``order`` holds element positions 0..n−1."""
    t0 = time.perf_counter()
    masks = torch.as_tensor(masks).bool()
    if masks.ndim != 3 or masks.shape[0] < 2:
        raise UsageError(f"SMDL needs at least 2 regions as masks [n,S,S], got shape {tuple(masks.shape)}")
    if tuple(masks.shape[1:]) != tuple(x_norm.shape[1:]) or tuple(fill_norm.shape) != tuple(x_norm.shape):
        raise UsageError(f"region masks {tuple(masks.shape[1:])}, image {tuple(x_norm.shape)} and fill "
                         f"{tuple(fill_norm.shape)} differ in size")
    n = int(masks.shape[0])
    if int(masks.sum(0).max()) > 1:
        raise UsageError("SMDL regions must be disjoint (a pixel belongs to at most one region)")
    if not bool(masks.flatten(1).any(1).all()):
        raise UsageError("an SMDL region is empty (every region needs at least one pixel)")
    cfg.validate(n)
    if not 0 <= int(target) < int(scorer.n_classes):
        raise UsageError(f"target class {target} is out of range for {scorer.n_classes} classes")
    f0, s0 = scorer.forwards, scorer.model_seconds
    # fp32 without TF32 for every search (exact parity; fast modes may still autocast via the scorer's amp).
    prev_tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        eng = _Engine(scorer, x_norm, fill_norm, masks, target, cfg)
        feats = eng.element_features()
        dist = distance_matrix(feats)
        p_full_vec = scorer.probs(eng.x)[0]
        prediction = int(torch.argmax(p_full_vec))
        p_full = float(p_full_vec[target])
        if cfg.record_counterfactual and prediction != int(target):
            eng.pred = prediction
        k = n if cfg.k is None else int(cfg.k)
        # Exact gets p(fill only) from its last complement; lazy modes need F(∅) for their first gains.
        need_black = cfg.search == "lazy" or cfg.lazy or (cfg.search == "exact" and k < n)
        p_black_vec = scorer.probs(eng.b)[0] if need_black else None
        eng.p_full_vec, eng.p_black_vec = p_full_vec, p_black_vec
        f_empty = 0.0
        if p_black_vec is not None:
            # F(∅): the fill-only image kept, the full image as complement (lazy gains start from it).
            pb = p_black_vec[None]
            f_empty = float(objective_of(eng.lambdas, confidence_term(pb, target, eng.family), torch.zeros(1),
                                         pb[:, target], 1 - p_full_vec[None, target]))
        if cfg.search == "exact":
            out = _exact(eng, dist, k)
        elif cfg.search == "lazy":
            out = _lazy(eng, dist, k, f_empty)
        else:
            out = _bidirectional(eng, dist, cfg.lazy, f_empty, p_full_vec)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = prev_tf32
    p_black = out["p_black"] if out["p_black"] is not None else float(p_black_vec[target])
    order = np.asarray(out["order"], dtype=np.int16)
    masks_np = masks.cpu().numpy()
    area_ins, area_del = _areas(masks_np, order, nonblack)
    extra: dict[str, Any] = {"n_regions": n, "search": cfg.search, "lazy": bool(cfg.lazy)}
    if "lazy_stats" in out:
        extra.update({"lazy_batch": int(cfg.lazy_batch), "lazy_refresh": int(cfg.lazy_refresh),
                      "lazy_stale": float(cfg.lazy_stale), "lazy_budget_share": float(cfg.lazy_budget),
                      **{f"lazy_{k}": v for k, v in out["lazy_stats"].items()}})
    warnings = []
    c = int(scorer.n_classes)
    if scorer.family == "softmax" and float(p_full_vec.max()) < 2.0 / c:
        warnings.append(f"near-uniform scores: max p(full image) = {float(p_full_vec.max()):.4g} < 2/C = "
                        f"{2.0 / c:.4g}; check the logit scale")
    if p_black > 0.99:
        warnings.append(f"p_target(fill-only image) = {p_black:.4g} > 0.99: the scores saturate; check the logit "
                        "scale and the target")
    extra["warnings"] = warnings
    if "increase" in out:
        for name, recs in (("increase", out["increase"]), ("decrease", out["decrease"])):
            for t in TERMS:
                extra[f"{t}_{name}"] = np.asarray(recs[t], dtype=np.float32)
    if cfg.record_candidates:
        extra["candidates"] = eng.candidates
    rec = out["rec"]
    return SmdlResult(
        order=order,
        **{t: np.asarray(rec[t], dtype=np.float32) for t in TERMS},
        p_full=p_full,
        p_black=float(p_black),
        area_ins=area_ins,
        area_del=area_del,
        front_len=out.get("front_len"),
        forwards=int(scorer.forwards - f0),
        seconds=time.perf_counter() - t0,
        model_seconds=float(scorer.model_seconds - s0),
        prediction=prediction,
        p_pred=np.asarray(out["p_pred"], dtype=np.float32) if eng.pred is not None else None,
        extra=extra,
    )
