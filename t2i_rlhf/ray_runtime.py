"""How every entrypoint gets its Ray: join the cluster a job runs on, or start a local one."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

from t2i_rlhf.logs import WORKER_SETUP_HOOK, library_env, quiet, worker_setup

log = logging.getLogger(__name__)

# what a local instance's workers need: no hub, and one BLAS thread each (the actors and the
# training workers set their own torch thread counts); library_env() adds the driver's log settings.
# Ray Train's preemption watcher polls for nodes being drained, which a one-machine instance never
# is; it is one more actor started and killed with every fit.
LOCAL_ENV_VARS = {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
                  "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}


def resource_bundle(num_cpus: float, num_gpus: float, extra: Mapping[str, float] | None = None) -> dict[str, float]:
    """The Ray resources one actor or task reserves, on one node: CPU and GPU where above 0, plus
    custom resources (e.g. `{"gen_node": 0.01}`). The rollout's placement group and the run's
    resource check (online/resources.py) both build their bundles here, so they cannot disagree."""
    out = {k: float(v) for k, v in (("CPU", num_cpus), ("GPU", num_gpus)) if v > 0}
    out.update({k: float(v) for k, v in (extra or {}).items() if v > 0})
    return out


def init_ray(min_cpus: int = 1) -> None:
    """Join the cluster named by RAY_ADDRESS (a submitted job: it already has its runtime env,
    and a second one would conflict), else start a local instance with at least `min_cpus`
    logical CPUs, since ray.init's default of one per core is too few on a small machine for
    actors, a training group and Ray Data to coexist. A no-op when Ray is already up."""
    import ray

    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init()
        return
    cpus = max(min_cpus, os.cpu_count() or 1)
    # The dashboard serves the State API, which Ray Train's placement-group cleaner polls (without
    # it, every training run logs "Failed to query Ray Train Controller actor state"); 127.0.0.1.
    # Where library chatter is off, the workers' output and Ray's own INFO lines stay in the
    # session's log files; errors that Ray pushes to the driver (a worker that died, a task that
    # failed) still reach the console. One of those pushes is not an error: the raylet warns each
    # time the Python workers started reach 4x, 6x, 8x... its startup concurrency, which it takes
    # from the physical cores (2 here), though the actors, the training group and Ray Data's
    # tasks of a round need ~16 workers by design. The raylet reads its concurrency from this
    # variable (inherited from the driver), so the warning keeps its meaning for a real leak.
    os.environ.setdefault("RAY_worker_maximum_startup_concurrency", str(2 * cpus))
    to_console = not quiet()
    context = ray.init(num_cpus=cpus, include_dashboard=True, dashboard_host="127.0.0.1",
                       log_to_driver=to_console, logging_level=logging.INFO if to_console else logging.WARNING,
                       runtime_env={"env_vars": {**LOCAL_ENV_VARS, **library_env()},
                                    "worker_process_setup_hook": WORKER_SETUP_HOOK})
    session = context.address_info.get("session_dir", "the Ray session directory")
    log.info("local Ray instance: %d logical CPUs, dashboard http://%s, logs in %s/logs%s", cpus,
             context.dashboard_url, session, "" if to_console else " (-v shows them here)")
    worker_setup()  # the driver runs Ray Data too (re-scoring): the same quiet as its workers
