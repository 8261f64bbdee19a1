"""Equality and speed of `xaiclip cam` against pytorch-grad-cam 1.5.7 (the reference), printed as one JSON record.

grad-cam is never installed into the project environment (cam.md §8: it drags opencv-python/torchvision pins that
break the project's opencv-contrib and torch). This script:

1. creates a separate venv ``.bench_envs/gradcam`` (no system site packages) and uses *its* pip to put
   ``grad-cam==1.5.7`` and ``ttach`` into ``.bench_envs/gradcam/site`` with ``--no-deps --target``;
2. runs a child process with the *project* interpreter that appends that folder to ``sys.path`` (so torch, numpy,
   cv2 come from the project venv, read-only) and compares maps and images/s method by method;
3. checks that the project venv's installed distributions are unchanged (listing before == after).

Equality: same model, layer, inputs, batch and targets (callables returning the same s_t); maps compared at input
resolution after ReLU and min-max, pass if Pearson >= 0.999 for every image. EigenCAM is compared against both signs
of the reference projection. gScoreCAM's reference (anguyen8/gScoreCAM) is not on PyPI and is reported as skipped.

Usage: .venv/bin/python benchmarks/cam_vs_gradcam.py [--models tiny-cnn,tiny-vit] [--images 16] [--batch 8]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENV_DIR = ROOT / ".bench_envs" / "gradcam"
SITE = ENV_DIR / "site"
REF_PINS = ["grad-cam==1.5.7", "ttach==0.0.3"]
GRADIENT = ["gradcam", "hirescam", "layercam", "xgradcam", "gradcam++"]


def ensure_reference() -> str:
    """Create the separate venv and install the reference into its --target folder (idempotent)."""
    if (SITE / "pytorch_grad_cam").is_dir() and (SITE / "ttach").is_dir():
        return "cached"
    if not (ENV_DIR / "bin" / "pip").exists():
        # --system-site-packages is deliberately off: this venv shares nothing with the project's.
        subprocess.run([sys.executable, "-m", "venv", str(ENV_DIR)], check=True)
    subprocess.run([str(ENV_DIR / "bin" / "pip"), "install", "-q", "--no-deps", "--target", str(SITE), *REF_PINS],
                   check=True, stdout=sys.stderr)
    return "installed"


def project_distributions() -> list[str]:
    """Names of the distributions installed in the project interpreter (to prove it was not modified)."""
    from importlib import metadata

    return sorted(f"{d.metadata['Name']}=={d.version}" for d in metadata.distributions())


# --- child: runs with the project interpreter, reference appended to sys.path ----------------------------------------
def _pearson(a, b) -> float:
    import numpy as np

    a = a.ravel() - a.mean()
    b = b.ravel() - b.mean()
    den = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / den) if den > 0 else (1.0 if np.allclose(a, b) else 0.0)


def _make_backend(name: str):
    import torch

    from tests.explain import tiny_backends as tb

    torch.manual_seed(0)
    if name == "tiny-cnn":
        return tb.timm_backend("resnet18", image_size=224, layers=[1, 1, 1, 1], channels=[16, 32, 64, 128])
    if name == "tiny-vit":
        return tb.tiny_vit_backend(img_size=224, patch_size=16, embed_dim=64, depth=2, num_heads=2)
    if name in ("resnet50", "resnet18"):
        return tb.timm_backend(name, image_size=224, dim=512)
    if name == "vit-b16":
        return tb.timm_backend("vit_base_patch16_224", image_size=224, dim=512)
    if name in ("toy-cnn", "toy-vit"):
        from xaiclip_cli.models.registry import load_backend

        return load_backend("toy", name, device="cpu")
    raise SystemExit(f"unknown model {name}")


def child(args: argparse.Namespace) -> dict:
    """Compare every method on every model; returns the JSON record."""
    sys.path.append(str(SITE))  # appended: project packages (torch, numpy, cv2) win
    os.environ.setdefault("TQDM_DISABLE", "1")
    import torch

    torch.set_num_threads(args.threads)
    records: list[dict] = []
    for model_name in args.models.split(","):
        records.extend(_compare_model(model_name, args))
    import pytorch_grad_cam

    return {
        "benchmark": "cam_vs_gradcam",
        "reference": "grad-cam 1.5.7 (" + str(Path(pytorch_grad_cam.__file__).parent) + ")",
        "torch": torch.__version__, "threads": args.threads, "device": "cpu", "dtype": "float32",
        "all_equal": all(r.get("equal", True) for r in records),
        "min_speed_ratio_gradient_methods": min(
            (r["speed_ratio"] for r in records if r["method"] in GRADIENT and "speed_ratio" in r), default=None),
        "min_speed_ratio_all_methods": min((r["speed_ratio"] for r in records if "speed_ratio" in r), default=None),
        "records": records,
    }


class _ScoreModel:
    """Factory of the reference's view of the CLIP: an nn.Module mapping images to scores over the texts."""

    @staticmethod
    def build(backend, text_global):
        import torch

        class ScoreModel(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.vision = backend.vision_module()

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return backend.score(backend.encode_image(x)[0], text_global, "logit")

        return ScoreModel().eval()


def _compare_model(model_name: str, args: argparse.Namespace) -> list[dict]:
    """All methods on one model: same pixels, layer, batch and targets for both implementations."""
    import numpy as np
    import torch

    from xaiclip_cli.explain.api import CamRunner
    from xaiclip_cli.explain.layers import find_module

    backend = _make_backend(model_name).to("cpu")
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (backend.image_size, backend.image_size, 3), dtype=np.uint8)
              for _ in range(args.images)]
    texts = ["a round cell with a dark nucleus", "a cell with a lobed nucleus", "pink background", "a dog"]
    runner = CamRunner(backend, texts, "gradcam", "best", None, "logit")
    pixels = runner.pixels(images)
    layer = runner.resolve_layer(pixels)
    with torch.no_grad():
        targets = backend.score(backend.encode_image(pixels)[0], runner.text_global, "logit").argmax(1)
    ctx = {"backend": backend, "pixels": pixels, "text_global": runner.text_global, "targets": targets,
           "layer": layer, "module": find_module(backend.vision_module(), layer.name),
           "wrapper": _ScoreModel.build(backend, runner.text_global),
           "batches": [(s, min(s + args.batch, len(images))) for s in range(0, len(images), args.batch)],
           "repeats": args.repeats}
    methods = [m for m in args.methods.split(",") if m]
    if model_name in ("resnet50", "vit-b16") and "scorecam" in methods and not args.allow_slow:
        methods.remove("scorecam")
    out = []
    for method in methods:
        rec: dict = {"model": model_name, "method": method, "layer": layer.name, "layout": layer.layout,
                     "batch": args.batch, "images": len(images)}
        if method == "gscorecam":
            rec["status"] = "skipped: reference anguyen8/gScoreCAM is not installable from a package registry"
        else:
            rec.update(_compare_method(method, ctx))
            print(json.dumps(rec), file=sys.stderr)
        out.append(rec)
    return out


