"""DESIGN.md's import rules, checked over every module's import statements (lazy ones included).

Layers point one way: server -> dataplane -> routing -> (registry, beside routing) -> batching -> engine.
`spec`, `state`, `monitor`, `config` and `errors` are importable from anywhere (`state` itself uses only
`config` and `errors`); `spec` imports nothing but `errors`,
and `monitor` calls nobody. Nothing imports `server` but the command line. Only `engine` imports
torch, onnxruntime or tensorrt; only `server` (and the command line that starts it) imports aiohttp.
Only the registry and the data plane read the loader's model table (`loader.models`); `server` reaches
the models only through the data plane: it imports neither the registry nor routing, so every protocol
handler infers, generates and reads through `DataPlane` and changes through `ModelControl`.

Run alone: python -m pytest -q tests/test_imports.py (or python tests/test_imports.py to list).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "mlserve"

# Which mlserve groups each group may import, besides itself and the groups usable from anywhere.
ANYWHERE = {"spec", "monitor", "config", "errors", "version", "gc_policy", "lifeline", "state", "process"}
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "spec": {"errors"},
    "config": {"errors", "process"},
    "gc_policy": set(),
    "process": set(),
    "lifeline": set(),
    "monitor": {"spec", "config", "errors", "process"},
    "state": {"config", "errors", "process"},
    "engine": ANYWHERE,
    "batching": ANYWHERE | {"engine"},
    "registry": ANYWHERE | {"batching", "engine"},
    "routing": ANYWHERE | {"registry", "batching"},
    "jobs": ANYWHERE | {"routing", "registry", "batching", "engine"},
    "optimize": ANYWHERE | {"registry", "engine"},
    "dataplane": ANYWHERE | {"routing", "registry", "optimize"},
    "server": ANYWHERE | {"dataplane", "keys", "jobs", "optimize"},
    "keys": ANYWHERE,
    "tools": ANYWHERE,
    "cli": ANYWHERE | {"dataplane", "server", "registry", "keys", "tools", "jobs", "optimize"},
    "version": set(),
}
HEAVY = ("torch", "onnxruntime", "tensorrt", "safetensors")
# `mlserve examples` writes example models: a development tool beside the command line that nothing
# on the serving path imports, so it may build TorchScript files.
# `mlserve optimize` exports, quantizes and compiles models off the serving path (a CLI command, or
# a child process of the server): its passes call torch's exporters and onnxruntime's quantizer.
HEAVY_ALLOWED = {"engine", "tools", "optimize"}
AIOHTTP_ALLOWED = {"server", "cli"}
# The MLflow store talks to the tracking server's REST API with aiohttp's client (never its web
# server): the one HTTP client the serving process already has.
AIOHTTP_CLIENT_MODULES = {"mlserve.registry.mlflow"}


def group_of(module: str) -> str:
    """mlserve.routing.split -> routing; mlserve.cli -> cli; mlserve.examples -> tools."""
    parts = module.split(".")
    if len(parts) == 1:
        return "version"
    name = parts[1]
    if name in ("cli", "__main__", "status_cli", "push"):
        return "cli"
    if name in ("examples", "examples_llm", "examples_embedding"):
        return "tools"
    if name in ("keys", "keys_cli"):
        return "keys"
    return name


def module_name(path: Path, package: Path = PACKAGE) -> str:
    rel = path.relative_to(package.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, module: str) -> list[tuple[int, str]]:
    """(line, absolute module) for every import statement in the file, at any depth (lazy imports and
    TYPE_CHECKING blocks included); relative imports are resolved against `module`."""
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.append((node.lineno, base))
    return found


def violations(package: Path = PACKAGE) -> list[str]:
    out = []
    for path in sorted(package.rglob("*.py")):
        module = module_name(path, package)
        here = group_of(module)
        for line, target in imports_of(path, module):
            where = f"{path.relative_to(package.parent)}:{line} imports {target}"
            top = target.split(".")[0]
            if top == "mlserve":
                there = group_of(target)
                if there != here and there not in ALLOWED[here]:
                    out.append(f"{where}: {here} may not import {there}")
            elif top in HEAVY and here not in HEAVY_ALLOWED:
                out.append(f"{where}: only engine imports {top}")
            elif top == "aiohttp" and here not in AIOHTTP_ALLOWED and module not in AIOHTTP_CLIENT_MODULES:
                out.append(f"{where}: only server imports aiohttp")
    return out


# The loader's model table is read by the registry, which owns it, and the data plane, the door every
# protocol handler reads models through. Routing and the automatic optimizer sit below the data plane
# (they may not import it) and still read the table: allowed for now, each named here.
MODEL_TABLE_GROUPS = {"registry", "dataplane"}
MODEL_TABLE_MODULES_FOR_NOW = {"mlserve.routing.generation.catalog", "mlserve.routing.manager", "mlserve.routing.router",
                               "mlserve.optimize.auto"}


def _is_loader(node: ast.expr) -> bool:
    name = node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else ""
    return name.lower().endswith("loader")


def model_table_reads(package: Path = PACKAGE) -> list[str]:
    """file:line for every `<...loader>.models` outside the modules allowed to read the loader's table."""
    out = []
    for path in sorted(package.rglob("*.py")):
        module = module_name(path, package)
        if group_of(module) in MODEL_TABLE_GROUPS or module in MODEL_TABLE_MODULES_FOR_NOW:
            continue
        tree = ast.parse(path.read_text(), str(path))
        lines = sorted({node.lineno for node in ast.walk(tree)
                        if isinstance(node, ast.Attribute) and node.attr == "models" and _is_loader(node.value)})
        out += [f"{path.relative_to(package.parent)}:{line} reads loader.models" for line in lines]
    return out


