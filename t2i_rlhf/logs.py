"""Who sees which log line. The console is for the person running a command: this package's progress,
the few lines they act on, and every warning. Libraries' INFO lines (one httpx line per HTTP
request, matplotlib's font cache) go only to the run's log file (`to_file`).

transformers, diffusers and Ray Data print through handlers of their own, whose level each process
reads from the environment when it first imports the library. So `configure` sets those variables
(QUIET_ENV) before anything imports them, and the Ray workers get the same ones in their runtime
env (ray_runtime.init_ray; deploy/runtime_env.yaml for a submitted job). `-v` turns all of it off.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Loggers whose INFO lines the console shows; any other logger reaches it from WARNING up.
CONSOLE_INFO = ("t2i_rlhf", "__main__")
QUIET_ENV = {
    # e.g. "`CLIPImageProcessor` requires torchvision (not installed); falling back to ...", which
    # every process that loads the CLIP prints once: a notice, not a problem
    "TRANSFORMERS_VERBOSITY": "error",
    "DIFFUSERS_VERBOSITY": "error",
    # transformers' "Loading weights" bar, at every model load in every actor
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    # Ray Data's "Starting execution of Dataset ...", "Execution plan ...", "... finished" lines
    "RAY_DATA_LOG_LEVEL": "WARNING",
    # Ray Data's progress bars: from a Ray Train worker's dataset shards they reach the console as
    # a line per refresh ("- ReadFilesParquetV2: Tasks: 1; Actors: 0; Queued blocks: 0 ...")
    "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
    # what `quiet` reads, in the driver and in the workers
    "T2I_RLHF_QUIET_LIBRARIES": "1",
}


class ConsoleFilter(logging.Filter):
    """Passes this package's records at any level and other loggers' from WARNING up."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or record.name.split(".", 1)[0] in CONSOLE_INFO


def configure(verbose: bool = False) -> None:
    """An entry point's logging. As `logging.basicConfig`, it does nothing where the root logger
    already has handlers (pytest, a program that calls us), environment included, so an in-process
    call changes nothing for its caller. verbose: DEBUG, and every library as loud as it is."""
    root = logging.getLogger()
    if root.handlers:
        return
    if not verbose:
        for key, value in QUIET_ENV.items():
            os.environ.setdefault(key, value)  # a variable the user set wins
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(FORMAT))
    if not verbose:
        handler.addFilter(ConsoleFilter())
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)


def library_env() -> dict[str, str]:
    """The QUIET_ENV variables as this process has them, for the environment of Ray workers."""
    return {key: os.environ[key] for key in QUIET_ENV if key in os.environ}


def quiet() -> bool:
    """Whether library chatter is off in this process (set by `configure`, or inherited)."""
    return os.environ.get("T2I_RLHF_QUIET_LIBRARIES") == "1"


def ray_train_log_level() -> str:
    """Ray Train's console level: its INFO lines (worker group start-up, "Moving model to device")
    stay in its own log files under the Ray session directory unless the run is verbose."""
    return "WARNING" if quiet() else "INFO"


# With its progress bars off, Ray Data says so once per process, at WARNING ("Progress bars
# disabled. To enable, set ..."); in a process without a terminal it logs progress at INFO instead
RAY_DATA_PROGRESS_LOGGER = "ray.data._internal.progress"


def worker_setup() -> None:
    """Ray's `worker_process_setup_hook` (ray_runtime.init_ray; deploy/runtime_env.yaml). In every
    worker, Ray Train's internal actors included: no Ray deprecation warnings about calls Ray
    itself makes (Ray Train sets `ExecutionOptions.exclude_resources`, then Ray Data warns), and
    nothing from Ray Data's progress reporting below ERROR. Ray installs its warning filter when
    imported, so an environment variable cannot do the first; the hook runs after that import."""
    if quiet():
        import warnings

        from ray.util.annotations import RayDeprecationWarning

        warnings.filterwarnings("ignore", category=RayDeprecationWarning)
        logging.getLogger(RAY_DATA_PROGRESS_LOGGER).setLevel(logging.ERROR)


WORKER_SETUP_HOOK = "t2i_rlhf.logs.worker_setup"


def quiet_ray_train_reports() -> None:
    """Ray Train V2 logs every `report()` call at INFO ("Reporting training result 7: ...") under a
    logger named after its source file, outside the "ray.train" loggers `LoggingConfig` sets. Call
    it in a training worker: imports Ray Train."""
    if quiet():
        from ray.train.v2._internal.execution import context

        logging.getLogger(context.__file__).setLevel(logging.WARNING)


def quiet_diffusers_loading() -> None:
    """diffusers' "Loading pipeline components..." bar has no environment switch; turn it off in
    this process where library chatter is off. Imports diffusers: call it where that is loaded."""
    if quiet():
        from diffusers.utils import logging as diffusers_logging

        diffusers_logging.disable_progress_bar()


@contextlib.contextmanager
def to_file(path: Path) -> Iterator[Path]:
    """While open, also write every record the root logger passes (INFO and up under
    `configure`), libraries' included, to `path`; appends, so a resumed run keeps one file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, mode="a", encoding="utf-8")
    handler.setFormatter(logging.Formatter(FORMAT))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield path
    finally:
        root.removeHandler(handler)
        handler.close()
