"""Prometheus families for in-server optimize jobs, read from the job table at scrape time."""

from __future__ import annotations

import time

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from mlserve.optimize.jobs import JobState, OptimizeJobs


class OptimizeCollector:
    """Per running optimize job: whether live load holds it stopped now, and for how long in all."""

    def __init__(self, jobs: OptimizeJobs) -> None:
        self._jobs = jobs

    def collect(self):
        waiting = GaugeMetricFamily("mlserve_optimize_job_waiting", "1 while live load holds a running optimize "
                                    "job stopped (it continues once the models are quiet).", labels=["job", "model"])
        paused = CounterMetricFamily("mlserve_optimize_job_paused_seconds", "Seconds a running optimize job has "
                                     "spent stopped for live load.", labels=["job", "model"])
        now = time.monotonic()
        for job in list(self._jobs.jobs.values()):
            if job.state is not JobState.RUNNING:
                continue
            labels = [job.job_id, job.model]
            waiting.add_metric(labels, 1.0 if job.pause.waiting else 0.0)
            paused.add_metric(labels, job.pause.stopped_s(now))
        yield from (waiting, paused)
