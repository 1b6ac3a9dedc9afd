"""The documentation keeps up with the settings."""

from __future__ import annotations

import pytest

from app.config import Settings
from tests.conftest import ROOT

SETTINGS = sorted(name.upper() for name in Settings.model_fields)


@pytest.mark.parametrize("document", ["README.md", ".env.example"])
def test_every_setting_is_documented(document: str) -> None:
    text = (ROOT / document).read_text()
    missing = [name for name in SETTINGS if name not in text]
    assert missing == [], f"{document} does not mention {missing}"
