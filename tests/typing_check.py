"""Checked by mypy in `make test`, never run: the decorators keep what they wrap typed.

Each `assert_type` states what a type checker must infer; a decorator that
returned `Any` again would fail `make test` here.
"""

from __future__ import annotations

from typing import assert_type

from prefect import Flow, flow, task
from prefect.futures import PrefectFuture

from prefect_resilience import ResilientTask, resilient, resilient_flow


@resilient
def bare(x: int, label: str = "") -> float:
    return x / 2


@resilient(policy="continue", default=0.0, retries=2)
def configured(x: int) -> float:
    return float(x)


@resilient(policy="fail_fast")
@task(retries=1)
def stacked(name: str) -> list[str]:
    return [name]


@resilient(policy="continue", default=None)
async def fetched(url: str) -> bytes:
    return url.encode()


@resilient_flow
def plain_flow(n: int) -> int:
    return n


@resilient_flow(policy=None, name="named")
@flow
def stacked_flow(n: int) -> str:
    return str(n)


def check() -> None:
    # calls type as the function's own: a decorator returning Any would fail these
    assert_type(bare(1), float)
    assert_type(bare(1, label="x"), float)
    assert_type(configured(1), float)
    assert_type(stacked("a"), list[str])
    assert_type(plain_flow(1), int)
    assert_type(stacked_flow(1), str)
    assert isinstance(bare, ResilientTask) and isinstance(plain_flow, Flow)
    future = configured.submit(1)
    assert_type(future, PrefectFuture[float])
    assert_type(future.result(), float)
    # a wrong argument is an error (warn_unused_ignores: were it accepted, these would fail)
    bare("one")  # type: ignore[call-overload]
    plain_flow("n")  # type: ignore[call-overload]
