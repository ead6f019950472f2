"""API keys are remembered briefly by the server: a replaced key stops working within that time."""

from __future__ import annotations

from server_shim.api.middleware import KEY_MEMORY_SECONDS
from server_shim.store import accounts
from tests.conftest import LiveServer, eventually


async def test_a_replaced_key_stops_working_within_the_memory_and_a_wrong_one_never_works(
    live_server: LiveServer,
) -> None:
    """A key replaced by `api-key create` is refused within KEY_MEMORY_SECONDS; an unknown key at once."""
    key = live_server.server.db.sync(accounts.create_api_key, "ops")
    assert (await live_server.api("GET", "/api/spaces/v1", key=key))[0] == 200
    live_server.server.db.sync(accounts.create_api_key, "ops")  # a new key under the name: the old one goes

    async def refused() -> bool:
        return (await live_server.api("GET", "/api/spaces/v1", key=key))[0] == 401

    assert await eventually(refused, KEY_MEMORY_SECONDS + 5) <= KEY_MEMORY_SECONDS + 1
    assert (await live_server.api("GET", "/api/spaces/v1", key=key[:-1] + "x"))[0] == 401
