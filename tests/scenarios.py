"""Steps and flows shared by the flow tests (importable by Dask worker processes)."""

from __future__ import annotations

from prefect import task

from prefect_resilience import WorkflowPolicy, resilient, resilient_flow


class Boom(RuntimeError):
    pass


@task
def from_cache(key: str) -> str:
    return f"cached {key}"


@resilient(policy="fail_fast", critical=True, impact="critical")
def database_setup(fail: bool = False) -> str:
    if fail:
        raise Boom("database down")
    return "schema ready"


@resilient(policy="continue", impact="minor", default="off")
def analytics_setup(fail: bool = False) -> str:
    if fail:
        raise Boom("analytics down")
    return "analytics on"


@resilient(fallbacks=[from_cache], default="nothing")
def fetch(key: str, fail: bool = False) -> str:
    if fail:
        raise Boom(f"fetch {key} failed")
    return f"live {key}"


@resilient(policy="partial_success", default=None, retries=1, retry_on=["ConnectionError"])
def report_section(section: str, fail: bool = False) -> str | None:
    if fail:
        raise Boom(f"section {section} failed")
    return section


@task
def summary(analytics: str, fetched: str) -> str:
    return f"{analytics}/{fetched}"


SCENARIO_POLICY = WorkflowPolicy(name="scenario", max_partial_failures=3)


def scenario(fail_fetch: bool, fail_sections: tuple[str, ...]) -> dict:
    """The same steps whatever the task runner: submit, map, direct calls."""
    db = database_setup()
    analytics = analytics_setup.submit(fail=True)
    fetched = fetch.map(["a", "b"], fail=[fail_fetch, False])
    sections = report_section.map(["x", "y", "z"], fail=[s in fail_sections for s in "xyz"])
    joined = summary.submit(analytics, fetched[0])  # tolerated and degraded futures as inputs
    return {
        "db": db,
        "joined": joined.result(),
        "analytics": analytics.result(),
        "fetched": fetched.result(),
        "sections": sections.result(),
    }


@resilient_flow(policy=SCENARIO_POLICY, name="scenario-threads")
def scenario_threads(fail_fetch: bool = True, fail_sections: tuple[str, ...] = ("y",)) -> dict:
    return scenario(fail_fetch, fail_sections)


def dask_scenario_flow():  # built on demand: prefect-dask is an optional extra
    from prefect_dask import DaskTaskRunner

    runner = DaskTaskRunner(
        cluster_kwargs={"n_workers": 2, "processes": True, "threads_per_worker": 1}
    )

    @resilient_flow(policy=SCENARIO_POLICY, name="scenario-dask", task_runner=runner)
    def scenario_dask(fail_fetch: bool = True, fail_sections: tuple[str, ...] = ("y",)) -> dict:
        return scenario(fail_fetch, fail_sections)

    return scenario_dask


def ray_scenario_flow():  # built on demand: prefect-ray is an optional extra
    from prefect_ray import RayTaskRunner

    # a local Ray cluster of its own, two CPUs as on the machines this runs on; tasks
    # run in Ray's worker processes
    runner = RayTaskRunner(init_kwargs={"num_cpus": 2, "include_dashboard": False})

    @resilient_flow(policy=SCENARIO_POLICY, name="scenario-ray", task_runner=runner)
    def scenario_ray(fail_fetch: bool = True, fail_sections: tuple[str, ...] = ("y",)) -> dict:
        return scenario(fail_fetch, fail_sections)

    return scenario_ray
