"""The GPU check's summary: the issue's targets beside what benchmarks/gpu_check.sh measured.

    python -m benchmarks.gpu_summary OUT_DIR

Reads tests.xml, mlp_serving.json, llm_gpu.json and generation.json from OUT_DIR (any may be missing:
its rows say so) and writes OUT_DIR/summary.md; prints it too."""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path


def _load(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def tests_row(out: Path) -> tuple[str, str, str]:
    try:
        suite = ET.parse(out / "tests.xml").getroot()
    except (OSError, ET.ParseError):
        return ("GPU tests", "not run", "all pass")
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    passed = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    text = f"{passed} passed, {counts['failures'] + counts['errors']} failed, {counts['skipped']} skipped"
    met = counts["failures"] + counts["errors"] == 0 and passed > 0
    return ("GPU tests", text + ("" if met else " (NOT met)"), "all pass")


def graphs_row(out: Path) -> tuple[str, str, str]:
    llm = _load(out / "llm_gpu.json")
    if not llm:
        return ("LLM decode tok/s at 32 sequences, CUDA graphs / eager", "not run", ">= 1.5x")
    speedup = llm["decode_speedup_graphs_over_eager"]
    seqs = "32" if "32" in speedup else max(speedup, key=int)
    rest = ", ".join(f"{k}: {v:.2f}x" for k, v in speedup.items())
    value = speedup[seqs]
    return (f"LLM decode tok/s at {seqs} sequences, CUDA graphs / eager",
            f"{value:.2f}x ({rest}){'' if value >= 1.5 else ' (NOT met)'}", ">= 1.5x")


def mlp_row(out: Path) -> tuple[str, str, str]:
    mlp = _load(out / "mlp_serving.json")
    if not mlp:
        return ("MLP served req/s at c=64, GPU / CPU, same server", "not run", "report")
    points = {(p["model"], p["rows"]): p for p in mlp["points"]}
    parts = [f"{rows} row(s): {points[('mlp_gpu', int(rows))]['rps']:,.0f} / "
             f"{points[('mlp_cpu', int(rows))]['rps']:,.0f} req/s = {ratio:.2f}x"
             for rows, ratio in mlp["gpu_over_cpu"].items()]
    return (f"MLP served req/s at c={mlp['clients']}, GPU / CPU, same server", "; ".join(parts), "report")


def hf_row(out: Path) -> tuple[str, str, str]:
    runs = _load(out / "generation.json")
    if not runs:
        return ("mid-size Llama tok/s at 32 sequences vs HF generate static batches", "not run", ">= 2x")
    run = runs[-1]
    ratio = run["throughput_ratio"]
    model, clients = run["args"]["model"], run["args"]["clients"]
    return (f"{model} tok/s at {clients} sequences vs HF generate static batches",
            f"{ratio:.2f}x (TTFT p99 ratio {run['ttft_p99_ratio']:.2f}){'' if ratio >= 2 else ' (NOT met)'}", ">= 2x")


def summarize(out: Path) -> str:
    rows = [tests_row(out), graphs_row(out), mlp_row(out), hf_row(out)]
    env = (out / "env.txt").read_text() if (out / "env.txt").is_file() else "(env.txt missing)\n"
    lines = ["# GPU check", "", "| figure | measured | target |", "|---|---|---:|"]
    lines += [f"| {name} | {value} | {target} |" for name, value, target in rows]
    lines += ["", "```", env.rstrip(), "```", ""]
    return "\n".join(lines)


def main() -> None:
    out = Path(sys.argv[1])
    text = summarize(out)
    (out / "summary.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
