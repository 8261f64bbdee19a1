"""Insertion/deletion of `xaiclip eval` (convention torchcam) against torchcam 0.5.0, printed as one JSON record.

torchcam is never installed into the project environment. Like ``cam_vs_gradcam.py`` this script:

1. creates a separate venv ``.bench_envs/torchcam`` (no system site packages) and uses *its* pip to put
   ``torchcam==0.5.0`` into ``.bench_envs/torchcam/site`` with ``--no-deps --target`` (torchcam needs only torch,
   numpy, pillow, matplotlib: those come from the project venv, read-only, so the torch pin torch==2.14.1 is the
   project's own);
2. runs a child process with the project interpreter that appends that folder to ``sys.path`` and scores the same
   inputs with ``torchcam.metrics.DeletionInsertionMetric`` (a stub extractor hands it the precomputed maps) and with
   ``xaiclip_cli.metrics.insertion_deletion`` (``convention='torchcam'``; and ``'xaiclip'`` where s | N);
3. checks that the project venv's installed distributions are unchanged.

Cases: (a) the linear 2-class model of metrics.md §2 (3×16×16, raw logit of class 0, baseline 0, 8 steps, random
continuous maps); (b) the shipped toy-cnn CLIP on toy-cells test images,
softmax over three texts, baseline 0 in normalised space, 20 steps (s ∤ N) and 16 steps (s | N). Maps are given at
input resolution (tie-free), so both sides rank the same values. Pass: every |difference| ≤ 1e-6.

Usage: .venv/bin/python benchmarks/metrics_crosscheck.py [--images 8]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENV_DIR = ROOT / ".bench_envs" / "torchcam"
SITE = ENV_DIR / "site"
REF_PINS = ["torchcam==0.5.0"]
TOL = 1e-6


def ensure_reference() -> str:
    """Create the separate venv and install the reference into its --target folder (idempotent)."""
    if (SITE / "torchcam" / "metrics.py").is_file():
        return "cached"
    if not (ENV_DIR / "bin" / "pip").exists():
        subprocess.run([sys.executable, "-m", "venv", str(ENV_DIR)], check=True)
    subprocess.run([str(ENV_DIR / "bin" / "pip"), "install", "-q", "--no-deps", "--target", str(SITE), *REF_PINS],
                   check=True, stdout=sys.stderr)
    return "installed"


def project_distributions() -> list[str]:
    """Names of the distributions installed in the project interpreter (to prove it was not modified)."""
    from importlib import metadata

    return sorted(f"{d.metadata['Name']}=={d.version}" for d in metadata.distributions())


# --- child ---------------------------------------------------------------------------------------------------------
class _Stub:
    """What DeletionInsertionMetric needs of a CAM extractor: the model, maps on demand, fuse, hooks off."""

    def __init__(self, model, cams) -> None:
        self.model, self.cams = model, cams

    def __call__(self, class_idx, scores=None):  # noqa: ANN001, ANN204
        return [self.cams]

    def fuse_cams(self, cams):  # noqa: ANN001, ANN201
        return cams[0]

    def _hooks_off(self):  # noqa: ANN202
        import contextlib

        return contextlib.nullcontext()


def _ours(score_fn, x, base, cams, steps, conv, targets):  # noqa: ANN001, ANN202
    import numpy as np
    import torch

    from xaiclip_cli.metrics import insertion_deletion as ID

    size = tuple(x.shape[-2:])
    ranks = torch.stack([torch.as_tensor(ID.pixel_ranks(c.double().numpy(), size, "input", conv)) for c in cams])
    n = size[0] * size[1]
    cnt = ID.counts(n, steps, conv)
    out = {}
    for mode in ("deletion", "insertion"):
        ys = ID.perturbation_curves(score_fn, x, base, ranks, cnt, mode, targets, batch_size=32)
        out[mode] = float(np.mean([ID.auc(cnt, n, y, conv) for y in ys]))
    return out


def _torchcam(model, x, cams, steps, targets, logits_fn=None):  # noqa: ANN001, ANN202
    from torchcam.metrics import DeletionInsertionMetric

    m = DeletionInsertionMetric(_Stub(model, cams), logits_fn, steps=steps, batch_size=32)
    m.update(x, class_idx=list(targets))
    s = m.summary()
    return {"deletion": float(s["deletion_auc"]), "insertion": float(s["insertion_auc"])}


def child(n_images: int) -> dict:
    """Run both implementations on the same inputs; return the records."""
    import numpy as np
    import torch
    from torch import nn

    torch.set_num_threads(1)
    sys.path.append(str(SITE))
    import torchcam

    records = []
    # (a) linear model, metrics.md §2 cross-check setting
    rng = np.random.default_rng(0)
    x = torch.as_tensor(rng.normal(size=(3, 3, 16, 16)), dtype=torch.float32)
    lin = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 2))
    with torch.no_grad():
        lin[1].weight.copy_(torch.as_tensor(rng.normal(size=(2, 768)) / 16.0))
        lin[1].bias.copy_(torch.as_tensor(rng.normal(size=2)))
    cams = torch.as_tensor(rng.random((3, 16, 16)), dtype=torch.float32)

    def lin_score(b, t):  # noqa: ANN001, ANN202
        return lin(b)[torch.arange(b.shape[0]), t]

    for steps in (8, 20):
        ours = _ours(lin_score, x, torch.zeros_like(x), cams, steps, "torchcam", [0, 0, 0])
        ref = _torchcam(lin, x, cams, steps, [0, 0, 0])
        records.append({"case": f"linear 3x16x16, logit class 0, baseline 0, {steps} steps", "xaiclip": ours,
                        "torchcam": ref})
    # (b) toy-cnn CLIP, softmax over three texts
    from xaiclip_cli.data.toycells import ToyCellsSource
    from xaiclip_cli.models.registry import load_backend

    be = load_backend("toy", "toy-cnn", device="cpu")
    texts = ["a microscopic image of a lymphocyte cell", "a microscopic image of a neutrophil cell",
             "a microscopic image of a monocyte cell"]
    with torch.no_grad():
        tf = be.encode_texts(texts).float()

    class Clip(nn.Module):
        def forward(self, b):  # noqa: ANN001, ANN202
            g, _ = be.encode_image(b)
            return be.logit_scale * g.float() @ tf.T + be.logit_bias

    clip = Clip()
    src = ToyCellsSource()
    imgs = [src.get("test", i).image for i in range(n_images)]
    with torch.no_grad():
        xb = be.preprocess(imgs).float()
        targets = clip(xb).argmax(-1).tolist()
    cams = torch.as_tensor(np.random.default_rng(1).random((n_images, *xb.shape[-2:])), dtype=torch.float32)

    def clip_score(b, t):  # noqa: ANN001, ANN202
        with torch.no_grad():
            return clip(b).softmax(-1)[torch.arange(b.shape[0]), t]

    sm = torch.nn.Softmax(dim=-1)
    for steps, conv in ((20, "torchcam"), (16, "torchcam"), (16, "xaiclip")):
        ours = _ours(clip_score, xb, torch.zeros_like(xb), cams, steps, conv, targets)
        ref = _torchcam(clip, xb, cams, steps, targets, sm)
        records.append({"case": f"toy-cnn CLIP, softmax over 3 texts, {n_images} toy-cells images, baseline 0 "
                                f"(normalised), {steps} steps, xaiclip convention={conv}", "xaiclip": ours,
                        "torchcam": ref})
    for r in records:
        r["max_abs_diff"] = max(abs(r["xaiclip"][k] - r["torchcam"][k]) for k in ("deletion", "insertion"))
    return {"torchcam_version": torchcam.__version__, "torch": torch.__version__, "records": records}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(a.images)))
        return 0
    before = project_distributions()
    status = ensure_reference()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, __file__, "--child", "--images", str(a.images)], env=env, check=True,
                         capture_output=True, text=True)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    after = project_distributions()
    worst = max(r["max_abs_diff"] for r in res["records"])
    print(json.dumps({"benchmark": "metrics_crosscheck", "reference": "torchcam==0.5.0", "reference_env": status,
                      **res, "max_abs_diff": worst, "tolerance": TOL, "pass": worst <= TOL,
                      "project_env_unchanged": before == after}))
    return 0 if worst <= TOL and before == after else 1


if __name__ == "__main__":
    raise SystemExit(main())
