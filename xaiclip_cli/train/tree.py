"""Parse the reference patient tree <root>/<hospital>/[fold*/]grade<k>/<patient>/<modality>/*.png into patients."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from xaiclip_cli.errors import UsageError

log = logging.getLogger("xaiclip.train")

_GRADE = re.compile(r"^grade(\d+)$", re.IGNORECASE)
_FOLD = re.compile(r"^fold\w*$", re.IGNORECASE)
_IMAGE_SUFFIXES = {".png"}


def natural_key(text: str) -> list[object]:
    """Sort key that orders 'slice2' before 'slice10'."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", text)]


@dataclass
class Patient:
    """One patient: hospital, label (grade) and the slice files of each modality."""

    patient_id: str
    hospital: str
    label: int
    slices: dict[str, list[Path]] = field(default_factory=dict)


def _grade_dirs(hospital_dir: Path) -> list[tuple[Path, int]]:
    out: list[tuple[Path, int]] = []
    for child in sorted(p for p in hospital_dir.iterdir() if p.is_dir()):
        m = _GRADE.match(child.name)
        if m:
            out.append((child, int(m.group(1))))
        elif _FOLD.match(child.name):
            for grade in sorted(p for p in child.iterdir() if p.is_dir()):
                gm = _GRADE.match(grade.name)
                if gm:
                    out.append((grade, int(gm.group(1))))
    return out


def scan_tree(root: Path, modalities: list[str]) -> tuple[dict[str, Patient], list[dict[str, str]]]:
    """Patients with >= 1 slice in every modality, plus the dropped ones with reasons.

    An id under two hospitals or two grades is an error; the same id in several folds is merged.
    """
    root = Path(root)
    if not root.is_dir():
        raise UsageError(f"data.root_dir {root} is not a folder; pass --root-dir with the patient tree")
    found: dict[str, Patient] = {}
    conflicts: dict[str, set[str]] = {}
    for hospital_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for grade_dir, label in _grade_dirs(hospital_dir):
            for pdir in sorted(p for p in grade_dir.iterdir() if p.is_dir()):
                pid = pdir.name
                where = f"{hospital_dir.name}/grade{label}"
                patient = found.get(pid)
                if patient is None:
                    patient = found[pid] = Patient(pid, hospital_dir.name, label)
                elif (patient.hospital, patient.label) != (hospital_dir.name, label):
                    conflicts.setdefault(pid, {f"{patient.hospital}/grade{patient.label}"}).add(where)
                    continue
                for mod in modalities:
                    mdir = pdir / mod
                    if mdir.is_dir():
                        files = [f for f in mdir.iterdir() if f.is_file() and f.suffix.lower() in _IMAGE_SUFFIXES]
                        patient.slices.setdefault(mod, []).extend(files)
    if conflicts:
        listing = "; ".join(f"{pid}: {', '.join(sorted(w))}" for pid, w in sorted(conflicts.items()))
        raise UsageError(f"patients under two hospitals or grades in {root}: {listing}")
    if not found:
        raise UsageError(f"no patients found under {root} (expected <hospital>/[fold*/]grade<k>/<patient>/<modality>)")
    kept: dict[str, Patient] = {}
    dropped: list[dict[str, str]] = []
    for pid in sorted(found):
        p = found[pid]
        missing = [m for m in modalities if not p.slices.get(m)]
        if missing:
            reason = f"no slices for modality {','.join(missing)}"
            dropped.append({"patient_id": pid, "hospital": p.hospital, "label": str(p.label), "reason": reason})
            log.info("dropped patient %s (%s): %s", pid, p.hospital, reason)
            continue
        for m in modalities:
            # Merged folds may list a file name twice; keep one, in natural order.
            p.slices[m] = sorted(set(p.slices[m]), key=lambda f: natural_key(f.name))
        kept[pid] = p
    return kept, dropped
