from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.harness import Node, short_tmp


class NodeFactory:
    def __init__(self) -> None:
        self.root = short_tmp()
        self.nodes: list[Node] = []
        self.allow_tracebacks = False

    def __call__(self, nick: str, **kw: object) -> Node:
        node = Node(self.root / nick, nick, **kw)  # type: ignore[arg-type]
        self.nodes.append(node)
        return node

    def close(self) -> list[str]:
        problems: list[str] = []
        for node in self.nodes:
            node.stop()
            if not self.allow_tracebacks:
                problems += node.tracebacks()
        shutil.rmtree(self.root, ignore_errors=True)
        return problems


def _factory() -> Iterator[NodeFactory]:
    factory = NodeFactory()
    try:
        yield factory
    finally:
        problems = factory.close()
        assert not problems, "tracebacks in node logs:\n" + "\n".join(problems)


@pytest.fixture
def make_node() -> Iterator[Callable[..., Node]]:
    yield from _factory()


@pytest.fixture(scope="module")
def module_nodes() -> Iterator[NodeFactory]:
    yield from _factory()


@pytest.fixture(scope="module")
def pair(module_nodes: NodeFactory) -> tuple[Node, Node]:
    """Two running nodes on loopback that have discovered each other."""
    a = module_nodes("alice").start()
    b = module_nodes("bob").start()
    a.wait_up()
    b.wait_up()
    a.wait_peer("bob", ("discovered", "connected", "verified"))
    b.wait_peer("alice", ("discovered", "connected", "verified"))
    return a, b


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if Path(str(item.fspath)).parent.name == "integration":
            item.add_marker(pytest.mark.integration)
