"""The examples in the library's docstrings run."""

import doctest

import pytest

import tsmr
import tsmr.eventlog


@pytest.mark.parametrize("module", [tsmr, tsmr.eventlog], ids=lambda m: m.__name__)
def test_docstring_examples(module: object) -> None:
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)  # type: ignore[arg-type]
    assert result.attempted > 0 and result.failed == 0