def test_every_group_is_known():
    groups = {group_of(module_name(p)) for p in PACKAGE.rglob("*.py")}
    assert groups <= set(ALLOWED), f"modules outside the layer table: {groups - set(ALLOWED)}"


def test_import_rules_hold_with_no_exceptions():
    found = violations()
    assert not found, "import rules broken:\n" + "\n".join(found)


# Inside `server`, each protocol's package is a codec over the data plane: HTTP (`server/http`) and
# gRPC (`server/grpc`) share only the modules at the top of `server/` (the gate, auth, limits, the v2
# request rules, the Triton protos and statistics), never each other's.
PROTOCOL_PACKAGES = ("mlserve.server.http", "mlserve.server.grpc")


def protocol_crossings(package: Path = PACKAGE) -> list[str]:
    out = []
    for path in sorted(package.rglob("*.py")):
        module = module_name(path, package)
        own = next((p for p in PROTOCOL_PACKAGES if module == p or module.startswith(p + ".")), None)
        if own is None:
            continue
        for line, target in imports_of(path, module):
            other = next((p for p in PROTOCOL_PACKAGES if p != own and (target == p or target.startswith(p + "."))), None)
            if other is not None:
                out.append(f"{path.relative_to(package.parent)}:{line} imports {target}: {own} may not import {other}")
    return out


def test_http_and_grpc_share_only_the_top_of_server():
    found = protocol_crossings()
    assert not found, "move what both protocols need to mlserve/server/:\n" + "\n".join(found)


def test_the_protocol_checker_names_a_crossing(tmp_path):
    fake = tmp_path / "mlserve"
    for folder in ("server/http", "server/grpc"):
        (fake / folder).mkdir(parents=True)
        (fake / folder / "__init__.py").write_text("")
    (fake / "server" / "grpc" / "bad.py").write_text("from mlserve.server.http.v2 import X\nfrom mlserve.server import gate\n")
    (fake / "server" / "http" / "ok.py").write_text("from mlserve.server.http import json_body\n")
    assert protocol_crossings(fake) == [
        "mlserve/server/grpc/bad.py:1 imports mlserve.server.http.v2: mlserve.server.grpc may not import mlserve.server.http",
    ]


def test_the_checker_names_each_kind_of_broken_rule(tmp_path):
    """The checker itself, on a made-up package: a routing module importing torch and server, a spec
    module importing routing through a relative import, a lazy import inside a function."""
    fake = tmp_path / "mlserve"
    for folder in ("routing", "spec", "engine"):
        (fake / folder).mkdir(parents=True)
        (fake / folder / "__init__.py").write_text("")
    (fake / "routing" / "bad.py").write_text("import torch\nfrom mlserve.server.app import create_app\n")
    (fake / "spec" / "bad.py").write_text("from ..routing import split\n")
    (fake / "engine" / "bad.py").write_text("def f():\n    import aiohttp\n    import torch\n")
    found = violations(fake)
    assert found == [
        "mlserve/engine/bad.py:2 imports aiohttp: only server imports aiohttp",
        "mlserve/routing/bad.py:1 imports torch: only engine imports torch",
        "mlserve/routing/bad.py:2 imports mlserve.server.app: routing may not import server",
        "mlserve/spec/bad.py:1 imports mlserve.routing: spec may not import routing",
    ]


def test_only_the_registry_and_the_data_plane_read_the_loaders_models():
    found = model_table_reads()
    assert not found, "read the models through DataPlane (mlserve/dataplane/plane.py):\n" + "\n".join(found)


def test_the_model_table_checker_names_each_read(tmp_path):
    """On a made-up package: reads through a name, `self._loader` and `s.loader` are named in a
    server module; the data plane's own read and `plane.models()` are not."""
    fake = tmp_path / "mlserve"
    for folder in ("server", "dataplane"):
        (fake / folder).mkdir(parents=True)
    (fake / "server" / "bad.py").write_text(
        "def f(loader, s, self, plane):\n"
        "    plane.models()\n"
        "    x = loader.models['m']\n"
        "    return self._loader.models.get('m'), sorted(s.loader.models.items())\n"
    )
    (fake / "dataplane" / "plane.py").write_text("def f(self):\n    return self._loader.models\n")
    assert model_table_reads(fake) == [
        "mlserve/server/bad.py:3 reads loader.models",
        "mlserve/server/bad.py:4 reads loader.models",
    ]


