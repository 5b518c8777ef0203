"""The committed CRDs (crds/ and the chart's copy) are exactly what the models generate: run `make crds`."""

from __future__ import annotations

import pytest

from kaizen.api import KINDS
from kaizen.api.crd import OUTPUT_DIRS, file_name, render


@pytest.mark.parametrize("directory", OUTPUT_DIRS, ids=lambda d: d.parent.name + "/" + d.name)
def test_committed_crds_match_the_models(directory):
    expected = {file_name(kind): render(kind) for kind in KINDS}
    present = {p.name for p in directory.glob("*.yaml")}
    assert present == set(expected), f"{directory} holds {sorted(present)}; run `make crds`"
    for name, text in expected.items():
        assert (directory / name).read_text() == text, f"{directory / name} drifted from the models; run `make crds`"
