"""The import rules of docs/architecture.md, checked on the source (each rule is one test).

Imports are read with ``ast`` from every module of ``daemon/`` and ``actors/``, including imports
inside functions.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import re
from pathlib import Path
from typing import get_type_hints

import pytest

from actors.context import Context
from daemon.pipeline import STAGES

ROOT = Path(__file__).resolve().parents[1]
#: The stage modules: ``run(context, argument)`` each.
STAGE_MODULES = {stage.module for stage in STAGES}
#: Modules that make up the web process (no worker code, no Dramatiq worker internals).
WEB = {"daemon.web", "daemon.sandbox", "daemon.sandbox_link", "daemon.metrics"}
#: Pure modules: no I/O library, nothing of wapipe's that does I/O.
PURE = {"daemon.pipeline", "daemon.envelope", "daemon.signature", "daemon.store.keys"}
IO_LIBRARIES = ("redis", "aiohttp", "socket", "subprocess", "urllib.request", "http")


def _modules() -> dict[str, Path]:
    found = {}
    for package in ("daemon", "actors"):
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


MODULES = _modules()


def imports_of(module: str) -> set[str]:
    """Every module ``module`` imports (``from a import b`` counts ``a`` and ``a.b``)."""
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def test_daemon_never_imports_the_worker_except_the_cli() -> None:
    """``daemon`` is the shared base and the web; only the command line starts a worker."""
    for module in MODULES:
        if _within(module, "daemon") and module != "daemon.cli":
            assert not any(_within(name, "actors") for name in imports_of(module)), module


def test_the_web_process_does_not_load_dramatiqs_worker() -> None:
    """The web writes Dramatiq's format itself: it never imports a Dramatiq broker or worker."""
    for module in WEB:
        for name in imports_of(module):
            assert not _within(name, "dramatiq.brokers"), (module, name)
            assert not _within(name, "dramatiq.worker"), (module, name)


def test_pure_modules_do_no_io() -> None:
    """The vocabulary, the envelope, the signature and the key layouts are pure."""
    for module in PURE:
        imported = imports_of(module)
        for name in imported:
            assert not any(_within(name, library) for library in IO_LIBRARIES), (module, name)
            if _within(name, "daemon"):
                assert any(_within(name, pure) for pure in PURE) or name == "daemon", (module, name)


def test_the_store_knows_nothing_of_the_web_the_graph_api_or_handlers() -> None:
    """The state store is Redis and files: it does not import the web, Graph API or bot code."""
    forbidden = ("daemon.web", "daemon.graph", "daemon.handler", "daemon.http_pool", "aiohttp", "actors")
    for module in MODULES:
        if _within(module, "daemon.store"):
            for name in imports_of(module):
                assert not any(_within(name, bad) for bad in forbidden), (module, name)


def test_stages_do_not_import_each_other_or_the_worker() -> None:
    """A stage hands on through the queue, never by calling another stage; it does not know how
    the worker is built."""
    for module in STAGE_MODULES:
        for name in imports_of(module):
            others = STAGE_MODULES - {module}
            assert not any(_within(name, other) for other in others), (module, name)
            for worker_part in ("actors.broker", "actors.supervisor", "actors.dramatiq_adapter"):
                assert not _within(name, worker_part), (module, name)


def test_only_the_adapter_touches_dramatiqs_private_names() -> None:
    """Dramatiq internals (private classes and methods) are used in ``actors.dramatiq_adapter`` only."""
    internals = {"_RedisConsumer", "_should_do_maintenance", "_max_unpack_size", "_dispatch"}
    for module, path in MODULES.items():
        if module == "actors.dramatiq_adapter":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and _within(node.module, "dramatiq"):
                assert not any(alias.name.startswith("_") for alias in node.names), (module, node.module)
            elif isinstance(node, ast.Attribute):
                assert node.attr not in internals, (module, node.attr)
            elif isinstance(node, ast.Name):
                assert node.id not in internals, (module, node.id)


def test_redis_keys_and_lua_live_in_the_store() -> None:
    """Key names are made in ``daemon.store.keys`` only; Lua is in ``daemon/store/lua/*.lua`` only."""
    key_literal = re.compile(r"""["']wapipe:[a-z_]+:""")
    for module, path in MODULES.items():
        source = path.read_text(encoding="utf-8")
        if module != "daemon.store.keys":
            assert not key_literal.search(source), module
        assert "redis.call(" not in source, module


def test_each_stage_module_runs_its_stages_argument() -> None:
    """A table line names a module whose ``run(context, argument)`` takes that stage's argument."""
    for stage in STAGES:
        module = importlib.import_module(stage.module)
        hints = get_type_hints(module.run)
        parameters = list(inspect.signature(module.run).parameters)
        assert len(parameters) == 2, stage.name
        assert hints[parameters[0]] is Context, stage.name
        assert hints[parameters[1]] is stage.argument, stage.name
        assert hints["return"] is type(None), stage.name


@pytest.mark.parametrize("module", sorted(set(MODULES) - {"daemon.__main__"}))
def test_every_module_imports_cleanly(module: str) -> None:
    """No module does I/O or fails at import time."""
    importlib.import_module(module)
