"""Label Studio as a second target for `bench_feedback_load.py` (issue 25): the tool teams use today
for human labels, driven by the same load generator at the same connection counts.

`label-studio start` (the way a pip install runs it: Django's threaded `runserver`, one process) on
127.0.0.1 and a free port, with a fresh SQLite database in a temp dir, a user, an API token and a
single organisation created non-interactively (`--username/--password/--user-token`, and
`--enable-legacy-api-token` so that `Authorization: Token ...` is accepted), everything that would
reach the network switched off (analytics, the PyPI version check, Sentry). One project with a
good/bad `Choices` config over an `Image`; its tasks are the same 189-byte PNG that our service
gets, as a `data:` URL, imported in one `POST /api/projects/{id}/import`. A label is one
`POST /api/tasks/{id}/annotations` (a single `choices` result), one per request, as the user of the
token (Label Studio has no per-request labeller; ours is told one).

`durability()` reads what Label Studio's SQLite connections run with: the PRAGMAs on its database
file, opened by the same libsqlite3 that its Python links, as Django opens it (Django 5.2's sqlite3
backend sets only `foreign_keys` and `legacy_alter_table`; Label Studio 1.23's settings give it no
OPTIONS/init_command, and its only PRAGMA, `journal_mode=wal` in server.py, is behind AZURE_MOUNT_FIX).
Seen under strace (1.23.2, this setup): one annotation POST is 9 SQLite transactions, each with 4
fdatasyncs (journal, directory, journal header, database) and the journal's unlink, all before the
201 is sent.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import sqlite3
import subprocess
import time
from contextlib import closing
from pathlib import Path

import httpx

HOST = "127.0.0.1"
DB_NAME = "label_studio.sqlite3"  # in the data dir (settings/base.py DATABASE_NAME_DEFAULT)
USER, PASSWORD, TOKEN = "bench@localhost", "bench-password-25", "bench-label-studio-token-25"
LABEL_CONFIG = (
    '<View><Image name="image" value="$image"/>'
    '<Choices name="label" toName="image" choice="single">'
    '<Choice value="good"/><Choice value="bad"/></Choices></View>'
)
# Set with the LABEL_STUDIO_ prefix, which Label Studio's get_env reads before the bare name.
OFFLINE_ENV = {
    "DJANGO_DB": "sqlite",
    "COLLECT_ANALYTICS": "false",  # contextlog: no usage reports
    "LATEST_VERSION_CHECK": "false",  # no PyPI query at import time
    "SENTRY_DSN": "",  # settings/label_studio.py defaults to a sentry.io DSN
    "FRONTEND_SENTRY_DSN": "",
    "FEATURE_FLAGS_OFFLINE": "true",  # no LaunchDarkly
    "DISABLE_SIGNUP_WITHOUT_LINK": "true",
    "DEBUG": "false",
    "LOG_LEVEL": "WARNING",
}


def redis_listening() -> bool:
    """Label Studio's RQ queues are fixed at localhost:6379 (settings/base.py RQ_QUEUES); with a Redis
    there, its per-annotation jobs (counters, stats) run in workers instead of inside the request."""
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("localhost", 6379)) == 0


def auth_header() -> str:
    return f"Token {TOKEN}"


def annotation_request(rows: list[tuple[int, str, str]]) -> tuple[str, dict]:
    """(task id, label, labeller) -> one annotation POST; Label Studio has no batch route."""
    if len(rows) != 1:
        raise ValueError("Label Studio takes one annotation per request")
    task_id, label, _who = rows[0]
    result = [{"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": [label]}}]
    return f"/api/tasks/{task_id}/annotations", {"result": result}


def start(venv: Path, data_dir: Path, port: int, timeout_s: float = 300) -> subprocess.Popen:
    """`label-studio start` on a fresh data dir (migrations run first: tens of seconds)."""
    exe = Path(venv).absolute() / "bin" / "label-studio"
    if not exe.exists():
        raise FileNotFoundError(f"{exe} not found: `make label-studio-venv` creates it")
    data_dir.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LABEL_STUDIO_", "DJANGO_", "PYTHON"))}
    env.update({f"LABEL_STUDIO_{k}": v for k, v in OFFLINE_ENV.items()})
    env["LABEL_STUDIO_BASE_DATA_DIR"] = str(data_dir)
    env["XDG_CONFIG_HOME"] = str(data_dir / "config")  # its contextlog writes a user_id there
    cmd = [
        str(exe),
        "start",
        "--no-browser",
        "--internal-host",
        HOST,
        "--port",
        str(port),
        "--data-dir",
        str(data_dir),
        "--username",
        USER,
        "--password",
        PASSWORD,
        "--user-token",
        TOKEN,
        "--enable-legacy-api-token",
        "--log-level",
        "WARNING",
    ]
    log = open(data_dir / "label-studio.log", "wb")  # noqa: SIM115 - the child writes it
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    log.close()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"label-studio exited: {(data_dir / 'label-studio.log').read_text()[-2000:]}")
        try:
            if httpx.get(f"http://{HOST}:{port}/health", timeout=2).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise RuntimeError(f"label-studio on port {port} not healthy in {timeout_s:.0f} s")


def setup(port: int, n_tasks: int, png: bytes) -> list[int]:
    """A good/bad project and `n_tasks` image tasks; returns their task ids."""
    image = "data:image/png;base64," + base64.b64encode(png).decode()
    with httpx.Client(base_url=f"http://{HOST}:{port}", headers={"Authorization": auth_header()}, timeout=600) as c:
        r = c.post("/api/projects", json={"title": "bench-feedback-load", "label_config": LABEL_CONFIG})
        r.raise_for_status()
        project = r.json()["id"]
        r = c.post(
            f"/api/projects/{project}/import",
            params={"return_task_ids": "true"},
            json=[{"image": image} for _ in range(n_tasks)],
        )
        r.raise_for_status()
        ids = r.json()["task_ids"]
    if len(ids) != n_tasks:
        raise RuntimeError(f"imported {len(ids)} of {n_tasks} tasks")
    return ids


def annotation_count(data_dir: Path) -> int:
    """Rows in Label Studio's annotation table (read-only), to check acknowledged == stored."""
    with closing(sqlite3.connect(f"file:{data_dir / DB_NAME}?mode=ro", uri=True)) as c:
        return c.execute("SELECT count(*) FROM task_completion").fetchone()[0]


