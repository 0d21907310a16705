"""Fixtures shared by the catalog's unit tests."""

from __future__ import annotations

import os
from typing import Iterator

import pytest

from tests.support.instance import LOCAL_HOSTS


@pytest.fixture(scope="module", autouse=True)
def _no_proxy() -> Iterator[None]:
    """Sessions trust the environment: a CI proxy must not carry the calls to the local hub."""
    with pytest.MonkeyPatch.context() as env:
        for name in ("NO_PROXY", "no_proxy"):
            env.setenv(name, ",".join(filter(None, [os.environ.get(name), LOCAL_HOSTS])))
        yield
