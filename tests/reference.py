"""Where the tests find the published Supertonic-2 reference data (never copied into the repo).

`SUPERTONIC_REFERENCE_DIR` names the folder (default: `../shared/reference/supertonic-2` beside
the repository). When it is missing, tests that need it skip with the reason, unless
`SUPERTONIC_REQUIRE_REFERENCE=1` (CI) turns the absence into a failure. Import it as
`from reference import reference_dir` (pytest puts `tests/` on `sys.path`).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ENV_DIR = "SUPERTONIC_REFERENCE_DIR"
ENV_REQUIRE = "SUPERTONIC_REQUIRE_REFERENCE"
_DEFAULT = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "supertonic-2"
# The files every reference-based test relies on; a half-present folder is as bad as none.
_REQUIRED = (
    "tts.json",
    "unicode_indexer.json",
    "state_dict_manifest.json",
    "voice_styles",
    "parity/parity.safetensors",
    "parity/parity.json",
)


def reference_dir() -> Path:
    """The reference folder; skips the calling test (or fails it in CI) when it is absent."""
    raw = os.environ.get(ENV_DIR)
    path = Path(raw).expanduser() if raw else _DEFAULT
    missing = [name for name in _REQUIRED if not (path / name).exists()]
    if missing:
        reason = (
            f"Supertonic-2 reference data not found in {path} (missing: {', '.join(missing)}); "
            f"set {ENV_DIR} to the folder"
        )
        if os.environ.get(ENV_REQUIRE, "") == "1":
            pytest.fail(f"{reason} ({ENV_REQUIRE}=1)", pytrace=False)
        pytest.skip(reason)
    return path
