"""Local stand-ins for what a deployment runs separately: the feedback service (uvicorn) and
simulated labellers, each a child process talking real HTTP on 127.0.0.1. They die with the
driver (PR_SET_PDEATHSIG), and a restarted driver starts them again on the same database."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from t2i_rlhf.services.local_server import free_port, wait_healthy

log = logging.getLogger(__name__)


def _die_with_parent() -> None:
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _cli(*args: str) -> list[str]:
    """The service's own entry point: starts in about a second (no torch import)."""
    return [sys.executable, "-m", "t2i_rlhf.services", *args]


def stop(proc: subprocess.Popen, grace_s: float = 15.0) -> None:
    """SIGTERM, then SIGKILL if the child has not exited within `grace_s`."""
    proc.terminate()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace_s)
    if proc.poll() is None:
        proc.kill()


@contextlib.contextmanager
def local_feedback_service(db_path: Path, admin_token: str, labeller_token: str,
                           log_path: Path) -> Iterator[str]:
    """Start `t2i-rlhf feedback serve` on a free loopback port; yields its URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "T2I_FEEDBACK_ADMIN_TOKEN": admin_token,
           "T2I_FEEDBACK_SHARED_LABELLER_TOKENS": labeller_token}
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(_cli("feedback", "serve", "--host", "127.0.0.1", "--port", str(port),
                                     "--db", str(db_path)),
                                env=env, stdout=out, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
    try:
        wait_healthy(url, 60.0, proc)
        log.info("local feedback service on %s (db %s, its log %s)", url, db_path, log_path)
        yield url
    finally:
        stop(proc)


@contextlib.contextmanager
def simulated_labellers(url: str, token: str, workers: int, noise: float, seed: int,
                        log_path: Path, labels_per_s: float | None = None,
                        rate_spread: float | None = None) -> Iterator[subprocess.Popen]:
    """`t2i-rlhf label simulate --follow` in a child process: the people of the demo, each at
    `labels_per_s` (None or 0: as fast as possible) with think times of CV `rate_spread` (None:
    the command's default)."""
    rate = []
    if labels_per_s:
        rate = ["--labels-per-s", str(labels_per_s)]
        rate += [] if rate_spread is None else ["--rate-spread", str(rate_spread)]
        log.info("simulated labellers: %d at %.3g labels/s each (%.1f s a label, spread %s)",
                 workers, labels_per_s, 1 / labels_per_s, "default" if rate_spread is None else rate_spread)
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(
            _cli("label", "simulate", "--url", url, "--workers", str(workers),
                 "--noise", str(noise), "--seed", str(seed), "--follow", *rate),
            stdout=out, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent,
            # the token goes by environment, not argv: a random token that starts with "-" was
            # read by argparse as a missing value (1 run in 64), and argv is visible in `ps`
            env={**os.environ, "OMP_NUM_THREADS": "1", "T2I_FEEDBACK_TOKEN": token},
        )
    try:
        yield proc
    finally:
        stop(proc)


def tokens_file(run_dir: Path) -> Path:
    return run_dir / "feedback-tokens"


def tokens(run_dir: Path, admin_env: str, labeller_env: str) -> tuple[str, str]:
    """Tokens from the environment, else generated once per run and kept (mode 600) in the run
    directory so a resumed driver and its service agree."""
    path = tokens_file(run_dir)
    if os.environ.get(admin_env) and os.environ.get(labeller_env):
        return os.environ[admin_env], os.environ[labeller_env]
    if path.exists():
        admin, labeller = path.read_text().split()
        return admin, labeller
    admin, labeller = secrets.token_hex(24), secrets.token_hex(24)  # never "-"-led, wherever they are passed
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{admin}\n{labeller}\n")
    path.chmod(0o600)
    return admin, labeller


def labeller_token_hint(run_dir: Path, admin_env: str, labeller_env: str) -> str:
    """How a person gets the labeller token `tokens` chose, without printing the token itself."""
    if os.environ.get(admin_env) and os.environ.get(labeller_env):
        return f"${labeller_env}"
    return f"sed -n 2p {tokens_file(run_dir)}"