def _reshape_fn(layer):
    from xaiclip_cli.explain.layers import to_nchw

    return lambda t: to_nchw(t, layer.layout, layer.prefix, layer.grid)


def _compare_method(method: str, ctx: dict) -> dict:
    """Maps and images/s of one method: ours (compute_maps + upsample + minmax) vs the reference class."""
    import numpy as np
    import torch
    from pytorch_grad_cam import EigenCAM, GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, ScoreCAM, XGradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection

    from xaiclip_cli.explain.cam.engine import compute_maps, minmax, upsample_maps

    ref_cls = {"gradcam": GradCAM, "hirescam": HiResCAM, "layercam": LayerCAM, "xgradcam": XGradCAM,
               "gradcam++": GradCAMPlusPlus, "scorecam": ScoreCAM, "eigencam": EigenCAM}
    pixels, targets, layer = ctx["pixels"], ctx["targets"], ctx["layer"]
    size = tuple(pixels.shape[-2:])
    reshape = _reshape_fn(layer)

    def ours(lo: int, hi: int) -> np.ndarray:
        bm = compute_maps(ctx["backend"], pixels[lo:hi], ctx["text_global"], targets[lo:hi], method, layer, "logit",
                          score_batch=16)
        return minmax(upsample_maps(bm.raw, size)).cpu().numpy()

    holder: dict = {}

    def ref(lo: int, hi: int) -> np.ndarray:
        if "cam" not in holder:  # built only now: its hooks must not run during our timing
            holder["cam"] = ref_cls[method](model=ctx["wrapper"], target_layers=[ctx["module"]],
                                            reshape_transform=None if layer.layout == "NCHW" else reshape)
            holder["cam"].batch_size = 16
        tg = [ClassifierOutputTarget(int(t)) for t in targets[lo:hi]]
        return holder["cam"](input_tensor=pixels[lo:hi], targets=tg)

    runs: dict[str, list[float]] = {"ours": [], "ref": []}
    outs: dict[str, np.ndarray] = {}
    n = int(pixels.shape[0])
    fns = {"ours": ours, "ref": ref}
    for fn in fns.values():
        fn(*ctx["batches"][0])  # warm-up batch
    for r in range(ctx["repeats"]):  # alternate who goes first, so drifting machine load hits both alike
        for label in (("ours", "ref") if r % 2 == 0 else ("ref", "ours")):
            t0 = time.perf_counter()
            outs[label] = np.concatenate([fns[label](lo, hi) for lo, hi in ctx["batches"]])
            runs[label].append(n / (time.perf_counter() - t0))
    timings = {k: statistics.median(v) for k, v in runs.items()}
    holder["cam"].activations_and_grads.release()
    mine, theirs = outs["ours"], outs["ref"]
    if method == "eigencam":
        # The reference's SVD sign is arbitrary: compare with relu(±projection) of the same activations.
        with torch.no_grad(), _captured(ctx["module"]) as box:
            ctx["backend"].encode_image(pixels)
        proj = torch.from_numpy(get_2d_projection(reshape(box[0]).float().numpy().copy()))
        alts = [minmax(upsample_maps(sign * proj, size)).numpy() for sign in (1.0, -1.0)]
        pear, diffs = [], []
        for i in range(n):
            best = max(alts, key=lambda a, i=i: _pearson(mine[i], a[i]))
            pear.append(_pearson(mine[i], best[i]))
            diffs.append(float(np.abs(mine[i] - best[i]).max()))
        maxdiff = max(diffs)
    else:
        pear = [_pearson(mine[i], theirs[i]) for i in range(n)]
        maxdiff = float(np.abs(mine - theirs).max())
    return {"pearson_min": round(min(pear), 6), "max_abs_diff": round(maxdiff, 6), "equal": bool(min(pear) >= 0.999),
            "ours_img_s": round(timings["ours"], 3), "ref_img_s": round(timings["ref"], 3),
            "speed_ratio": round(timings["ours"] / timings["ref"], 3), "repeats": len(runs["ours"])}


