"""The service's command line: `feedback serve` (the feedback service under uvicorn) and `label
simulate` (simulated labellers posting over HTTP). `python -m t2i_rlhf.services` runs it on its own,
without the training stack (it starts in about a second, which restarts in the durability test and
the load benchmark rely on); `t2i-rlhf` registers the same command groups (commands/feedback.py)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import sys
from pathlib import Path

from t2i_rlhf import logs

logger = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `feedback` and `label` command groups to `sub`."""
    fb = sub.add_parser("feedback", help="the feedback service (HTTP API + labelling page)")
    fb_sub = fb.add_subparsers(dest="feedback_command", required=True)
    s = fb_sub.add_parser(
        "serve",
        help="run the feedback service with uvicorn",
        description="Settings not given fall back to T2I_FEEDBACK_* environment variables.",
    )
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--db", type=Path, default=None, help="SQLite file (default storage/feedback.db)")
    s.add_argument("--admin-token", default=None, help="or T2I_FEEDBACK_ADMIN_TOKEN; random if neither")
    s.add_argument(
        "--labeller-token",
        action="append",
        default=None,
        help="a shared labeller token, for a one-person local run; repeatable; or "
        "T2I_FEEDBACK_SHARED_LABELLER_TOKENS (comma-separated)",
    )
    s.add_argument("--labels-per-sample", type=int, default=None)
    s.add_argument("--lease-seconds", type=float, default=None)
    s.add_argument("--max-body-bytes", type=int, default=None)
    s.add_argument("--synchronous", choices=("FULL", "NORMAL"), default=None)
    s.set_defaults(func=serve)

    lab = sub.add_parser("label", help="labelling clients")
    lab_sub = lab.add_subparsers(dest="label_command", required=True)
    m = lab_sub.add_parser("simulate", help="simulated labellers: oracle judge + noise, over HTTP")
    m.add_argument("--url", default="http://127.0.0.1:8000")
    m.add_argument(
        "--token",
        default=os.environ.get("T2I_FEEDBACK_TOKEN"),
        help="labeller (or admin) token; default T2I_FEEDBACK_TOKEN",
    )
    m.add_argument("--workers", type=int, default=4)
    m.add_argument(
        "--noise",
        type=_noise,
        default=0.1,
        help="fraction of verdicts flipped; or one per worker, comma-separated (e.g. 0,0,0,0.5: one careless)",
    )
    m.add_argument(
        "--accounts",
        action="store_true",
        help="give each worker its own labeller account (created with the admin token from "
        "T2I_FEEDBACK_ADMIN_TOKEN) instead of sharing --token",
    )
    m.add_argument("--max-labels", type=int, default=None)
    m.add_argument("--round", type=int, default=None, help="only tasks of this round")
    m.add_argument("--seed", type=int, default=0)
    m.add_argument(
        "--follow", action="store_true", help="keep polling for new tasks instead of stopping when idle"
    )
    m.add_argument("--timeout", type=float, default=None, help="stop after this many seconds")
    m.add_argument(
        "--labels-per-s",
        type=float,
        default=None,
        help="each worker's mean rate, as a person labels; default (or 0): as fast as possible",
    )
    m.add_argument(
        "--rate-spread",
        type=float,
        default=None,
        help="coefficient of variation of each label's think time (lognormal; 0: every label takes "
        "1 / --labels-per-s); default 0.5 (simulate.DEFAULT_RATE_SPREAD)",
    )
    m.set_defaults(func=simulate)


def _noise(text: str) -> float | list[float]:
    values = [float(x) for x in text.split(",")]
    return values[0] if len(values) == 1 else values


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    from t2i_rlhf.services.app import create_app
    from t2i_rlhf.services.settings import ENV_PREFIX, FeedbackSettings

    admin = args.admin_token or os.environ.get(ENV_PREFIX + "ADMIN_TOKEN")
    if not admin:
        admin = secrets.token_hex(24)
        logger.warning("no admin token configured; generated one for this run: %s", admin)
    try:
        settings = FeedbackSettings.from_env(
            db_path=args.db,
            admin_token=admin,
            labeller_tokens=args.labeller_token,
            labels_per_sample=args.labels_per_sample,
            lease_seconds=args.lease_seconds,
            max_body_bytes=args.max_body_bytes,
            synchronous=args.synchronous,
        )
    except Exception as e:  # pydantic ValidationError: show it as a user error
        raise ValueError(str(e)) from e
    uvicorn.run(
        create_app(settings),
        host=args.host,
        port=args.port,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=10,
    )
    return 0


def simulate(args: argparse.Namespace) -> int:
    from t2i_rlhf.services.simulate import DEFAULT_RATE_SPREAD, ThinkTime, simulate_labellers

    spread = DEFAULT_RATE_SPREAD if args.rate_spread is None else args.rate_spread
    think = ThinkTime(args.labels_per_s, spread)  # ValueError: a user error, before any request
    admin = os.environ.get("T2I_FEEDBACK_ADMIN_TOKEN") if args.accounts else None
    if args.accounts and not admin:
        raise ValueError("--accounts needs the admin token in T2I_FEEDBACK_ADMIN_TOKEN")
    if not args.token and not admin:
        raise ValueError("give --token or set T2I_FEEDBACK_TOKEN")
    workers = len(args.noise) if isinstance(args.noise, list) else args.workers
    result = simulate_labellers(
        args.url,
        args.token,
        admin_token=admin,
        workers=workers,
        noise=args.noise,
        max_labels=args.max_labels,
        until_idle=not args.follow,
        seed=args.seed,
        round=args.round,
        timeout_s=args.timeout,
        think=think,
    )
    print(json.dumps(result.as_dict()))
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m t2i_rlhf.services feedback serve ...` / `... label simulate ...`."""
    parser = argparse.ArgumentParser(prog="python -m t2i_rlhf.services")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    logs.configure()
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
