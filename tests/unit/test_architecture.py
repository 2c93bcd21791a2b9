"""The architecture's promises that a lint contract cannot state: no import cycles, one settings source."""

from __future__ import annotations

import dataclasses

import grimp

from controller.app import router_settings
from controller.config import Settings
from router.settings import RouterSettings


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Return the strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph.modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.find_modules_directly_imported_by(child)))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_product_module_imports_itself_through_others() -> None:
    graph = grimp.build_graph("controller", "router", "storage", include_external_packages=False)
    assert len(graph.modules) > 50  # the graph really holds the product
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = grimp.ImportGraph()
    for name in ("a", "b", "c", "d"):
        graph.add_module(name)
    graph.add_import(importer="a", imported="b")
    graph.add_import(importer="b", imported="c")
    graph.add_import(importer="c", imported="a")
    graph.add_import(importer="c", imported="d")
    assert _cycles(graph) == [["a", "b", "c"]]


def test_the_router_has_the_same_defaults_as_the_settings_it_is_built_from() -> None:
    shared = {f.name for f in dataclasses.fields(RouterSettings)} & {
        f.name for f in dataclasses.fields(Settings)
    }
    assert {"max_body_bytes", "shadow_queue_size", "shadow_timeout_s"} <= shared
    plain, built = RouterSettings(), router_settings(Settings())
    assert {n: getattr(plain, n) for n in shared} == {n: getattr(built, n) for n in shared}


def test_every_shared_setting_reaches_the_router() -> None:
    changed = Settings(max_body_bytes=123, shadow_queue_size=7, shadow_timeout_s=0.5, refresh_interval=3.0)
    built = router_settings(changed)
    assert (
        built.max_body_bytes,
        built.shadow_queue_size,
        built.shadow_timeout_s,
        built.refresh_interval,
    ) == (
        123,
        7,
        0.5,
        3.0,
    )
    assert built.spool_dir == changed.spool_dir
