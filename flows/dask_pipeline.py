"""The data pipeline of data_pipeline.py, its mapped steps run on a local Dask cluster.

Same tasks, same policies, same failure injection; only the task runner
changes: `prefect_dask.DaskTaskRunner` starts a small local cluster (2 worker
processes, 1 thread each) for the run and ships each task run to it. The
policies hold there too: a partition that cannot be read is left out and the
run ends `PartialSuccess`.

    python flows/dask_pipeline.py
    python flows/dask_pipeline.py --fail-step extract:part-2
"""

from __future__ import annotations

from data_pipeline import POLICY, main, pipeline
from prefect_dask import DaskTaskRunner

from prefect_resilience import resilient_flow

# small, so that it starts in seconds; no dashboard, so no port to collide on
CLUSTER = {"n_workers": 2, "threads_per_worker": 1, "processes": True, "dashboard_address": None}

dask_pipeline = resilient_flow(
    pipeline,
    policy=POLICY,
    name="dask-pipeline",
    task_runner=DaskTaskRunner(cluster_kwargs=CLUSTER),
)

if __name__ == "__main__":
    main(dask_pipeline, __doc__.splitlines()[0])
