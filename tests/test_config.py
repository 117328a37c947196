"""`--set key=value` parsing: YAML values, with the numbers a user means."""

from __future__ import annotations

import pytest

from lensnet.core.config import parse_set
from lensnet.core.errors import LensnetError


def test_set_values_are_yaml_and_exponents_are_numbers() -> None:
    tree = parse_set(["substructure.m_min=1e6", "a.b=1.0e+6", "c=[1e6, 2]", "d=abc", "e=nan", "f=true", "g=1e6x"])
    assert tree["substructure"]["m_min"] == 1e6 and isinstance(tree["substructure"]["m_min"], float)
    assert tree["a"]["b"] == 1e6 and tree["c"] == [1e6, 2]
    assert tree["d"] == "abc" and tree["e"] == "nan" and tree["f"] is True and tree["g"] == "1e6x"


@pytest.mark.parametrize("item", ["novalue", "=3", "a..b=1"])
def test_malformed_set_items_are_errors(item: str) -> None:
    with pytest.raises(LensnetError, match="--set expects key=value"):
        parse_set([item])
