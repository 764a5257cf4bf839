"""The flow one replay run executes, in a process of its own as a worker runs it.

The harness (bench/replay.py) creates the flow run through the API and starts
`python -m prefect.engine` with `PREFECT__FLOW_RUN_ID` and
`PREFECT__FLOW_ENTRYPOINT=bench/replay_flow.py:replay_flow`, as Prefect's process
worker does; `REPLAY_VARIANT` (JSON) says which workload, policy and code change
this process's flow is.
"""

from __future__ import annotations

import json
import os
from typing import Any

from replay_workloads import WORKLOADS_BY_NAME, build_flow

from prefect_resilience import WorkflowPolicy


def variant_flow(variant: dict[str, Any]) -> Any:
    """The flow of one variant: {workload, flow_name, policy, parallel, fallbacks}."""
    return build_flow(
        WORKLOADS_BY_NAME[variant["workload"]],
        variant["flow_name"],
        WorkflowPolicy.model_validate(variant["policy"]),
        parallel=frozenset(variant.get("parallel", ())),
        fallbacks=frozenset(variant.get("fallbacks", ())),
    )


replay_flow = (
    variant_flow(json.loads(os.environ["REPLAY_VARIANT"]))
    if "REPLAY_VARIANT" in os.environ
    else None
)
