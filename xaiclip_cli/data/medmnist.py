"""MedMNIST 2D data: metadata from ``medmnist.INFO``, file names, MD5 checks, opt-in download, an npz-backed source.

Metadata comes from the medmnist package (its ``info`` module is loaded on its own: the package ``__init__``
imports torch-based dataset classes, takes seconds and prints to stdout when an optional dependency is missing).
The pixels are read by ``NpzSource`` directly from the official npz files, never through medmnist's Dataset class
(it asserts the official split sizes and loads whole splits). Files live in ``data_root`` (default: medmnist's own
``~/.medmnist``) as ``{flag}.npz`` for 28 px and ``{flag}_{size}.npz`` for 64/128/224 px.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import sys
import tempfile
import urllib.error
import urllib.request
from functools import lru_cache
from pathlib import Path
from typing import Any

from xaiclip_cli.data.npz import NpzSource, file_md5
from xaiclip_cli.errors import UsageError, XaiclipError

SIZES = (28, 64, 128, 224)


@lru_cache(maxsize=1)
def medmnist_info() -> dict[str, dict[str, Any]]:
    """``medmnist.INFO`` (all flags), loaded without running the package ``__init__``; stdout is kept clean."""
    spec = importlib.util.find_spec("medmnist")
    if spec is None or not spec.submodule_search_locations:
        raise XaiclipError("the medmnist package is not installed; install it with: pip install --no-deps medmnist")
    info_file = Path(next(iter(spec.submodule_search_locations))) / "info.py"
    with contextlib.redirect_stdout(io.StringIO()):
        if info_file.is_file():
            mspec = importlib.util.spec_from_file_location("_xaiclip_medmnist_info", info_file)
            assert mspec is not None and mspec.loader is not None
            mod = importlib.util.module_from_spec(mspec)
            mspec.loader.exec_module(mod)
        else:  # a future layout: fall back to the package import
            import medmnist as mod  # type: ignore[no-redef]
    return dict(mod.INFO)


def flags_2d() -> list[str]:
    """The 2D MedMNIST flags (``pathmnist`` … ``organsmnist``), in medmnist's order."""
    return [k for k in medmnist_info() if not k.endswith("3d")]


def flag_info(flag: str) -> dict[str, Any]:
    """The INFO entry of one 2D flag; unknown flags raise a UsageError listing the known ones."""
    flag = flag.lower()
    if flag not in flags_2d():
        if flag.endswith("3d") and flag in medmnist_info():
            raise UsageError(f"MedMNIST flag {flag!r} is a 3-D volume dataset; xaiclip reads 2-D images only "
                             f"(2D flags: {', '.join(flags_2d())})")
        raise UsageError(f"unknown MedMNIST flag {flag!r}; known 2D flags: {', '.join(flags_2d())}")
    return medmnist_info()[flag]


def _check_size(size: int) -> int:
    if int(size) not in SIZES:
        raise UsageError(f"MedMNIST size {size} is not available; use one of {', '.join(map(str, SIZES))}")
    return int(size)


def file_name(flag: str, size: int = 28) -> str:
    """File name of a flag at a size: ``bloodmnist.npz`` (28 px) or ``bloodmnist_224.npz``."""
    return f"{flag.lower()}.npz" if _check_size(size) == 28 else f"{flag.lower()}_{size}.npz"


def expected_md5(flag: str, size: int = 28) -> str:
    """Official MD5 of a flag's npz at a size (INFO fields ``MD5`` / ``MD5_{size}``)."""
    info = flag_info(flag)
    return str(info["MD5"] if _check_size(size) == 28 else info[f"MD5_{size}"])


def download_url(flag: str, size: int = 28) -> str:
    """Zenodo URL of a flag's npz at a size (INFO fields ``url`` / ``url_{size}``)."""
    info = flag_info(flag)
    return str(info["url"] if _check_size(size) == 28 else info[f"url_{size}"])


def class_names(flag: str) -> list[str]:
    """Label names in label order (INFO ``label`` dict)."""
    labels = flag_info(flag)["label"]
    return [labels[str(i)] for i in range(len(labels))]