def test_plain_generation_types_import_without_torch():
    """The scheduler and the OpenAI protocol need no torch: spec, the scheduler and the protocol
    modules load in a fresh interpreter without importing torch or onnxruntime."""
    code = (
        "import sys; import mlserve.spec, mlserve.batching.continuous, mlserve.server.http.openai.protocol;"
        "import mlserve.routing.generation.run, mlserve.routing.generation.catalog;"
        "heavy = sorted(m for m in ('torch', 'onnxruntime') if m in sys.modules); print(heavy); sys.exit(bool(heavy))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=PACKAGE.parent, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """mlserve module -> the mlserve modules it imports (any statement, lazy and TYPE_CHECKING included).
    `from mlserve.x import y` counts as importing mlserve.x.y where that is a module, else mlserve.x."""
    modules = {module_name(p, package): p for p in package.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        for _, target in imports_of(path, module):
            if target in modules and target != module:
                graph[module].add(target)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and not node.level:
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    if sub in modules and sub != module:
                        graph[module].add(sub)
    return graph


def import_circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    circles.append(sorted(component))
    return sorted(circles)


def test_no_import_circles():
    circles = import_circles(import_graph())
    assert not circles, "import circles (lazy and TYPE_CHECKING imports count):\n" + "\n".join(
        " <-> ".join(c) for c in circles)


def test_the_circle_finder_names_each_circle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a", "e"}, "e": {"d"}, "f": {"f"}, "g": set()}
    assert import_circles(graph) == [["a", "b", "c"], ["d", "e"]]


# Code outside the engine and the registry asks a version (its typed serving and runtime,
# registry/serving.py and registry/opening.py) for what it needs instead of reaching through
# `.backend.<attr>` or probing a backend with getattr/hasattr. Left for now, with its reason:
BACKEND_REACH_FOR_NOW = {
    # The LLMEngine owns its backend: it drives the runner and detokenizes with the backend's tokenizer.
    "mlserve/batching/llm_engine.py",
}


def _is_backend(node: ast.expr) -> bool:
    return isinstance(node, ast.Attribute) and node.attr == "backend"


def _is_backend_probe(node: ast.AST) -> bool:
    """getattr(<x>.backend, ...) or hasattr(<x>.backend, ...)."""
    return (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("getattr", "hasattr")
            and bool(node.args) and _is_backend(node.args[0]))


def backend_reaches(package: Path = PACKAGE) -> list[str]:
    """file:line for every `<x>.backend.<name>` and every getattr/hasattr probe of `<x>.backend` outside
    mlserve/engine and mlserve/registry."""
    out = []
    for path in sorted(package.rglob("*.py")):
        if group_of(module_name(path, package)) in ("engine", "registry"):
            continue
        tree = ast.parse(path.read_text(), str(path))
        lines = sorted({node.lineno for node in ast.walk(tree)
                        if (isinstance(node, ast.Attribute) and _is_backend(node.value)) or _is_backend_probe(node)})
        out += [f"{path.relative_to(package.parent)}:{line} reaches .backend.<attr>" for line in lines]
    return out


def test_nothing_outside_engine_and_registry_reaches_through_backend():
    found = [f for f in backend_reaches()
             if f.split(" ")[0] not in BACKEND_REACH_FOR_NOW and f.split(":")[0] not in BACKEND_REACH_FOR_NOW]
    assert not found, "ask the version or its LLMEngine instead of reaching through .backend:\n" + "\n".join(found)


def test_the_backend_checker_names_each_reach(tmp_path):
    fake = tmp_path / "mlserve"
    for folder in ("server", "engine"):
        (fake / folder).mkdir(parents=True)
    (fake / "server" / "bad.py").write_text(
        "def f(served, engine, config):\n"
        "    served.backend, config.backend == 'llm'\n"
        "    x = engine.backend.tokenizer.decode([1])\n"
        "    y = getattr(served.runtime.backend, 'vocab_size', None), getattr(served, 'backend', None)\n"
        "    return served.backend.info, hasattr(engine.backend, 'runner')\n"
    )
    (fake / "engine" / "fine.py").write_text("def f(self):\n    return self.backend.runner\n")
    assert backend_reaches(fake) == [
        "mlserve/server/bad.py:3 reaches .backend.<attr>",
        "mlserve/server/bad.py:4 reaches .backend.<attr>",
        "mlserve/server/bad.py:5 reaches .backend.<attr>",
    ]


if __name__ == "__main__":
    circles = [" <-> ".join(c) for c in import_circles(import_graph())]
    print("\n".join(violations() + model_table_reads() + circles) or "import rules hold")