def durability(venv: Path, data_dir: Path) -> dict:
    """journal_mode / synchronous of a connection to Label Studio's database opened as Django opens
    it, by Label Studio's own Python (so its libsqlite3 and its compile-time defaults)."""
    code = (
        "import json, sqlite3, sys\n"
        "c = sqlite3.connect(sys.argv[1])\n"
        "c.execute('PRAGMA foreign_keys = ON'); c.execute('PRAGMA legacy_alter_table = OFF')\n"
        "print(json.dumps([str(c.execute(q).fetchone()[0]) for q in sys.argv[2:]]))\n"
    )
    sql = (
        "PRAGMA journal_mode",
        "PRAGMA synchronous",
        "SELECT sqlite_version()",
        "SELECT group_concat(compile_options, ' ') FROM pragma_compile_options "
        "WHERE compile_options LIKE '%SYNC%' OR compile_options LIKE '%JOURNAL%'",
    )
    python = str(Path(venv).absolute() / "bin" / "python")
    run = subprocess.run(
        [python, "-c", code, str(data_dir / DB_NAME), *sql], check=True, capture_output=True, text=True
    )
    out = json.loads(run.stdout)
    names = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}
    mode, sync = out[0], names.get(int(out[1]), out[1])
    if mode == "delete" and sync == "FULL":
        power_loss = (
            "rollback journal + FULL: journal and database are fsynced at each commit, but the journal's "
            "unlink, the commit point, is not followed by a directory fsync (that is synchronous=EXTRA), "
            "so a commit followed closely by power loss may roll back; a process crash after the 2xx cannot "
            "undo the finished commits (read from the syscalls, not kill -9 tested here)"
        )
    elif mode == "wal" and sync in ("FULL", "EXTRA"):
        power_loss = "WAL + FULL: the WAL is fsynced at each commit; durable across power loss"
    else:
        power_loss = f"journal_mode={mode} synchronous={sync}: see SQLite's PRAGMA synchronous"
    return {
        "journal_mode": mode,
        "synchronous": sync,
        "sqlite_version": out[2],
        "compile_options": out[3] or "",
        # Not readable from the file: what the code does with it (label-studio 1.23.2, Django 5.2).
        "commit": "Django autocommit (ATOMIC_REQUESTS unset): each ORM write of the annotation POST is "
        "committed before the view returns and runserver answers",
        "power_loss": power_loss,
    }


def version(venv: Path) -> str:
    found = sorted(Path(venv).glob("lib/python*/site-packages/label_studio-*.dist-info"))
    return found[-1].name.removeprefix("label_studio-").removesuffix(".dist-info") if found else "?"


def compare(our_levels: list[dict], ls_levels: list[dict]) -> list[dict]:
    """ours / Label Studio per connection level: labels/s, and labels per server CPU-second (what
    each sustains per core of its own, whatever else the machine runs)."""

    def ratio(a, b):
        return round(a / b, 1) if a and b else None

    return [
        {
            "clients": o["clients"],
            "labels_per_s": ratio(o["labels_per_s"], s["labels_per_s"]),
            "labels_per_server_cpu_s": ratio(o["labels_per_server_cpu_s"], s["labels_per_server_cpu_s"]),
        }
        for o, s in zip(our_levels, ls_levels, strict=True)
    ]


def table(results: dict) -> str:
    """Both systems, one row per connection level: the Markdown table for docs/results.md."""
    sq = results["label_studio"]["sqlite"]
    lines = [
        "| clients | ours labels/s | ours p50 / p99 ms | Label Studio labels/s | LS p50 / p99 ms "
        "| ours / LS labels/s | ours / LS labels per server CPU-s |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for o, s, c in zip(results["levels"], results["label_studio"]["levels"], results["comparison"], strict=True):
        lines.append(
            f"| {o['clients']} | {o['labels_per_s']:,.0f} | {o['p50_ms']:.1f} / {o['p99_ms']:.1f} "
            f"| {s['labels_per_s']:,.0f} | {s['p50_ms']:.1f} / {s['p99_ms']:.1f} "
            f"| {c['labels_per_s']}x | {c['labels_per_server_cpu_s']}x |"
        )
    lines.append(
        f"Durable before the 2xx: ours, SQLite WAL synchronous={results['synchronous']} (group commit); "
        f"Label Studio {results['label_studio']['version']}, SQLite journal_mode={sq['journal_mode']} "
        f"synchronous={sq['synchronous']}, Django autocommit; {results['label_studio']['acknowledged']} "
        f"annotations acknowledged, {results['label_studio']['stored']} stored."
    )
    return "\n".join(lines)
