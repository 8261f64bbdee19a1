"""`xaiclip cam run|layers|methods` end to end on a tiny backend: legacy flags, texts files, outputs, resume, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from xaiclip_cli.cli.main import app


@pytest.fixture(autouse=True)
def tiny_backends(monkeypatch):
    """Route the toy and checkpoint backends to tiny random models (the shipped toy models are not needed)."""
    import xaiclip_cli.models.registry as registry

    monkeypatch.setitem(registry._BACKENDS, "toy", "tests.explain.tiny_backends:load_tiny")
    monkeypatch.setitem(registry._BACKENDS, "checkpoint", "tests.explain.tiny_backends:load_tiny")


def _write_images(folder: Path, n: int, sub: str = "", grey: bool = False) -> list[Path]:
    d = folder / sub
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(sub) + n)
    out = []
    for i in range(n):
        arr = rng.integers(0, 256, (48, 56) if grey else (48, 56, 3), dtype=np.uint8)
        p = d / f"img{i}.png"
        Image.fromarray(arr).save(p)
        out.append(p)
    return out


def _run(args: list[str]):
    return CliRunner().invoke(app, args)


def test_legacy_flags_single_image(tmp_path) -> None:
    (img,) = _write_images(tmp_path / "in", 1)
    out = tmp_path / "out"
    r = _run(["cam", "run", "--image-path", str(img), "--class-texts", "a round cell", "--class-texts", "a dog",
              "--target-text-idx", "1", "--output-dir", str(out), "--output-name", "legacy", "--cpu",
              "--image-encoder", "resnet18", "--text-encoder", "bert-base-chinese", "--embed-dim", "16",
              "--img-size", "64", "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert res["maps"] == 1 and res["layer"] == "trunk.layer4" and res["method"] == "gradcam"
    for f in ("legacy.png", "legacy_overlay.png", "legacy.npz", "legacy.json", "manifest.jsonl", "config.yaml"):
        assert (out / f).is_file(), f
    side = json.loads((out / "legacy.json").read_text())
    assert side["target_index"] == 1 and side["target_name"] == "a dog" and side["target_rule"] == "index"
    assert side["device"] == "cpu" and side["image"]["path"] == str(img)
    npz = np.load(out / "legacy.npz")
    assert npz["raw"].shape == (2, 2) and npz["map"].shape == (64, 64)
    np.testing.assert_allclose(npz["map"].max(), side["map_max"], rtol=1e-6)


def test_texts_file_folder_mirroring_and_resume(tmp_path) -> None:
    root = tmp_path / "in"
    _write_images(root, 2, "a")
    _write_images(root, 1, "b", grey=True)
    texts = tmp_path / "texts.json"
    texts.write_text(json.dumps({"neutrophil": "a cell with a lobed nucleus", "lymphocyte": "a small round cell"}))
    out = tmp_path / "out"
    args = ["cam", "run", "--images", str(root), "--recursive", "--texts-file", str(texts), "--output-dir", str(out),
            "--method", "gradcam++", "--target", "all", "--batch-size", "2", "--json"]
    r = _run(args)
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert res["images"] == 3 and res["maps"] == 6 and res["skipped"] == 0
    assert (out / "a" / "img0_gradcampp_neutrophil.npz").is_file()
    assert (out / "b" / "img0_gradcampp_lymphocyte.json").is_file()  # same stem, mirrored folder: no collision
    side = json.loads((out / "b" / "img0_gradcampp_lymphocyte.json").read_text())
    assert side["channels_in"] == 1 and side["texts"][1] == {"name": "lymphocyte", "prompt": "a small round cell"}
    assert len((out / "manifest.jsonl").read_text().splitlines()) == 6
    r2 = _run(args)
    assert r2.exit_code == 0 and json.loads(r2.stdout)["skipped"] == 3
    assert json.loads(r2.stdout)["maps"] == 0


def test_output_name_with_many_images_is_rejected(tmp_path) -> None:
    imgs = _write_images(tmp_path / "in", 2)
    r = _run(["cam", "run", "--images", str(imgs[0]), "--images", str(imgs[1]), "--text", "a", "--output-name", "x",
              "--output-dir", str(tmp_path / "out")])
    assert r.exit_code == 2
    assert "--output-name is only for a single image" in r.output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--text", "a", "--texts-file", "t.json"], "either --text or --texts-file"),
        (["--target", "nope", "--text", "a"], "is not best, all, an index"),
        (["--method", "magic", "--text", "a"], "magic"),
        (["--text", "a", "--colormap", "rainbowz"], "not a matplotlib colormap"),
        (["--text", "a", "--model-path", "missing.pt"], "not found"),
        (["--text", "a", "--legrad-layers", "-1"], "legrad_layers"),
        (["--text", "a", "--align", "sideways"], "align"),
        (["--text", "a", "--score", "loud"], "score"),
    ],
)
def test_bad_inputs_exit_2(tmp_path, extra, message) -> None:
    (img,) = _write_images(tmp_path / "in", 1)
    r = _run(["cam", "run", "--images", str(img), "--output-dir", str(tmp_path / "o"), *extra])
    assert r.exit_code == 2, r.output
    assert message in r.output


def test_raw_state_dict_checkpoint_explained(tmp_path) -> None:
    (img,) = _write_images(tmp_path / "in", 1)
    pt = tmp_path / "clip.pt"
    pt.write_bytes(b"x")
    r = _run(["cam", "run", "--images", str(img), "--text", "a", "--model-path", str(pt)])
    assert r.exit_code == 2 and "export folder" in r.output


def test_dataset_and_no_figure(tmp_path) -> None:
    out = tmp_path / "out"
    r = _run(["cam", "run", "--dataset", "toycells", "--limit", "2", "--text", "a cell", "--text", "a dog",
              "--no-figure", "--no-raw", "--method", "eigencam", "--output-dir", str(out), "--json"])
    assert r.exit_code == 0, r.output
    names = sorted(p.name for p in (out / "test").iterdir())
    assert "test_00000_eigencam_a_cell.json" in names or "test_00000_eigencam_a_dog.json" in names
    assert not any(n.endswith(".npz") for n in names) and not any(n.endswith("dog.png") for n in names)


def test_layers_and_methods(tmp_path) -> None:
    r = _run(["cam", "layers", "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert res["chosen"] == "trunk.layer4"
    chosen = [c for c in res["candidates"] if c["chosen"]]
    assert len(chosen) == 1 and chosen[0]["layout"] == "NCHW" and chosen[0]["grad_norm"] > 0
    r = _run(["cam", "layers", "--model", "tiny-vit", "--json"])
    rows = {c["name"]: c for c in json.loads(r.stdout)["candidates"]}
    assert rows["trunk.blocks.1.norm1"]["chosen"] == "*" and rows["trunk.blocks.1.norm1"]["prefix"] == 1
    assert rows["trunk.blocks"]["grad_norm"] == 0.0  # the last block's output: zero gradient at patch tokens
    r = _run(["cam", "methods", "--json"])
    assert r.exit_code == 0
    assert [m["method"] for m in json.loads(r.stdout)["methods"]][:2] == ["gradcam", "hirescam"]


def test_torchrun_rank_takes_every_world_th_image(tmp_path, monkeypatch) -> None:
    _write_images(tmp_path / "in", 3)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    out = tmp_path / "out"
    r = _run(["cam", "run", "--images", str(tmp_path / "in"), "--text", "a", "--text", "b", "--target", "0",
              "--no-figure", "--output-dir", str(out), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["images"] == 1
    assert [p.name for p in out.glob("*.json")] == ["img1_gradcam_a.json"]
    assert (out / "manifest.rank1.jsonl").is_file() and not (out / "manifest.jsonl").exists()


def test_gpu_worker_shard(tmp_path) -> None:
    from xaiclip_cli.cli.cam import cam_worker
    from xaiclip_cli.config.cam import CamSettings

    _write_images(tmp_path / "in", 3)
    s = CamSettings(images=[tmp_path / "in"], text=["a", "b"], output_dir=tmp_path / "out", figure=False)
    s.output_dir.mkdir()
    seen = []
    res = cam_worker({"settings": s.model_dump(mode="json"), "todo": [0, 1, 2]}, 0, 2, "cpu", seen.append)
    assert res["images"] == 2 and res["maps"] == 2 and sum(seen) == 2
    assert sorted(p.name.split("_")[0] for p in s.output_dir.glob("*.json")) == ["img0", "img2"]
    assert len((s.output_dir / ".manifest.rank0.jsonl").read_text().splitlines()) == 2


@pytest.mark.slow
def test_two_worker_processes_on_cpu(tmp_path) -> None:
    from xaiclip_cli.models.toy import toy_dir

    if not (toy_dir("toy-vit") / "xaiclip_clip.json").is_file():
        pytest.skip("shipped toy-vit not available")
    out = tmp_path / "out"
    r = _run(["cam", "run", "--dataset", "toycells", "--limit", "3", "--gpus", "0,1", "--device", "cpu",
              "--text", "a cell", "--text", "a dog", "--no-figure", "--output-dir", str(out), "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert res["images"] == 3 and res["maps"] == 3 and res["layer"] == "norm"
    assert len((out / "manifest.jsonl").read_text().splitlines()) == 3
    assert not list(out.glob(".manifest.rank*"))
    assert len(list((out / "test").glob("*.npz"))) == 3


def test_dot_score_is_explained_and_recorded(tmp_path) -> None:
    (img,) = _write_images(tmp_path / "in", 1)
    out = tmp_path / "out"
    r = _run(["cam", "run", "--images", str(img), "--text", "a round cell", "--text", "a dog", "--score", "dot",
              "--output-dir", str(out), "--output-name", "d", "--json"])
    assert r.exit_code == 0, r.output
    side = json.loads((out / "d.json").read_text())
    assert side["score"] == "dot"
    # dot ranks the texts as the logits do, on another scale (|g| instead of exp(τ)).
    assert int(np.argmax(side["scores"])) == int(np.argmax(side["logits"]))
    assert not np.allclose(side["scores"], side["logits"])


def test_dot_score_without_unnormalised_embedding_exits_2(tmp_path, monkeypatch) -> None:
    from tests.explain import tiny_backends as tb

    def missing(self, pixels):
        raise NotImplementedError(f"backend {self.name} does not expose the unnormalised image embedding")

    monkeypatch.setattr(tb.TinyBackend, "encode_image_unnormalized", missing)
    (img,) = _write_images(tmp_path / "in", 1)
    r = _run(["cam", "run", "--images", str(img), "--text", "a", "--score", "dot", "--output-dir", str(tmp_path / "o")])
    assert r.exit_code == 2, r.output
    assert "--score dot" in r.output and "use --score logit" in r.output


def test_dataset_without_texts_uses_its_classes(tmp_path) -> None:
    out = tmp_path / "out"
    r = _run(["cam", "run", "--dataset", "toycells", "--limit", "1", "--target", "all", "--no-figure",
              "--output-dir", str(out), "--json"])
    assert r.exit_code == 0, r.output
    side = json.loads((out / "test" / "test_00000_gradcam_monocyte.json").read_text())
    # The shipped toycells prompt set's first label template, one text per class in class order.
    classes = ("lymphocyte", "neutrophil", "eosinophil", "basophil", "monocyte")
    assert side["texts"] == [{"name": c, "prompt": f"a microscopic image of a {c} cell"} for c in classes]


def test_folder_without_texts_still_exits_2(tmp_path) -> None:
    (img,) = _write_images(tmp_path / "in", 1)
    r = _run(["cam", "run", "--images", str(img), "--output-dir", str(tmp_path / "o")])
    assert r.exit_code == 2 and "no texts" in r.output


# --- issue #13: names after source files, no config replaced, exit 1 when nothing finished -----------------------
def test_folder_dataset_outputs_named_after_files_and_path_recorded(tmp_path) -> None:
    root = tmp_path / "ds"
    _write_images(root, 2, "cat")
    _write_images(root, 1, "dog")
    out = tmp_path / "out"
    r = _run(["cam", "run", "--dataset", f"folder:{root}", "--split", "train", "--text", "a", "--text", "b",
              "--target", "0", "--no-figure", "--output-dir", str(out), "--json"])
    assert r.exit_code == 0, r.output
    sides = sorted((out / "train").rglob("*.json"))
    assert [p.relative_to(out).as_posix() for p in sides] == [
        "train/cat/img0_gradcam_a.json", "train/cat/img1_gradcam_a.json", "train/dog/img0_gradcam_a.json"]
    side = json.loads(sides[2].read_text())
    assert side["image"]["path"] == str(root / "dog" / "img0.png") and side["image"]["index"] == 2
    lines = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    assert sorted(x["image"]["path"] for x in lines) == sorted(str(p) for p in sorted(root.rglob("*.png")))


def test_second_run_with_other_settings_keeps_first_config(tmp_path) -> None:
    (img,) = _write_images(tmp_path / "in", 1)
    out = tmp_path / "out"
    base = ["cam", "run", "--images", str(img), "--text", "a", "--text", "b", "--no-figure", "--output-dir", str(out)]
    assert _run([*base, "--method", "gradcam"]).exit_code == 0
    first = (out / "config.yaml").read_text()
    assert _run([*base, "--method", "gradcam"]).exit_code == 0  # a resume: same file, nothing new
    assert sorted(p.name for p in out.glob("config*.yaml")) == ["config.yaml"]
    assert _run([*base, "--method", "hirescam"]).exit_code == 0
    assert (out / "config.yaml").read_text() == first
    others = list(out.glob("config-*.yaml"))
    assert len(others) == 1 and "method: hirescam" in others[0].read_text()
    assert _run([*base, "--method", "hirescam"]).exit_code == 0  # same second config: same name again
    assert len(list(out.glob("config-*.yaml"))) == 1


def test_nothing_readable_exits_1_and_partial_exits_3(tmp_path) -> None:
    bad = tmp_path / "in" / "bad.png"
    bad.parent.mkdir()
    bad.write_bytes(b"not an image")
    r = _run(["cam", "run", "--images", str(bad), "--text", "a", "--output-dir", str(tmp_path / "o"), "--json"])
    assert r.exit_code == 1, r.output
    assert json.loads(r.stdout)["failed"] == 1
    _write_images(tmp_path / "in", 1)
    r = _run(["cam", "run", "--images", str(tmp_path / "in"), "--text", "a", "--output-dir", str(tmp_path / "o2"),
              "--json"])
    assert r.exit_code == 3, r.output
    assert json.loads(r.stdout)["images"] == 1


def test_gpus_without_cuda_exit_2_naming_option(tmp_path, monkeypatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    (img,) = _write_images(tmp_path / "in", 1)
    r = _run(["cam", "run", "--images", str(img), "--text", "a", "--gpus", "0,1", "--output-dir", str(tmp_path / "o")])
    assert r.exit_code == 2, r.output
    assert "--gpus 0,1" in r.output and "CUDA is not available" in r.output


def test_16bit_png_and_dicom_images_are_decoded_and_recorded(tmp_path) -> None:
    pydicom = pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file

    src = tmp_path / "in"
    src.mkdir()
    ramp = np.tile(np.linspace(30000, 31000, 56).astype(np.uint16), (48, 1))  # Pillow's 8-bit view: all 255
    Image.fromarray(ramp).save(src / "ramp16.png")
    ct = get_testdata_file("CT_small.dcm", download=False)
    (src / "ct.dcm").write_bytes(Path(ct).read_bytes())
    out = tmp_path / "out"
    r = _run(["cam", "run", "--images", str(src), "--text", "a cell", "--text", "a dog", "--output-dir", str(out),
              "--cpu", "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert res["images"] == 2 and res["failed"] == 0
    sides = {Path(row["image"]).name: json.loads((out / row["file"]).read_text()) for row in res["rows"]}
    ramp_side, ct_side = sides["ramp16.png"]["image"], sides["ct.dcm"]["image"]
    assert ramp_side["intensity"]["kind"] == "minmax" and ramp_side["intensity"]["source_dtype"] == "uint16"
    assert (ramp_side["intensity"]["min"], ramp_side["intensity"]["max"]) == (30000.0, 31000.0)
    assert ct_side["intensity"]["format"] == "dicom" and ct_side["intensity"]["rescale"]["intercept"] == -1024.0
    assert sides["ct.dcm"]["channels_in"] == 1

    win = _run(["cam", "run", "--images", str(src / "ct.dcm"), "--text", "a cell", "--output-dir",
                str(tmp_path / "w"), "--cpu", "--intensity", "window:40,400", "--json"])
    assert win.exit_code == 0, win.output
    row = json.loads(win.stdout)["rows"][0]
    assert json.loads((tmp_path / "w" / row["file"]).read_text())["image"]["intensity"]["params"] == {
        "center": 40.0, "width": 400.0}
    assert pydicom is not None


@pytest.mark.parametrize(("setup", "needle"), [
    ("vol", "brain.nii.gz: a 3-D volume"),
    ("intensity", "invalid setting 'intensity'"),
])
def test_volumes_and_bad_intensity_exit_2(tmp_path, setup: str, needle: str) -> None:
    (img,) = _write_images(tmp_path / "in", 1)
    vol = tmp_path / "in" / "brain.nii.gz"
    vol.write_bytes(b"\x1f\x8b")
    args = ["cam", "run", "--text", "a cell", "--output-dir", str(tmp_path / "o"), "--cpu"]
    args += ["--images", str(vol)] if setup == "vol" else ["--images", str(img), "--intensity", "window:1"]
    r = _run(args)
    assert r.exit_code == 2, r.output
    assert needle in r.output and "Traceback" not in r.output


def test_no_arguments_runs_on_the_embedded_default(tmp_path) -> None:
    out = tmp_path / "o"
    r = _run(["cam", "run", "--output-dir", str(out), "--no-figure", "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert res["images"] == 4 and res["failed"] == 0
    side = json.loads((out / res["rows"][0]["file"]).read_text())
    assert side["image"]["dataset"] == "toycells" and len(side["texts"]) == 5  # one text per toy-cells class
