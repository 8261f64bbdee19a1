"""Tests of prompt sets: the BloodMNIST defaults exactly as store.md §7, toy-cells set, group names, validation."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from xaiclip_cli.data.prompts import PromptSet, load_prompt_set
from xaiclip_cli.data.toycells import TOYCELLS_CAPTIONS, TOYCELLS_CLASSES
from xaiclip_cli.errors import UsageError

BLOOD_LABELS = ["basophil", "eosinophil", "erythroblast", "immature granulocytes", "lymphocyte", "monocyte",
                "neutrophil", "platelet"]
BLOOD_CONCEPTS = [
    "Segmented nucleus", "Band nucleus (band form)", "Reniform / indented nucleus", "Round nucleus",
    "Fine azurophilic granules", "Eosinophilic granules", "Basophilic granules", "Basophilic cytoplasm",
    "Cytoplasmic vacuoles", "High nuclear-to-cytoplasmic ratio", "Pale cytoplasm",
    "Nucleated erythrocyte (erythroblast)", "Platelet fragments / clumps", "Stain precipitate (artifact)",
    "Overlapping cell clumps (artifact)",
]
BLOOD_CONCEPT_T = [
    "a cell photo with sign of {}", "a photo of a cell with {}", "a cell image indicating {}",
    "an image of a cell showing {}", "blood cell with {}", "a blood cell photo with sign of {}",
    "a photo of a blood cell with {}", "a blood cell image indicating {}", "an image of blood cell showing {}",
]
BLOOD_LABEL_T = ["a microscopic image of a {} cell", "a peripheral blood smear image of a {}", "a bloodcell of {}"]


def test_bloodmnist_defaults_exact() -> None:
    ps = load_prompt_set("bloodmnist")
    assert ps.labels == BLOOD_LABELS and ps.concepts == BLOOD_CONCEPTS
    assert ps.concept_templates == BLOOD_CONCEPT_T and ps.label_templates == BLOOD_LABEL_T
    groups = ps.all_prompts()
    assert list(groups) == [f"concept_prompts_t{k:02d}" for k in range(1, 10)] + [
        f"label_prompts_t{k:02d}" for k in range(1, 4)]
    assert all(len(v) == 15 for k, v in groups.items() if k.startswith("concept"))
    assert all(len(v) == 8 for k, v in groups.items() if k.startswith("label"))
    assert groups["label_prompts_t03"][3] == "a bloodcell of immature granulocytes"
    assert groups["concept_prompts_t05"][0] == "blood cell with Segmented nucleus"  # case kept
    assert groups["concept_prompts_t09"][-1] == "an image of blood cell showing Overlapping cell clumps (artifact)"
    assert ps.template_of("label_prompts_t02") == ("label", "a peripheral blood smear image of a {}")
    assert ps.name == "bloodmnist" and ps.data == "medmnist:bloodmnist"


def test_toycells_set_matches_classes() -> None:
    ps = PromptSet.load("toycells")
    assert ps.labels == TOYCELLS_CLASSES and len(ps.concepts) >= 5 and ps.data == "toycells"
    assert ps.label_prompts()["label_prompts_t01"][0] == "a microscopic image of a lymphocyte cell"
    assert ps.captions == TOYCELLS_CAPTIONS  # the YAML and the generator's captions agree
    assert load_prompt_set("bloodmnist").captions == {}


def test_round_trip_and_path(tmp_path: Path) -> None:
    ps = load_prompt_set("bloodmnist")
    p = tmp_path / "mine.yaml"
    p.write_text(yaml.safe_dump(ps.to_dict()))
    again = load_prompt_set(p)
    assert again.all_prompts() == ps.all_prompts()
    assert str(p) == again.source


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"labels": []}, "labels: must be a non-empty list"),
        ({"concepts": ["a", "b", "a"]}, "concepts[2]: duplicate entry 'a'"),
        ({"concepts": ["a", ""]}, "concepts[1]: must be a non-empty string"),
        ({"label_templates": ["no field"]}, "label_templates[0]: template 'no field' must contain exactly one '{}'"),
        ({"concept_templates": ["{} and {}"]}, "found 2 fields"),
        ({"concept_templates": ["{name}"]}, "exactly one '{}'"),
        ({"concept_templates": ["oops {"]}, "not a valid format string"),
        ({"label_templates": ["x {}", "x {}"]}, "duplicate entry"),
        ({"colour": "red"}, "unknown key(s) colour"),
        ({"labels": None}, "labels: must be a non-empty list"),
        ({"captions": {"zebra": ["x"]}}, "captions for 'zebra', which is not one of the labels"),
        ({"captions": {"a": []}}, "captions.a: must be a non-empty list"),
        ({"captions": ["x"]}, "captions must map label names"),
    ],
)
def test_bad_prompt_sets(tmp_path: Path, change: dict, needle: str) -> None:
    raw = {"labels": ["a", "b"], "concepts": ["c"], "label_templates": ["{}"], "concept_templates": ["x {}"]}
    raw.update(change)
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(raw))
    with pytest.raises(UsageError) as exc:
        load_prompt_set(p)
    msg = str(exc.value)
    assert "\n" not in msg and needle in msg and str(p) in msg


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(UsageError) as exc:
        load_prompt_set("no_such_set")
    assert "not found" in str(exc.value) and "bloodmnist" in str(exc.value) and "toycells" in str(exc.value)
    p = tmp_path / "broken.yaml"
    p.write_text("labels: [a\n")
    with pytest.raises(UsageError, match="not valid YAML"):
        load_prompt_set(p)
    p.write_text("labels: [a]\n")
    with pytest.raises(UsageError, match="missing key\\(s\\) concepts, label_templates, concept_templates"):
        load_prompt_set(p)
    p.write_text("- a\n")
    with pytest.raises(UsageError, match="expected a mapping"):
        load_prompt_set(p)
    with pytest.raises(UsageError, match="unknown prompt group"):
        load_prompt_set("toycells").template_of("label_prompts_t99")
