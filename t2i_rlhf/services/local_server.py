"""Starting the feedback service as a local child process: a free loopback port to give it, and a
wait until it answers /v1/health (or has died). The run's local stand-in service
(online/local_services.py), the load benchmark and the tests start it this way."""

from __future__ import annotations

import socket
import subprocess
import time

import httpx


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now (the OS picks it), for a server about to start."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_healthy(url: str, timeout_s: float = 60.0, proc: subprocess.Popen | None = None) -> None:
    """Poll `url`/v1/health until it answers 200. With `proc` (the server's process), fail at
    once if it exits, quoting its stderr when that is a pipe; kill it on a time-out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            err = proc.stderr.read().decode()[-2000:] if proc.stderr else ""
            raise RuntimeError(f"server exited during start-up {err}".rstrip())
        try:
            if httpx.get(f"{url}/v1/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.1)
    if proc is not None:
        proc.kill()
    raise RuntimeError(f"feedback service at {url} did not become healthy in {timeout_s:.0f} s")
