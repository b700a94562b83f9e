"""`mlserve optimize`: passes that make faster candidates of a model version, one harness that
measures them, an accuracy gate, and publishing the winner as the next version.

A new pass is one module implementing `OptimizationPass` (base.py) and one line in PASSES.
"""

from __future__ import annotations

import importlib

from mlserve.optimize.base import OptimizationPass

PASSES: dict[str, tuple[str, str]] = {
    "export": ("mlserve.optimize.export", "ExportPass"),
    "graph_opt": ("mlserve.optimize.graph_opt", "GraphOptPass"),
    "int8_dynamic": ("mlserve.optimize.int8_dynamic", "Int8DynamicPass"),
    "int8_static": ("mlserve.optimize.int8_static", "Int8StaticPass"),
    "fp16": ("mlserve.optimize.fp16", "Fp16Pass"),
    "prune": ("mlserve.optimize.prune", "PrunePass"),
    "aoti": ("mlserve.optimize.aoti", "AotInductorPass"),
    "distill": ("mlserve.optimize.distill", "DistillPass"),
}
DEFAULT_PASSES = ("export", "graph_opt", "int8_dynamic", "int8_static", "prune")


def create_pass(name: str) -> OptimizationPass:
    if name not in PASSES:
        raise ValueError(f"no optimization pass {name!r}; known: {', '.join(PASSES)}")
    module_name, class_name = PASSES[name]
    return getattr(importlib.import_module(module_name), class_name)()


def parse_passes(text: str | list[str] | None) -> tuple[str, ...]:
    """A comma-separated list (or a list) of pass names, checked; the export runs first when named."""
    if text is None:
        return DEFAULT_PASSES
    names = [n.strip() for n in (text.split(",") if isinstance(text, str) else text) if str(n).strip()]
    unknown = [n for n in names if n not in PASSES]
    if unknown or not names:
        raise ValueError(f"unknown pass(es) {', '.join(unknown) or '(none given)'}; known: {', '.join(PASSES)}")
    ordered = sorted(dict.fromkeys(names), key=lambda n: n != "export")
    return tuple(ordered)
