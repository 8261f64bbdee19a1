"""Run the xaiclip CLI with the fake backend/source (for subprocess kill/interrupt tests): python fake_cli.py ARGS."""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

from tests.store.fakes import patch_jobs  # noqa: E402

if __name__ == "__main__":
    patch_jobs(sizes=json.loads(os.environ.get("XAICLIP_FAKE_SIZES", '{"train": 5, "val": 2, "test": 3}')))
    from xaiclip_cli.cli.main import app

    sys.argv = ["xaiclip", *sys.argv[1:]]
    app()
