"""Helpers that drive a live server with tritonclient and read its /metrics and drift view."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import numpy as np
import tritonclient.http as httpclient
from prometheus_client.parser import text_string_to_metric_families


def client(server, concurrency: int = 1) -> httpclient.InferenceServerClient:
    return httpclient.InferenceServerClient(server.url.removeprefix("http://"), concurrency=concurrency)


def infer(c: httpclient.InferenceServerClient, model: str, x: np.ndarray, **kwargs):
    tensor = httpclient.InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return c.infer(model, [tensor], **kwargs)


def get_json(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def scrape_families(url: str) -> list:
    with urllib.request.urlopen(f"{url}/metrics", timeout=30) as resp:
        text = resp.read().decode()
    return list(text_string_to_metric_families(text))


def scrape(url: str) -> dict:
    """Family name -> list of samples, parsed by prometheus_client's own parser."""
    return {family.name: family.samples for family in scrape_families(url)}


SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "summary": ("_sum", "_count")}


def exported_names(url: str) -> set[str]:
    """Every series name a query may use, including families that have no samples yet (a counter
    is queried as NAME_total, a histogram as NAME_bucket/_sum/_count, never by the bare name)."""
    names = set()
    for family in scrape_families(url):
        if family.type not in SUFFIXES:
            names.add(family.name)
        names.update(family.name + suffix for suffix in SUFFIXES.get(family.type, ()))
        names.update(s.name for s in family.samples)
    return names
