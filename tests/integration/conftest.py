"""Fixtures shared by the integration tests."""

from __future__ import annotations

from typing import Iterator

import pytest

from tests.support.canary import Canary
from tests.support.hub import LocalHub, running_hub


@pytest.fixture(scope="module")
def module_hub() -> Iterator[LocalHub]:
    """A local Hugging Face Hub for the module's tests (tests/support/hub.py)."""
    with running_hub() as hub:
        yield hub


@pytest.fixture
def hub(module_hub: LocalHub) -> Iterator[LocalHub]:
    """The module's hub, with every fault it was given cleared after each test."""
    yield module_hub
    module_hub.clear_faults()


@pytest.fixture(scope="module")
def canary() -> Iterator[Canary]:
    """A loopback canary (tests/support/canary.py) for the module's image tests: it must see no connection."""
    made = Canary()
    yield made
    assert made.seen() == [], "a refused image URL reached the loopback canary"
    made.close()
