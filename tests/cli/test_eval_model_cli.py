"""Model-based eval commands on the shipped toy model: values against a direct per-step loop, resume, bad inputs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from tests.cli.eval_maps import TEXTS, write_rand_maps
from xaiclip_cli.cli.main import app
from xaiclip_cli.resources import resource_dir

pytestmark = pytest.mark.skipif(not (resource_dir("toy", "toy-cnn") / "xaiclip_clip.json").is_file(),
                                reason="shipped toy-cnn model not present")
runner = CliRunner()
BASE = ["--backend", "toy", "--model", "toy-cnn", "--device", "cpu", "--threads", "1"]


def _run(args: list[str], code: int = 0) -> dict:
    r = runner.invoke(app, [*args, "--json"])
    assert r.exit_code == code, r.output
    if code in (0, 3):
        return json.loads(r.stdout)
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    return {"stderr": r.stderr}


def _rows(p: Path) -> dict[str, dict[str, str]]:
    with open(p, newline="") as fh:
        return {r["image"]: r for r in csv.DictReader(fh)}


@pytest.fixture(scope="module")
def maps(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tie-free random maps (8×8) with cam-style sidecars naming toy-cells test images and three texts."""
    return write_rand_maps(tmp_path_factory.mktemp("m") / "maps", 3)


@pytest.fixture(scope="module")
def backend():  # noqa: ANN201
    from xaiclip_cli.models.registry import load_backend

    return load_backend("toy", "toy-cnn", device="cpu")


