"""Test helpers: a real uvicorn server in a thread, and labelling tasks made from the shapes world
(half of them deliberately wrong for their prompt)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn

from t2i_rlhf.samples import png_bytes
from t2i_rlhf.services.app import create_app
from t2i_rlhf.services.local_server import free_port
from t2i_rlhf.services.settings import FeedbackSettings
from t2i_rlhf.shapes import judge, perturb, render, sample_prompts


@contextmanager
def live_server(settings: FeedbackSettings, host: str = "127.0.0.1", port: int | None = None) -> Iterator[str]:
    """Serve `create_app(settings)` over real HTTP on loopback; yields the base URL."""
    port = port or free_port(host)
    config = uvicorn.Config(create_app(settings), host=host, port=port, log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="feedback-live-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("feedback server did not start")
        time.sleep(0.02)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def demo_tasks(n: int, round: int = 0, seed: int = 0, wrong_every: int = 2) -> list[dict[str, Any]]:
    """`n` tasks with rendered PNGs; every `wrong_every`-th image shows a perturbed prompt, so
    about half should be judged bad. `expected_good` is the oracle judge's verdict."""
    tasks = []
    for i, prompt in enumerate(sample_prompts(n, split="all", seed=seed)):
        shown = perturb(prompt, 1, seed=seed + i)[0] if wrong_every and i % wrong_every == 1 else prompt
        image = render(shown, seed + i)
        tasks.append(
            {
                "sample_id": f"r{round}-s{seed}-{i:05d}",
                "round": round,
                "prompt": prompt.text,
                "category": prompt.category,
                "model_version": "test",
                "image": png_bytes(image),
                "expected_good": judge(image, prompt).good,
            }
        )
    return tasks
