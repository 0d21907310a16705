"""Native handlers' pure checks: only a caller on this machine may name files on it."""

from __future__ import annotations

import pytest
from aiohttp.test_utils import make_mocked_request

from gateway.api.native.handlers import require_loopback
from gateway.errors import ApiError


@pytest.mark.parametrize("remote", ["127.0.0.1", "::1", "::ffff:127.0.0.1"])
def test_a_caller_on_this_machine_may_import_by_path(remote: str) -> None:
    require_loopback(make_mocked_request("POST", "/lf/model/import").clone(remote=remote), "model import")


@pytest.mark.parametrize("remote", ["10.0.0.7", "192.168.1.20", "::2", None])
def test_any_other_caller_is_forbidden(remote: str | None) -> None:
    request = make_mocked_request("POST", "/lf/model/import").clone(remote=remote)
    with pytest.raises(ApiError) as refused:
        require_loopback(request, "model import")
    assert refused.value.status == 403 and "model import" in refused.value.message
