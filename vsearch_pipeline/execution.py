"""Where the steps of a run execute: the Dagster executor named by the `execution` settings.

`in_process` runs every step in the run's own process; `multiprocess` (the default) one process
per step on this machine; `dask` sends each step to an existing Dask cluster, whose workers may
be on other machines (see docs/scale-out.md). No cluster code lives here: Dask schedules the
steps, and the step itself runs through dagster-dask's worker function.

dagster-dask (0.29) as released cannot run this graph's partitions in parallel, so the `dask`
executor here is its executor (the same `cluster: existing:` config) with two fixes:

- Each step's Dask task was keyed `<job>.<step>`, the same for every run of a job. The Dask
  scheduler treats a key it already holds as the same task: while one partition's run was on
  the cluster, another partition's run of the same job got that run's results back and its own
  steps never ran. Here the key ends with the run id.
- A partitioned run carries its partition subset, a Dagster record that refuses iteration; the
  Dask client (2025 and later) walks every tuple it is given, so every partitioned run failed
  at submit ("Iteration is not allowed on `@record` KeyRangesPartitionsSubset"). Here the
  step's arguments and events cross the cluster wrapped, so Dask passes them through untouched.
"""

import json
from collections.abc import Iterator

from dagster import (
    DagsterEvent,
    Executor,
    ExecutorDefinition,
    Field,
    Selector,
    StringSource,
    executor,
    in_process_executor,
    multiple_process_executor_requirements,
    multiprocess_executor,
)
from dagster._core.errors import raise_execution_interrupts
from dagster._core.execution.context.system import PlanOrchestrationContext
from dagster._core.execution.plan.plan import ExecutionPlan
from dagster._core.execution.retries import RetryMode
from dagster._utils import iterate_with_context

from vsearch_pipeline.settings import ExecutionSettings

EXECUTORS = ("in_process", "multiprocess", "dask")
# dagster-dask's tag for the Dask worker resources a step needs, e.g. '{"GPU": 1}'
DASK_RESOURCES_TAG = "dagster-dask/resource_requirements"


class Opaque:
    """A value that Dask must carry as it is, not look into."""

    __slots__ = ("value",)

    def __init__(self, value: object):
        self.value = value


def run_step_on_worker(dependencies: list, step: Opaque) -> Opaque:
    """One step on a Dask worker; `dependencies` (the upstream steps' futures) only orders it."""
    from dagster_dask.executor import query_on_dask_worker

    return Opaque(list(query_on_dask_worker(None, *step.value)))


class RunScopedDaskExecutor(Executor):
    """dagster-dask's executor, with Dask task keys unique per run (see the module docstring).
    Dask is imported only when a run uses it (it takes seconds)."""

    def __init__(self, address: str):
        self.address = address

    @property
    def retries(self) -> RetryMode:
        return RetryMode.DISABLED

    def execute(self, plan_context: PlanOrchestrationContext, execution_plan: ExecutionPlan
                ) -> Iterator[DagsterEvent]:
        import dask.distributed

        if not plan_context.instance.is_persistent:
            raise ValueError("Dask execution needs a persistent Dagster instance (DAGSTER_HOME)")
        run = plan_context.dagster_run
        instance_ref = plan_context.instance.get_ref()
        with dask.distributed.Client(self.address) as client:
            futures = {}
            for level in execution_plan.get_steps_to_execute_by_level():
                for step in level:
                    upstream = [futures[key] for step_input in step.step_inputs
                                for key in step_input.dependency_keys]
                    futures[step.key] = client.submit(
                        run_step_on_worker, upstream,
                        Opaque((plan_context.reconstructable_job, run, plan_context.run_config,
                                [step.key], instance_ref, execution_plan.known_state)),
                        key=f"{plan_context.job_name}.{step.key}-{run.run_id}",
                        resources=json.loads(step.tags.get(DASK_RESOURCES_TAG, "{}")),
                    )
            done = dask.distributed.as_completed(list(futures.values()), with_results=True)
            for _future, events in iterate_with_context(raise_execution_interrupts, done):
                yield from events.value


@executor(
    name="dask",
    config_schema={"cluster": Field(Selector({
        "existing": Field({"address": StringSource}, description="The scheduler of a running cluster."),
    }))},
    requirements=multiple_process_executor_requirements(),
)
def dask_executor(init_context) -> RunScopedDaskExecutor:
    """dagster-dask's `dask` executor on an existing cluster (the same config), safe for several
    runs of a job at once."""
    return RunScopedDaskExecutor(init_context.executor_config["cluster"]["existing"]["address"])


def executor_for(settings: ExecutionSettings) -> ExecutorDefinition:
    """The executor of every job of a home, configured from its `execution` settings."""
    if settings.executor == "in_process":
        return in_process_executor
    if settings.executor == "multiprocess":
        if settings.max_concurrent is None:
            return multiprocess_executor
        return multiprocess_executor.configured({"max_concurrent": settings.max_concurrent})
    if settings.executor == "dask":
        if not settings.dask_address:
            raise ValueError("execution.executor is 'dask' but execution.dask_address is not set: "
                             "give the scheduler of an existing Dask cluster, e.g. tcp://host:8786")
        return dask_executor.configured({"cluster": {"existing": {"address": settings.dask_address}}})
    raise ValueError(f"execution.executor must be one of {', '.join(EXECUTORS)}, "
                     f"got {settings.executor!r}")
