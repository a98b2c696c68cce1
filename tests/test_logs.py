"""Who sees which log line (t2i_rlhf/logs.py): the console passes this package's INFO and every
warning, the run's log file gets libraries' INFO too, and Ray jobs get the same library settings."""

from __future__ import annotations

import logging
from pathlib import Path

import yaml

from t2i_rlhf import logs

REPO = Path(__file__).resolve().parents[1]


def record(name: str, level: int) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, "message", None, None)


def test_console_shows_package_info_and_every_warning_but_no_library_info() -> None:
    console = logs.ConsoleFilter()
    assert console.filter(record("t2i_rlhf.run", logging.INFO))
    assert console.filter(record("__main__", logging.INFO))
    assert not console.filter(record("httpx", logging.INFO))  # one line per HTTP request
    assert not console.filter(record("t2i_rlhf_other", logging.INFO))  # a prefix is not the package
    assert console.filter(record("httpx", logging.WARNING))


def test_configure_quiets_libraries_unless_verbose_or_set(monkeypatch) -> None:
    root, level = logging.getLogger(), logging.getLogger().level
    monkeypatch.setattr(root, "handlers", [])  # as in a fresh process; pytest's come back after
    for key in logs.QUIET_ENV:
        monkeypatch.setenv(key, "")  # recorded, so what configure sets is undone after the test
        monkeypatch.delenv(key)
    try:
        logs.configure(verbose=True)
        assert logs.library_env() == {} and not logs.quiet() and root.level == logging.DEBUG
        assert not root.handlers[0].filters  # verbose: the console shows every record
        root.handlers.clear()
        monkeypatch.setenv("RAY_DATA_LOG_LEVEL", "DEBUG")  # the user's own choice wins
        logs.configure()
        assert logs.library_env() == {**logs.QUIET_ENV, "RAY_DATA_LOG_LEVEL": "DEBUG"}
        assert logs.quiet() and logs.ray_train_log_level() == "WARNING" and root.level == logging.INFO
        assert isinstance(root.handlers[0].filters[0], logs.ConsoleFilter)
        monkeypatch.delenv("T2I_RLHF_QUIET_LIBRARIES")
        logs.configure()  # configured already (as under pytest): changes nothing, environment included
        assert not logs.quiet() and len(root.handlers) == 1
    finally:
        root.setLevel(level)


def test_the_log_file_gets_library_info(tmp_path, caplog) -> None:
    caplog.set_level(logging.INFO)
    path = tmp_path / "logs" / "driver.log"
    with logs.to_file(path):
        logging.getLogger("httpx").info("HTTP Request: GET /v1/health")
    logging.getLogger("httpx").info("after the run")
    text = path.read_text()
    assert "httpx: HTTP Request: GET /v1/health" in text and "after the run" not in text


def test_a_submitted_job_gets_the_same_library_settings() -> None:
    env = yaml.safe_load((REPO / "deploy" / "runtime_env.yaml").read_text())["env_vars"]
    assert {key: env.get(key) for key in logs.QUIET_ENV} == logs.QUIET_ENV


def test_workers_drop_rays_own_deprecation_warnings_and_logged_progress(monkeypatch) -> None:
    """The worker setup hook, named the same in the local runtime env and the job's."""
    import warnings

    from ray.util.annotations import RayDeprecationWarning

    env = yaml.safe_load((REPO / "deploy" / "runtime_env.yaml").read_text())
    assert env["worker_process_setup_hook"] == logs.WORKER_SETUP_HOOK
    monkeypatch.setenv("T2I_RLHF_QUIET_LIBRARIES", "1")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        logs.worker_setup()
        warnings.warn("exclude_resources is deprecated", RayDeprecationWarning, stacklevel=1)
        warnings.warn("ours", UserWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["ours"]
    progress = logging.getLogger(logs.RAY_DATA_PROGRESS_LOGGER)
    try:
        assert not progress.isEnabledFor(logging.WARNING) and progress.isEnabledFor(logging.ERROR)
    finally:
        progress.setLevel(logging.NOTSET)
