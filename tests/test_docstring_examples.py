"""Every public pipeline call's ``Examples:`` block (diffusers' ``replace_example_docstring`` form) runs as a
doctest here, offline, against the packaged models: a docstring cannot show an output the code no longer gives."""

import doctest

import pytest

from diffusers_linearizer import (
    LinearizerClassPipeline,
    LinearizerInversionPipeline,
    LinearizerPipeline,
    LinearizerStyleTransferPipeline,
    LinearizerTextPipeline,
)

CALLS = {
    "LinearizerPipeline.__call__": LinearizerPipeline.__call__,
    "LinearizerClassPipeline.__call__": LinearizerClassPipeline.__call__,
    "LinearizerTextPipeline.__call__": LinearizerTextPipeline.__call__,
    "LinearizerInversionPipeline.__call__": LinearizerInversionPipeline.__call__,
    "LinearizerInversionPipeline.interpolate": LinearizerInversionPipeline.interpolate,
    "LinearizerStyleTransferPipeline.__call__": LinearizerStyleTransferPipeline.__call__,
}


@pytest.mark.parametrize("name", list(CALLS))
def test_the_example_runs_and_shows_what_it_prints(name, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    doc = CALLS[name].__doc__
    assert "Examples:" in doc and ">>> " in doc and "Args:" in doc and "Returns:" in doc, name
    test = doctest.DocTestParser().get_doctest(doc, {}, name, None, 0)
    assert test.examples, name
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    runner.run(test, out=lambda text: pytest.fail(text))
    assert runner.failures == 0 and runner.tries == len(test.examples)