class _captured:
    """Tiny forward-hook recorder (context manager) for the EigenCAM sign comparison."""

    def __init__(self, module) -> None:
        self.module, self.out, self.handle = module, [], None

    def __enter__(self):
        self.handle = self.module.register_forward_hook(lambda m, i, o: self.out.append(o.detach()))
        return self.out

    def __exit__(self, *exc) -> None:
        self.handle.remove()


def main() -> int:
    """Parent: prepare the reference, run the child with the project interpreter, print one JSON record."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="tiny-cnn,tiny-vit")
    ap.add_argument("--methods", default="gradcam,hirescam,layercam,xgradcam,gradcam++,eigencam,scorecam,gscorecam")
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per implementation (median; alternating)")
    ap.add_argument("--allow-slow", action="store_true", help="run ScoreCAM on resnet50/vit-b16 too")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        sys.path.insert(0, str(ROOT))
        print(json.dumps(child(args)))
        return 0
    before = project_distributions()
    status = ensure_reference()
    cmd = [sys.executable, __file__, "--child", "--models", args.models, "--methods", args.methods,
           "--images", str(args.images), "--batch", str(args.batch), "--threads", str(args.threads),
           "--repeats", str(args.repeats)]
    if args.allow_slow:
        cmd.append("--allow-slow")
    env = {**os.environ, "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    sys.stderr.write(proc.stderr)
    if proc.returncode != 0:
        print(json.dumps({"benchmark": "cam_vs_gradcam", "error": proc.stderr.strip().splitlines()[-1:]}))
        return proc.returncode
    record = json.loads(proc.stdout.strip().splitlines()[-1])
    record["reference_env"] = {"venv": str(ENV_DIR), "site": str(SITE), "status": status}
    record["project_env_unchanged"] = project_distributions() == before
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