def default_root() -> Path:
    """Where MedMNIST files are looked for without ``data_root``: ``$MEDMNIST_ROOT`` or medmnist's ``~/.medmnist``."""
    env = os.environ.get("MEDMNIST_ROOT")
    return Path(env).expanduser() if env else Path.home() / ".medmnist"


def verify_md5(path: str | Path, expected: str) -> str:
    """Compute a file's MD5 and raise a UsageError naming both digests when it differs from ``expected``."""
    got = file_md5(path)
    if got != expected.lower():
        raise UsageError(f"{path}: MD5 {got} differs from the expected {expected}; delete it and download it again")
    return got


def download(flag: str, size: int, dest: str | Path, timeout: float = 60.0) -> Path:
    """Fetch a flag's npz from Zenodo into ``dest`` (temp name, MD5 check, rename); offline -> XaiclipError."""
    dest = Path(dest)
    url, md5 = download_url(flag, size), expected_md5(flag, size)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=dest.name + ".", suffix=".part", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310
            while block := resp.read(1 << 20):
                out.write(block)
        got = file_md5(tmp)
        if got != md5:
            raise XaiclipError(f"download of {url} has MD5 {got}, expected {md5}; try again later")
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        raise XaiclipError(
            f"cannot download {url} ({getattr(exc, 'reason', exc)}); copy {dest.name} (MD5 {md5}) into {dest.parent}"
        ) from None
    finally:
        Path(tmp).unlink(missing_ok=True)
    return dest


def resolve_file(
    flag: str, size: int = 28, data_root: str | Path | None = None, download_missing: bool = False
) -> Path:
    """Path of a flag's npz under ``data_root``; missing -> download when asked, else a UsageError naming file+MD5."""
    root = Path(data_root).expanduser() if data_root is not None else default_root()
    path = root / file_name(flag, size)
    if path.is_file():
        return path
    if download_missing:
        return download(flag, size, path)
    raise UsageError(
        f"MedMNIST file {path} not found (MD5 {expected_md5(flag, size)}); put it there, point --data-root at its "
        f"folder, or pass --download to fetch it from Zenodo"
    )


class MedMNISTSource(NpzSource):
    """One MedMNIST 2D flag at one size, read lazily from its official npz with NumPy."""

    def __init__(
        self,
        flag: str,
        size: int | None = None,
        data_root: str | Path | None = None,
        download: bool = False,
        verify: bool = False,
        path: str | Path | None = None,
    ) -> None:
        self.flag = flag.lower()
        size = _check_size(size or 28)
        info = flag_info(self.flag)
        md5 = expected_md5(self.flag, size)
        p = Path(path) if path is not None else resolve_file(self.flag, size, data_root, download)
        if verify:
            verify_md5(p, md5)
        extra = {
            "flag": self.flag, "task": info["task"], "license": info.get("license"),
            "official_sizes": dict(info["n_samples"]), "md5_verified": bool(verify),
        }
        super().__init__(
            p, kind="medmnist", ref=f"medmnist:{self.flag}", class_names=class_names(self.flag), md5=md5, extra=extra
        )
        self.task = str(info["task"])
        if self.image_size != size:
            raise UsageError(f"{p}: images are {self.image_size} px but size {size} was asked for")
        if self.channels != int(info["n_channels"]):
            raise UsageError(f"{p}: images have {self.channels} channel(s), {self.flag} has {info['n_channels']}")
        want_l = len(info["label"]) if self.task.startswith("multi-label") else 1
        if self.n_labels != want_l:
            raise UsageError(f"{p}: labels have {self.n_labels} column(s), {self.flag} ({self.task}) has {want_l}")


def _main(argv: list[str] | None = None) -> int:
    """Print the 2D flags with their sizes, tasks and 28-px MD5 (a quick look at the metadata)."""
    del argv
    for flag in flags_2d():
        info = medmnist_info()[flag]
        n = info["n_samples"]
        sys.stdout.write(f"{flag}\t{info['task']}\t{info['n_channels']}\t{n['train']}/{n['val']}/{n['test']}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
