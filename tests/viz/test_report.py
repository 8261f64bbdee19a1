"""The HTML report: rendered from a real toy `cam run` plus eval/attrib folders, opened in headless Chromium.

The browser test checks what a reader on an air-gapped laptop depends on: every image decodes, the tables hold the
values of eval.json, no console error, no request leaves the file, sorting reorders the gallery, the page is not
blank. Skipped (with the reason) only when chromium/chromedriver/selenium are absent.
"""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.store.test_reader_fixtures import build_store
from tests.viz.report_inputs import (
    make_cam_run,
    numeric_leaves,
    run_eval,
    write_attrib_run,
    write_faithfulness_eval,
)
from xaiclip_cli.errors import UsageError
from xaiclip_cli.viz.report import (
    CHROMIUM_FLAGS,
    build_report,
    find_chromium,
    lower_is_better,
    order_items,
    screenshot,
)
from xaiclip_cli.viz.report_sections import render_dict, stats_table
from xaiclip_cli.viz.report_sources import Item, detect_kind
from xaiclip_cli.viz.thumbs import draw_contour, region_order_image, sparkline_svg

KEYS = [f"test_{i:05d}" for i in range(3)]
TOY = ["--backend", "toy", "--model", "toy-cnn", "--device", "cpu", "--threads", "1"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("report_inputs")
    cam = make_cam_run(root / "cam", n=len(KEYS))
    store = Path(build_store(root / "store.h5").path)
    attrib = write_attrib_run(root / "attrib", KEYS, root / "attrib_images")
    docs = {
        "eval_gradcam": write_faithfulness_eval(root / "eval_gradcam", KEYS, seed=0),
        "eval_scorecam": write_faithfulness_eval(root / "eval_scorecam", KEYS, seed=5, method="scorecam"),
        "loc": run_eval("localization", "--maps", str(cam), "--output-dir", str(root / "loc"), "--bootstrap", "200"),
        "smdl": run_eval("smdl", "--results", str(attrib), "--output-dir", str(root / "smdl"), "--bootstrap", "200"),
        "zs": run_eval("zeroshot", "--h5", str(store), "--output-dir", str(root / "zs"), "--bootstrap", "100"),
        "faith": run_eval("faithfulness", *TOY, "--maps", str(cam), "--steps", "8", "--output-dir",
                          str(root / "faith"), "--bootstrap", "100"),
        "sanity": run_eval("sanity", *TOY, "--dataset", "toycells", "--limit", "3", "--checks", "image,prompt",
                           "--pairs", "10", "--output-dir", str(root / "sanity"), "--bootstrap", "50"),
    }
    runs = [store, cam, *(root / k for k in docs), attrib]
    return {"root": root, "runs": runs, "docs": docs, "cam": cam, "attrib": attrib, "store": store}


def per_image(folder: Path, column: str) -> dict[str, float]:
    """{image key: value} of one per_image.csv column (ok rows)."""
    with open(folder / "per_image.csv", newline="", encoding="utf-8") as fh:
        return {Path(r["image"]).stem: float(r[column]) for r in csv.DictReader(fh) if r["status"] == "ok"}


@pytest.fixture(scope="module")
def report(inputs: dict[str, Any]) -> dict[str, Any]:
    out = inputs["root"] / "report.html"
    summary = build_report(inputs["runs"], out)
    return {"out": out, "summary": summary, "html": out.read_text(encoding="utf-8")}


# ------------------------------------------------------------------------------------------- without a browser
def test_report_joins_every_input_by_image(report: dict[str, Any], inputs: dict[str, Any]) -> None:
    s = report["summary"]
    assert [i["kind"] for i in s["inputs"]] == ["store", "cam", *["eval"] * 7, "attrib"]
    assert s["gallery_items"] == len(KEYS) and s["gallery_shown"] == len(KEYS)
    # Metric names two inputs share are told apart by folder; names only one input has stay as they are.
    for name in ("eval_gradcam: insertion_auc", "eval_scorecam: deletion_auc", "smdl: insertion_auc",
                 "faith: insertion_auc", "image_cascading_ssim_final",
                 "gradcam score", "attrib insertion AUC (recorded)", "pointing_hit", "energy"):
        assert name in s["metrics"], name
    assert s["sort_by"] == "eval_gradcam: insertion_auc"
    # Protocol (a) (smdl) and (b) (faithfulness) curves never share a panel; sanity curves get their own.
    for panel in ("insertion (faithfulness)", "insertion (smdl)", "deletion (smdl)", "sim_image_cascading_ssim",
                  "sim_prompt_other_text_spearman", "recorded insertion (attrib)"):
        assert panel in s["curve_panels"], panel
    # Localisation rows name the cam maps (test/test_00000_gradcam_...): joined to the cam image they explain.
    loc = per_image(inputs["root"] / "loc", "energy")
    assert len(loc) == len(KEYS) and all(k.startswith(tuple(KEYS)) for k in loc)
    html = report["html"]
    for key in KEYS:
        card = re.search(rf'data-key="{key}" data-m="([^"]+)"', html)
        assert card is not None
        metrics = json.loads(card.group(1).replace("&quot;", '"'))
        want = next(v for k, v in loc.items() if k.startswith(key))
        assert metrics["energy"] == pytest.approx(want, rel=1e-9)
    # Input + overlay (cam), region order (attrib) per image, one mean-curve figure; the mask outline is drawn.
    assert len(re.findall(r'<img [^>]*src="data:image/', html)) == 3 * len(KEYS) + 1
    assert html.count("<figcaption title=\"input + mask\">") == len(KEYS)
    assert "Method vs method" in html and "confusion" in html and "top_concepts" in html
    assert not re.search(r"https?://", html)
    assert "Content-Security-Policy" in html and "default-src 'none'" in html


def test_gallery_starts_worst_first(report: dict[str, Any], inputs: dict[str, Any]) -> None:
    ins = per_image(inputs["root"] / "eval_gradcam", "insertion_auc")
    cards = re.findall(r'<div class="card" data-key="([^"]+)"', report["html"])
    assert cards == sorted(ins, key=ins.get)  # insertion: low is bad, so ascending


def test_attrib_recorded_auc_matches_smdl_axes(report: dict[str, Any], inputs: dict[str, Any]) -> None:
    """attrib's per-image AUC uses smdl.results.recorded_auc's axes (metrics.md §1), computed here by hand."""
    from sklearn.metrics import auc

    npz = next((inputs["attrib"] / "items").rglob("*.npz"))
    with np.load(npz) as z:
        cons, colla = z["consistency"].astype(float), z["collaboration"].astype(float)
        want_ins = auc(z["area_ins"].astype(float), np.concatenate([[1 - colla[-1]], cons]))
        want_del = auc(z["area_del"].astype(float), np.concatenate([[cons[-1]], 1 - colla]))
    card = re.search(rf'data-key="{npz.stem}" data-m="([^"]+)"', report["html"])
    assert card is not None
    metrics = json.loads(card.group(1).replace("&quot;", '"'))
    assert metrics["attrib insertion AUC (recorded)"] == pytest.approx(want_ins, abs=1e-6)
    assert metrics["attrib deletion AUC (recorded)"] == pytest.approx(want_del, abs=1e-6)
    # ... and `eval smdl` on the same folder agrees.
    assert metrics["smdl: insertion_auc"] == pytest.approx(want_ins, abs=1e-6)
    assert metrics["smdl: deletion_auc"] == pytest.approx(want_del, abs=1e-6)


def test_stats_render_mean_and_interval() -> None:
    html = stats_table({"insertion_auc": {"mean": 0.5, "ci_low": 0.4, "ci_high": 0.6, "n": 10}})
    assert 'data-value="0.5"' in html and 'data-value="0.4"' in html and 'data-value="0.6"' in html
    assert "95 % interval" in html and ">n<" in html
    # No interval (B = 0 or one image): a dash, no invented bounds.
    html = stats_table({"m": {"mean": 0.5, "ci_low": None, "ci_high": None}})
    assert "<td>-</td>" in html


def test_unknown_keys_render_generically() -> None:
    doc = {"new_metric": {"mean": 1.25, "ci": [1.0, 1.5]}, "notes": "x<y", "nested": {"a": {"b": {"c": 7}}},
           "records": [{"method": "m1", "p": 0.03}, {"method": "m2", "p": 0.5}], "flags": [True, False]}
    html = render_dict(doc, None)
    for v in ("1.25", "1.0", "1.5", "7", "0.03", "0.5"):
        assert f'data-value="{v}"' in html, v
    assert "x&lt;y" in html and "<y" not in html  # escaped


def test_lower_is_better_and_order() -> None:
    assert lower_is_better("deletion_auc") and lower_is_better("average drop")
    assert not lower_is_better("insertion_auc") and not lower_is_better("pointing_game")
    items = [Item("a", metrics={"deletion_auc": 0.1}), Item("b", metrics={"deletion_auc": 0.9}), Item("c")]
    assert [i.key for i in order_items(items, "deletion_auc")] == ["b", "a", "c"]  # worst (high) first, missing last


def test_region_order_and_contour_pictures() -> None:
    from xaiclip_cli.viz.colormap import apply_colormap

    labels = np.repeat(np.repeat(np.arange(4).reshape(2, 2), 8, axis=0), 8, axis=1)
    pic = region_order_image(labels, [3, 0], None)
    first = apply_colormap(np.zeros((1, 1)), "viridis_r")[0, 0]
    second = apply_colormap(np.ones((1, 1)), "viridis_r")[0, 0]
    assert np.array_equal(pic[12, 12], first) and np.array_equal(pic[4, 4], second)
    assert np.array_equal(pic[4, 12], [128, 128, 128])  # never selected
    img = np.zeros((32, 32, 3), np.uint8)
    mask = np.zeros((32, 32), np.uint8)
    mask[8:24, 8:24] = 1
    out = draw_contour(img, mask)
    drawn = out.any(axis=2)
    assert drawn[8, 8:24].all() and drawn[8:24, 8].all() and not drawn[16, 16] and not drawn[2, 2]
    svg = sparkline_svg([("insertion", np.linspace(0, 1, 5), np.linspace(0, 1, 5))])
    assert svg.count("<polyline") == 1 and "http" not in svg


def test_bad_inputs(tmp_path: Path, inputs: dict[str, Any]) -> None:
    with pytest.raises(UsageError, match="not found"):
        detect_kind(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="not a cam, attrib or eval output folder"):
        detect_kind(tmp_path / "empty")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(UsageError, match="not a store file"):
        detect_kind(tmp_path / "notes.txt")
    bad = tmp_path / "bad_eval"
    bad.mkdir()
    (bad / "eval.json").write_text("{not json")
    with pytest.raises(UsageError, match="eval.json: not readable JSON"):
        build_report([bad], tmp_path / "r.html")
    (bad / "eval.json").write_text("[1, 2]")
    with pytest.raises(UsageError, match="expected a JSON object"):
        build_report([bad], tmp_path / "r.html")
    with pytest.raises(UsageError, match="no inputs"):
        build_report([], tmp_path / "r.html")
    with pytest.raises(UsageError, match="no such per-image metric"):
        build_report([inputs["cam"]], tmp_path / "r.html", sort_by="nope")
    (tmp_path / "exists.html").write_text("keep me")
    with pytest.raises(UsageError, match="--overwrite"):
        build_report([inputs["cam"]], tmp_path / "exists.html")
    assert (tmp_path / "exists.html").read_text() == "keep me"
    with pytest.raises(UsageError, match="is a folder"):
        build_report([inputs["cam"]], tmp_path)
    assert not (tmp_path / "r.html").exists()


def test_damaged_parts_become_warnings(tmp_path: Path, inputs: dict[str, Any]) -> None:
    """A broken manifest line, a deleted overlay and a broken attrib npz lose only themselves."""
    cam = tmp_path / "cam"
    shutil.copytree(inputs["cam"], cam)
    with open(cam / "manifest.jsonl", "a", encoding="utf-8") as fh:
        fh.write("{broken\n")
    # The manifest records absolute folders: point it at the copy, then delete one overlay.
    text = (cam / "manifest.jsonl").read_text().replace(str(inputs["cam"]), str(cam))
    (cam / "manifest.jsonl").write_text(text)
    next(cam.rglob("*_overlay.png")).unlink()
    attrib = tmp_path / "attrib"
    shutil.copytree(inputs["attrib"], attrib)
    next((attrib / "items").rglob("*.npz")).write_bytes(b"not a zip")
    s = build_report([cam, attrib], tmp_path / "r.html")
    text = " ".join(s["warnings"])
    assert "1 unreadable manifest line" in text and "unreadable npz" in text and "could not be read" in text
    assert s["gallery_items"] == len(KEYS)


def test_localization_masks_outlined(tmp_path: Path) -> None:
    """An eval folder recording its --masks folder: each image's mask outline is drawn on its input picture."""
    keys = ["a", "b"]
    attrib = write_attrib_run(tmp_path / "attrib", keys, tmp_path / "images")
    mask_dir = tmp_path / "masks"
    mask_dir.mkdir()
    mask = np.zeros((64, 64), np.uint8)
    mask[8:24, 8:24] = 255
    Image.fromarray(mask).save(mask_dir / "a_mask.png")  # only a has a mask
    ev = tmp_path / "eval"
    doc = write_faithfulness_eval(ev, keys, seed=4)
    doc["settings"]["masks"] = str(mask_dir)
    (ev / "eval.json").write_text(json.dumps(doc))
    out = tmp_path / "r.html"
    build_report([ev, attrib], out, thumb=32)
    html = out.read_text()
    cards = {m.group(1): m.start() for m in re.finditer(r'<div class="card" data-key="([^"]+)"', html)}
    start, stop = cards["a"], (cards["b"] if cards["b"] > cards["a"] else len(html))
    assert '<figcaption title="input + mask">' in html[start:stop]
    assert html.count('<figcaption title="input + mask">') == 1


def test_comparison_only_with_same_settings(tmp_path: Path) -> None:
    """Same command and settings: side by side plus paired differences; other settings: named, not compared."""
    from scipy.stats import wilcoxon

    keys = [f"k{i}" for i in range(6)]
    write_faithfulness_eval(tmp_path / "a", keys, seed=1)
    write_faithfulness_eval(tmp_path / "b", keys, seed=2, method="scorecam")
    write_faithfulness_eval(tmp_path / "c", keys, seed=3, steps=20)
    out = tmp_path / "r.html"
    build_report([tmp_path / "a", tmp_path / "b", tmp_path / "c"], out)
    html = out.read_text()
    section = html[html.index('id="comparison"'):html.index('id="curves"')]
    assert "c (faithfulness) is not compared with a (faithfulness): settings differ in steps" in section
    a, b = per_image(tmp_path / "a", "insertion_auc"), per_image(tmp_path / "b", "insertion_auc")
    diff = np.array([a[k] - b[k] for k in keys])
    row = re.search(r"<tr><td>insertion_auc</td><td>a</td><td>b</td><td>.*?</tr>", section)
    assert row is not None
    values = [float(v) for v in re.findall(r'data-value="([^"]+)"', row.group(0))]
    assert values[0] == 6 and values[1] == pytest.approx(diff.mean(), abs=1e-9)
    assert values[2] <= diff.mean() <= values[3]  # the paired interval holds the mean difference
    want_p = wilcoxon([a[k] for k in keys], [b[k] for k in keys], zero_method="wilcox").pvalue
    assert values[4] == pytest.approx(want_p)
    assert "<td>c</td>" not in section


def test_localization_mask_kind_shown_and_never_compared(tmp_path: Path) -> None:
    """eval.json records mask_kind: the report shows it with the settings and keeps cell and nuclei apart."""
    from xaiclip_cli.config.eval import EvalSettings
    from xaiclip_cli.data.toycells import ToyCellsSource
    from xaiclip_cli.metrics.commands import run_localization

    src = ToyCellsSource()
    maps = tmp_path / "maps"
    maps.mkdir()
    for i in range(3):
        np.save(maps / f"test_{i:05d}.npy", src.get_mask("test", i, "nuclei").astype(np.float64))
    for kind in ("cell", "nuclei"):
        run_localization(EvalSettings(maps=[maps], dataset="toycells", mask_kind=kind, bootstrap=0,
                                      output_dir=tmp_path / kind))
    out = tmp_path / "r.html"
    build_report([tmp_path / "cell", tmp_path / "nuclei"], out)
    html = out.read_text()
    assert "<th>mask_kind</th><td>nuclei</td>" in html and "<th>mask_kind</th><td>cell</td>" in html
    assert "not compared with cell (localization): settings differ in mask_kind" in html


def test_skipped_rows_listed_not_scored(tmp_path: Path) -> None:
    """A skipped row (NaN map) keeps its card with the reason, has no metric and sorts last."""
    keys = ["a", "b", "c"]
    ev = tmp_path / "eval"
    write_faithfulness_eval(ev, keys, seed=1)
    with open(ev / "per_image.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    rows[0].update(status="skipped", reason="nan", insertion_auc="", deletion_auc="")
    with open(ev / "per_image.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    np.savez(ev / "curves.npz", image=np.array(keys[1:]), x_insertion=np.tile(np.linspace(0, 1, 5), (2, 1)),
             y_insertion=np.tile(np.linspace(0, 1, 5), (2, 1)))
    out = tmp_path / "r.html"
    s = build_report([ev], out)
    html = out.read_text()
    cards = re.findall(r'<div class="card" data-key="([^"]+)" data-m="([^"]*)"', html)
    assert [k for k, _ in cards][-1] == "a" and cards[-1][1] == "{}"
    assert "status: skipped · reason: nan" in html and s["warnings"] == []
    assert html.count('<svg class="spark"') == 2  # curves only for the ok rows, matched by order


def test_size_cap_300_items(tmp_path: Path) -> None:
    """300 images with pictures: only --max-images get thumbnails, the rest are names, the file stays small."""
    keys = [f"img_{i:04d}" for i in range(300)]
    ev = tmp_path / "eval"
    write_faithfulness_eval(ev, keys, seed=3)
    attrib = write_attrib_run(tmp_path / "attrib", keys, tmp_path / "images", size=224)
    out = tmp_path / "big.html"
    s = build_report([ev, attrib], out, max_images=200)
    html = out.read_text()
    assert s["gallery_items"] == 300 and s["gallery_shown"] == 200
    assert html.count('<div class="card"') == 200
    # input + region order per shown item, and one figure
    assert len(re.findall(r'<img [^>]*src="data:image/', html)) == 2 * 200 + 1
    assert len(re.findall(r"<li>img_\d{4}", html)) == 100
    # Measured 2.64 MB (224 px noise images: the worst case for JPEG; real cells are ~half); bound with room.
    assert out.stat().st_size < 4_000_000, out.stat().st_size


# ------------------------------------------------------------------------------------------- in the browser
def _driver(profile: Path) -> Any:
    chromium = find_chromium()
    driver_path = shutil.which("chromedriver")
    if chromium is None or driver_path is None:
        pytest.skip("chromium/chromedriver not installed (CI installs Debian's chromium in .ci/run)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium not installed (pip install -e '.[dev]')")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    for flag in CHROMIUM_FLAGS:
        opts.add_argument(flag)
    opts.add_argument(f"--user-data-dir={profile}")
    opts.add_argument("--window-size=1280,2000")
    opts.binary_location = chromium
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(executable_path=driver_path), options=opts)


def test_report_in_headless_chromium(report: dict[str, Any], inputs: dict[str, Any], tmp_path: Path) -> None:
    driver = _driver(tmp_path / "profile")
    try:
        driver.get(report["out"].resolve().as_uri())
        state = driver.execute_script("return document.readyState")
        assert state == "complete"
        imgs = driver.execute_script(
            "return Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.naturalHeight])")
        assert len(imgs) == 3 * len(KEYS) + 1
        assert all(c and w > 0 and h > 0 for c, w, h in imgs), imgs
        # No request leaves the file: every resource the page loaded is a data: URI.
        resources = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
        assert all(r.startswith("data:") for r in resources), resources
        # The tables hold every number of each eval.json's metrics and per-class blocks (exact values).
        shown = driver.execute_script(
            "return Array.from(document.querySelectorAll('#results [data-value]')).map(e => e.dataset.value)")
        shown_values = {float(v) for v in shown if v not in ("nan", "inf", "-inf")}
        for name, doc in inputs["docs"].items():
            blocks = {k: doc[k] for k in ("metrics", "per_class", "breakdown", "extra") if k in doc}
            for path, value in numeric_leaves(blocks):
                assert value in shown_values, f"{name}: {path} = {value} not in the report's tables"
        # Sorting: pick deletion (high is bad) and the DOM order follows it; descending by default.
        order0 = driver.execute_script("return Array.from(document.querySelectorAll('.card')).map(c => c.dataset.key)")
        from selenium.webdriver.support.ui import Select

        Select(driver.find_element("id", "sortby")).select_by_value("eval_gradcam: deletion_auc")
        order1 = driver.execute_script("return Array.from(document.querySelectorAll('.card')).map(c => c.dataset.key)")
        dels = per_image(inputs["root"] / "eval_gradcam", "deletion_auc")
        assert order1 == sorted(dels, key=lambda k: -dels[k])
        assert sorted(order0) == sorted(order1)
        assert driver.find_element("id", "sortdir").get_attribute("value") == "desc"
        Select(driver.find_element("id", "sortdir")).select_by_value("asc")
        order2 = driver.execute_script("return Array.from(document.querySelectorAll('.card')).map(c => c.dataset.key)")
        assert order2 == order1[::-1]
        # Clicking a metric's name in a card sorts by it, worst first (insertion: ascending).
        driver.find_element("css selector", '.card th[data-sort="eval_scorecam: insertion_auc"]').click()
        order3 = driver.execute_script("return Array.from(document.querySelectorAll('.card')).map(c => c.dataset.key)")
        ins = per_image(inputs["root"] / "eval_scorecam", "insertion_auc")
        assert order3 == sorted(ins, key=ins.get)
        assert driver.find_element("id", "sortby").get_attribute("value") == "eval_scorecam: insertion_auc"
        png = driver.get_screenshot_as_png()
        logs = driver.get_log("browser")
    finally:
        driver.quit()
    errors = [entry for entry in logs if entry.get("level") == "SEVERE"]
    assert not errors, errors
    arr = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.float32)
    assert arr.shape[0] > 100 and arr.std() > 10.0  # not blank
    assert len(np.unique(arr.reshape(-1, 3), axis=0)) > 500  # pictures drawn, not just flat boxes


def test_screenshot_helper(report: dict[str, Any], tmp_path: Path) -> None:
    if find_chromium() is None:
        pytest.skip("chromium not installed (CI installs Debian's chromium in .ci/run)")
    png = screenshot(report["out"], tmp_path / "shot.png", width=1000, height=900)
    arr = np.asarray(Image.open(png).convert("RGB"), dtype=np.float32)
    assert arr.shape[:2] == (900, 1000) and arr.std() > 10.0
