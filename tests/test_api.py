"""The public API: the names the README promises, as the right kinds of object."""

from __future__ import annotations

import inspect


def test_public_names_are_the_functions_not_their_modules() -> None:
    import l1cnn.predict  # importing submodules must not shadow the functions
    import l1cnn.train  # noqa: F401
    from l1cnn import Config, build_model, load_run, predict, train

    for fn in (build_model, load_run, predict, train):
        assert inspect.isfunction(fn), fn
    assert inspect.isclass(Config)
    assert set(l1cnn.__all__) <= set(dir(l1cnn))
    assert l1cnn.__version__
