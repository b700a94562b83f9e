"""Prometheus families for in-server jobs, read from the manager at scrape time (no per-row work)."""

from __future__ import annotations

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from mlserve.jobs.manager import JobManager
from mlserve.jobs.record import JobState


class JobsCollector:
    """Rows done and failed, state and rate per job, labelled by job id and model."""

    def __init__(self, manager: JobManager) -> None:
        self._manager = manager

    def collect(self):
        done = CounterMetricFamily("mlserve_batch_job_rows", "Input rows a batch job has committed.",
                                   labels=["job", "model"])
        failed = CounterMetricFamily("mlserve_batch_job_rows_failed", "Input rows a batch job wrote to its "
                                     "errors file.", labels=["job", "model"])
        rate = GaugeMetricFamily("mlserve_batch_job_rows_per_second", "Rows per second of a running batch job.",
                                 labels=["job", "model"])
        state = GaugeMetricFamily("mlserve_batch_job_state", "1 for the current state of a batch job.",
                                  labels=["job", "model", "state"])
        waiting = GaugeMetricFamily("mlserve_batch_job_waiting", "1 while live load holds a running batch job to "
                                    "its floor share of the engine.", labels=["job", "model"])
        for record in list(self._manager.jobs.values()):
            view = self._manager.view(record)
            labels = [record.job_id, record.model]
            done.add_metric(labels, view["rows_done"])
            failed.add_metric(labels, view["rows_failed"])
            rate.add_metric(labels, view["rows_per_s"])
            waiting.add_metric(labels, 1.0 if record.state is JobState.RUNNING and view["reason"].startswith("waiting")
                               else 0.0)
            for member in JobState:
                state.add_metric([*labels, member.name.lower()], 1.0 if member is record.state else 0.0)
        yield from (done, failed, rate, state, waiting)
