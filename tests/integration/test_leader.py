"""One scheduler leader per cluster; another node takes over at once when it goes."""

from __future__ import annotations

import psycopg

from tests.server_fixtures import make_config, wait_until
from valka.server.app import Node


def leaders(nodes: list[Node]) -> list[Node]:
    return [n for n in nodes if n.leader is not None and n.leader.is_leader]


async def test_one_leader_and_takeover_when_its_session_breaks(db_url: str) -> None:
    nodes = [Node(make_config(db_url, node_id=f"n{i}")) for i in range(3)]
    for n in nodes:
        await n.start()
    try:
        [first] = await wait_until(lambda: leaders(nodes), timeout=10)
        # Every node has campaigned at least once by now (they retry every second).
        await wait_until(lambda: all(n.leader is not None and n.leader.attempts > 0
                                     for n in nodes))
        assert leaders(nodes) == [first]
        # Break the leader's lock session from the outside: it must notice and step down,
        # and another node must take over.
        async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as c:
            await c.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                            "WHERE application_name = %s AND datname = current_database()",
                            (f"valka-leader:{first.node_id}",))
        await wait_until(lambda: first.leader is not None and not first.leader.is_leader,
                         timeout=15)
        new = await wait_until(lambda: leaders(nodes), timeout=15)
        assert len(new) == 1
        # Stopping the leader hands over too.
        await new[0].stop(drain_s=0.1)
        nodes.remove(new[0])
        assert len(await wait_until(lambda: leaders(nodes), timeout=15)) == 1
    finally:
        for n in nodes:
            await n.stop(drain_s=0.1)
