"""Engine fixtures: one composite over the tiny models, shared by a test module."""

from __future__ import annotations

import pytest
from engine_helpers import recipe_over

from nanocommander.engine.runtime.composite import Composite


@pytest.fixture(scope="module")
def composite(tiny):
    comp = Composite.load(recipe_over(tiny))
    yield comp
    comp.close()
