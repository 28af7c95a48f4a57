"""The examples in the package's docstrings run and print what they show."""

import doctest

import pytest

import sparsetopk
import sparsetopk.functional
import sparsetopk.nn
import sparsetopk._global
import sparsetopk.prune


@pytest.mark.parametrize("module", [sparsetopk, sparsetopk.functional, sparsetopk.nn, sparsetopk._global,
                                    sparsetopk.prune])
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0


def test_every_public_name_is_documented():
    for name in sparsetopk.__all__:
        assert getattr(sparsetopk, name).__doc__, name