def _direct_curves(backend, image: np.ndarray, phi: np.ndarray, t: int, steps: int):
    """Independent per-step loop: numpy masks on the preprocessed image, one forward per step."""
    import torch.nn.functional as F

    x = backend.preprocess(image).float()
    size = x.shape[-2:]
    black = backend.preprocess(np.zeros((size[0], size[1], 3), np.uint8)).float()
    r = F.interpolate(torch.as_tensor(phi, dtype=torch.float64)[None, None], size=tuple(size), mode="bilinear",
                      align_corners=False)[0, 0].numpy().reshape(-1)
    order = np.argsort(-r, kind="stable")
    n = r.size
    text = backend.encode_texts(TEXTS).float()
    out = {}
    for mode in ("deletion", "insertion"):
        ys = []
        for i in range(steps + 1):
            k = (i * n) // steps
            m = np.zeros(n, bool)
            m[order[:k]] = True
            m = torch.as_tensor(m.reshape(size))[None, None]
            img = torch.where(m, black, x) if mode == "deletion" else torch.where(m, x, black)
            with torch.no_grad():
                g, _ = backend.encode_image(img)
                s = (backend.logit_scale * g.float() @ text.T + backend.logit_bias).softmax(-1)[0, t]
            ys.append(float(s))
        ys = np.array(ys)
        xs = np.array([(i * n) // steps for i in range(steps + 1)]) / n
        out[mode] = float(np.sum(np.diff(xs) * (ys[1:] + ys[:-1]) / 2))
    return out


def test_faithfulness_matches_direct_loop_and_batch_size(maps: Path, backend, tmp_path: Path) -> None:
    from xaiclip_cli.data.toycells import ToyCellsSource

    a = tmp_path / "a"
    doc = _run(["eval", "faithfulness", *BASE, "--maps", str(maps), "--steps", "8", "--batch-size", "64",
                "--output-dir", str(a), "--bootstrap", "50"])
    assert doc["evaluated"] == 3
    rows = _rows(a / "per_image.csv")
    src = ToyCellsSource()
    for i in range(3):
        z = np.load(maps / f"test_{i:05d}_rand.npz")
        ref = _direct_curves(backend, src.get("test", i).image, z["map"], i % 3, 8)
        r = rows[f"test_{i:05d}_rand"]
        assert float(r["deletion_auc"]) == pytest.approx(ref["deletion"], abs=1e-5)
        assert float(r["insertion_auc"]) == pytest.approx(ref["insertion"], abs=1e-5)
        assert r["target"] == TEXTS[i % 3]
    b = tmp_path / "b"
    _run(["eval", "faithfulness", *BASE, "--maps", str(maps), "--steps", "8", "--batch-size", "5",
          "--output-dir", str(b), "--bootstrap", "50"])
    rb = _rows(b / "per_image.csv")
    for k, r in rows.items():
        assert float(rb[k]["deletion_auc"]) == pytest.approx(float(r["deletion_auc"]), abs=1e-6)
    z = np.load(a / "curves.npz")
    assert z["y_deletion"].shape == (3, 9) and z["x_insertion"][0, -1] == 1.0
    full = json.loads((a / "eval.json").read_text())
    assert full["settings"]["convention"] == "xaiclip" and full["settings"]["baseline"]["kind"] == "black"
    assert full["settings"]["tie_break"] == "stable_low_index" and full["counts"]["forwards"] == 3 * 2 * 9


def test_faithfulness_resume_and_settings_guard(maps: Path, tmp_path: Path) -> None:
    out = tmp_path / "r"
    first = _run(["eval", "faithfulness", *BASE, "--maps", str(maps), "--steps", "4", "--limit", "2",
                  "--output-dir", str(out), "--bootstrap", "0"])
    assert first["evaluated"] == 2
    (out / "eval.json").unlink()  # as if interrupted before the end
    _run(["eval", "faithfulness", *BASE, "--maps", str(maps), "--steps", "4", "--output-dir", str(out),
          "--bootstrap", "0"])
    full = json.loads((out / "eval.json").read_text())
    assert full["counts"]["evaluated"] == 3 and full["counts"]["forwards"] == 1 * 2 * 5  # only the new one
    (out / "eval.json").unlink()
    r = _run(["eval", "faithfulness", *BASE, "--maps", str(maps), "--steps", "6", "--output-dir", str(out)], code=2)
    assert "different settings" in r["stderr"] and "steps: 4 -> 6" in r["stderr"]
    assert "convention" not in r["stderr"]  # only the keys that differ are named
    r = _run(["eval", "faithfulness", *BASE, "--maps", str(maps), "--steps", "4", "--output-dir", str(out)])
    r = _run(["eval", "faithfulness", *BASE, "--maps", str(maps), "--steps", "4", "--output-dir", str(out)], code=2)
    assert "--overwrite" in r["stderr"]


def test_bad_maps_are_skipped_and_counted(tmp_path: Path) -> None:
    d = tmp_path / "maps"
    d.mkdir()
    np.save(d / "test_00000.npy", np.full((8, 8), np.nan))
    np.save(d / "test_00001.npy", np.zeros((2, 3, 4, 5)))  # not a map shape
    np.save(d / "test_00002.npy", np.random.default_rng(1).random((8, 8)))
    np.save(d / "zzz_nomatch.npy", np.random.default_rng(2).random((8, 8)))  # no image for this stem
    np.save(d / "test_00003.npy", np.random.default_rng(3).random((8, 12)))  # stretched: not the image's shape
    out = tmp_path / "o"
    doc = _run(["eval", "faithfulness", *BASE, "--maps", str(d), "--dataset", "toycells", "--text", "a lymphocyte",
                "--text", "a neutrophil", "--target", "best", "--steps", "4", "--output-dir", str(out),
                "--bootstrap", "0"])
    assert doc["evaluated"] == 1 and doc["skipped"] == {"nan": 1, "bad_shape": 2, "missing_image": 1}
    full = json.loads((out / "eval.json").read_text())
    assert full["metrics"]["deletion_auc"]["n"] == 1  # never averaged in


def test_mismatched_counts_and_missing_texts(tmp_path: Path) -> None:
    d = tmp_path / "maps"
    d.mkdir()
    for i in range(3):
        np.save(d / f"img{i}.npy", np.random.default_rng(i).random((8, 8)))
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    from PIL import Image

    for i in range(2):
        Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(imgs / f"img{i}.png")
    r = _run(["eval", "drop", *BASE, "--maps", str(d), "--images", str(imgs), "--text", "a",
              "--output-dir", str(tmp_path / "o")], code=2)
    assert "3 maps" in r["stderr"] and "2 images" in r["stderr"]
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(imgs / "img2.png")
    r = _run(["eval", "drop", *BASE, "--maps", str(d), "--images", str(imgs), "--output-dir", str(tmp_path / "o")],
             code=2)
    assert "--text" in r["stderr"]
    r = _run(["eval", "drop", *BASE, "--maps", str(d), "--images", str(imgs), "--text", "a", "--score", "logit",
              "--output-dir", str(tmp_path / "o")], code=2)
    assert "relative average drop" in r["stderr"]


def test_mufidelity_seeded_and_drop(maps: Path, tmp_path: Path) -> None:
    args = ["eval", "mufidelity", *BASE, "--maps", str(maps), "--samples", "16", "--grid-size", "4",
            "--bootstrap", "0"]
    _run([*args, "--output-dir", str(tmp_path / "m1")])
    _run([*args, "--output-dir", str(tmp_path / "m2"), "--batch-size", "3"])
    a, b = _rows(tmp_path / "m1" / "per_image.csv"), _rows(tmp_path / "m2" / "per_image.csv")
    for k in a:
        assert float(a[k]["mufidelity"]) == pytest.approx(float(b[k]["mufidelity"]), abs=1e-12)
        assert -1.0 <= float(a[k]["mufidelity"]) <= 1.0
    doc = _run(["eval", "drop", *BASE, "--maps", str(maps), "--output-dir", str(tmp_path / "d"), "--bootstrap", "0"])
    m = {r["metric"]: r["mean"] for r in doc["metrics"]}
    rows = _rows(tmp_path / "d" / "per_image.csv")
    y = np.array([float(r["Y"]) for r in rows.values()])
    o = np.array([float(r["O"]) for r in rows.values()])
    assert m["average_drop"] == pytest.approx(np.mean(np.maximum(0, y - o) / y), abs=1e-9)
    assert m["increase_in_confidence"] == pytest.approx(np.mean(o > y), abs=1e-12)


def test_mufidelity_black_min_baseline_matches_direct_loop(maps: Path, backend, tmp_path: Path) -> None:
    import torch.nn.functional as F

    from xaiclip_cli.data.toycells import ToyCellsSource
    from xaiclip_cli.metrics import mufidelity as MF
    from xaiclip_cli.metrics.scoring import image_seed

    out = tmp_path / "bm"
    _run(["eval", "mufidelity", *BASE, "--maps", str(maps), "--samples", "12", "--grid-size", "4", "--limit", "2",
          "--baseline", "black-min", "--seed", "0", "--bootstrap", "0", "--output-dir", str(out)])
    full = json.loads((out / "eval.json").read_text())
    base = full["settings"]["baseline"]
    assert base["kind"] == "black-min" and base["value"] is None and "per-sample minimum" in base["space"]
    rows = _rows(out / "per_image.csv")
    src = ToyCellsSource()
    text = backend.encode_texts(TEXTS).float()
    for i in range(2):
        # Independent: the per-image minimum over channels and pixels of the preprocessed image, by hand
        x = backend.preprocess(src.get("test", i).image).float()[0]
        beta = torch.full_like(x, float(x.min()))
        size = tuple(x.shape[-2:])
        phi = np.load(maps / f"test_{i:05d}_rand.npz")["map"]
        phi = F.interpolate(torch.as_tensor(phi)[None, None], size=size, mode="bilinear",
                            align_corners=False)[0, 0].numpy()
        keep = MF.bernoulli_masks(image_seed(0, f"test_{i:05d}"), 12, 4, size)

        def f(b, t=i % 3):
            with torch.no_grad():
                g, _ = backend.encode_image(b)
                return (backend.logit_scale * g.float() @ text.T + backend.logit_bias).softmax(-1)[:, t]

        rho = MF.mufidelity_image(f, x, phi, beta, keep, "spearman")[0]
        assert float(rows[f"test_{i:05d}_rand"]["mufidelity"]) == pytest.approx(rho, abs=1e-6)
    # the same masks with the default black baseline give other values (the baseline is really used)
    _run(["eval", "mufidelity", *BASE, "--maps", str(maps), "--samples", "12", "--grid-size", "4", "--limit", "2",
          "--seed", "0", "--bootstrap", "0", "--output-dir", str(tmp_path / "b")])
    other = _rows(tmp_path / "b" / "per_image.csv")
    assert any(other[k]["mufidelity"] != rows[k]["mufidelity"] for k in rows)
    r = _run(["eval", "mufidelity", *BASE, "--maps", str(maps), "--baseline", "grey", "--output-dir",
              str(tmp_path / "g")], code=2)
    assert "black-min, white-max" in r["stderr"] and not (tmp_path / "g").exists()


def test_sanity_on_toy_vit(tmp_path: Path) -> None:
    out = tmp_path / "s"
    doc = _run(["eval", "sanity", "--backend", "toy", "--model", "toy-vit", "--device", "cpu", "--threads", "1",
                "--dataset", "toycells", "--limit", "3", "--method", "layercam", "--checks", "image,prompt",
                "--pairs", "10", "--bootstrap", "50", "--output-dir", str(out)])
    full = json.loads((out / "eval.json").read_text())
    checks = full["extra"]["sanity"]
    assert set(checks) == {"image_cascading", "prompt_other_text", "prompt_random_tokens"}
    steps = checks["image_cascading"]["steps"]
    assert steps[0] == "trained" and steps[1] == "image_proj"  # top-down: projection first
    assert checks["image_cascading"]["ssim_mean"][0] == 1.0
    z = np.load(out / "curves.npz")
    assert z["sim_image_cascading_ssim"].shape == (3, len(steps))
    v = checks["image_cascading"]["verdict"]["ssim"]
    assert v["pass"] == (v["final_mean"] <= full["extra"]["band"]["ssim"])
    assert any(r["check"] == "image_cascading" for r in doc["tables"]["verdicts"])
    assert (out / "sanity.png").stat().st_size > 1000
    r = _run(["eval", "sanity", *BASE, "--dataset", "toycells", "--limit", "1", "--output-dir",
              str(tmp_path / "one")], code=2)
    assert "at least two images" in r["stderr"]


def test_compare_two_methods_paired(maps: Path, tmp_path: Path) -> None:
    other = tmp_path / "maps2"
    other.mkdir()
    for f in maps.glob("*.json"):
        side = json.loads(f.read_text())
        side["method"] = "inv"
        z = np.load(f.with_suffix(".npz"))
        stem = f.stem.replace("_rand", "_inv")
        np.savez(other / f"{stem}.npz", raw=-z["map"], map=-z["map"])
        (other / f"{stem}.json").write_text(json.dumps(side))
    for d, name in ((maps, "a"), (other, "b")):
        _run(["eval", "faithfulness", *BASE, "--maps", str(d), "--steps", "4", "--output-dir", str(tmp_path / name),
              "--bootstrap", "0"])
    doc = _run(["eval", "compare", "--results", str(tmp_path / "a"), "--results", str(tmp_path / "b"),
                "--output-dir", str(tmp_path / "c"), "--bootstrap", "100"])
    full = json.loads((tmp_path / "c" / "compare.json").read_text())
    ra, rb = _rows(tmp_path / "a" / "per_image.csv"), _rows(tmp_path / "b" / "per_image.csv")
    diff = [float(ra[f"test_{i:05d}_rand"]["deletion_auc"]) - float(rb[f"test_{i:05d}_inv"]["deletion_auc"])
            for i in range(3)]
    m = full["metrics"]["deletion_auc (A - B)"]
    assert m["mean"] == pytest.approx(np.mean(diff), abs=1e-9) and m["n"] == 3 and 0 < m["wilcoxon_p"] <= 1
    assert doc["images"] == 3
    _run(["eval", "faithfulness", *BASE, "--maps", str(other), "--steps", "6", "--output-dir", str(tmp_path / "b6"),
          "--bootstrap", "0"])
    r = _run(["eval", "compare", "--results", str(tmp_path / "a"), "--results", str(tmp_path / "b6"),
              "--output-dir", str(tmp_path / "c2")], code=2)
    assert "different settings" in r["stderr"] and "steps" in r["stderr"]


def test_sanity_attrib_all_checks_on_toy_vit(tmp_path: Path) -> None:
    """--method attrib: SMDL rank maps at every step of every check; the options are recorded; seeded."""
    args = ["eval", "sanity", "--backend", "toy", "--model", "toy-vit", "--device", "cpu", "--threads", "1",
            "--dataset", "toycells", "--limit", "2", "--method", "attrib", "--attrib-grid", "2", "--pairs", "4",
            "--bootstrap", "20"]
    out = tmp_path / "s"
    _run([*args, "--output-dir", str(out)])
    full = json.loads((out / "eval.json").read_text())
    st = full["settings"]
    assert st["method"] == "attrib" and st["cam_score"] is None and st["layer"] is None
    assert {k: st["attrib"][k] for k in ("division", "grid", "search", "fill", "score")} == {
        "division": "grid", "grid": 2, "search": "lazy", "fill": "black", "score": "softmax"}
    assert st["map_resolution"] == ["input size (rank map of the SMDL regions)"]
    checks = full["extra"]["sanity"]
    assert set(checks) == {"image_cascading", "text_cascading", "image_independent", "prompt_other_text",
                           "prompt_random_tokens"}
    assert checks["text_cascading"]["steps"] == ["trained", "text_proj", "text.encoder.layer.1",
                                                 "text.encoder.layer.0", "text.embeddings"]
    for c in checks.values():
        assert c["ssim_mean"][0] == 1.0 and c["spearman_mean"][0] == 1.0
    z = np.load(out / "curves.npz")
    assert z["sim_image_cascading_ssim"].shape == (2, 9)
    assert full["counts"]["forwards"] > 0
    again = tmp_path / "again"
    _run([*args, "--checks", "image", "--output-dir", str(again)])
    z2 = np.load(again / "curves.npz")
    np.testing.assert_array_equal(z2["sim_image_cascading_ssim"], z["sim_image_cascading_ssim"])  # same seed


def test_sanity_attrib_bad_inputs_write_nothing(tmp_path: Path) -> None:
    base = ["eval", "sanity", *BASE, "--dataset", "toycells", "--limit", "2", "--method", "attrib"]
    out = tmp_path / "o"
    r = _run([*base, "--target-layer", "layer4", "--output-dir", str(out)], code=2)
    assert "--target-layer does not apply to --method attrib" in r["stderr"]
    r = _run([*base, "--attrib-grid", "65", "--output-dir", str(out)], code=2)  # toy-cnn inputs are 64 px
    assert "--attrib-grid must be between 2 and the model input size 64, got 65" in r["stderr"]
    r = _run([*base, "--attrib-division", "slico", "--attrib-region-size", "40", "--output-dir", str(out)], code=2)
    assert "--attrib-region-size 40 does not fit a 64px input" in r["stderr"]
    r = _run([*base, "--attrib-region-size", "big", "--output-dir", str(out)], code=2)
    assert "attrib_region_size" in r["stderr"]
    r = _run(["eval", "sanity", *BASE, "--dataset", "toycells", "--method", "atrib", "--output-dir", str(out)], code=2)
    assert "unknown --method 'atrib'" in r["stderr"] and "or attrib" in r["stderr"]
    r = runner.invoke(app, [*base, "--attrib-division", "sam", "--output-dir", str(out)])  # click's choice error
    assert r.exit_code == 2 and "'grid', 'slico'" in r.stderr
    assert not out.exists()


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_sanity_on_tiny_hf_models(kind: str, tmp_path: Path) -> None:
    """`--backend hf` on a tiny transformers CLIP/SigLIP saved offline: HF tower names, step 0 = 1, eval.json."""
    from tests.models.conftest import build_tiny_clip, build_tiny_siglip

    torch.manual_seed(0)
    model_dir = (build_tiny_clip if kind == "clip" else build_tiny_siglip)(tmp_path / kind)
    out = tmp_path / "s"
    _run(["eval", "sanity", "--backend", "hf", "--model", str(model_dir), "--device", "cpu", "--threads", "1",
          "--dataset", "toycells", "--limit", "2", "--method", "layercam", "--checks", "image,text",
          "--pairs", "4", "--bootstrap", "20", "--output-dir", str(out)])
    full = json.loads((out / "eval.json").read_text())
    checks = full["extra"]["sanity"]
    head, proj = ("visual_projection", "text_projection") if kind == "clip" else ("visual.head", "text.head")
    image_steps = checks["image_cascading"]["steps"]
    assert image_steps[:5] == ["trained", head, "visual.post_layernorm", "visual.encoder.layers.1",
                               "visual.encoder.layers.0"]
    assert image_steps[-1] == "visual.embeddings"
    assert checks["text_cascading"]["steps"] == ["trained", proj, "text.final_layer_norm", "text.encoder.layers.0",
                                                 "text.embeddings"]
    for c in checks.values():
        assert c["ssim_mean"][0] == 1.0 and c["spearman_mean"][0] == 1.0
        assert min(c["ssim_mean"]) < 1.0  # the maps do change along the way
    assert full["model"]["backend"] == "hf" and full["settings"]["layer"]
