"""`FeedbackClient`: how the online loop (and simulated labellers) talk to the feedback service.

Plain HTTP via httpx, no Ray. Every call is safe to retry (publishing and labelling are
idempotent on the server), so transport errors and 503s are retried a few times.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote

import httpx
import pyarrow as pa
import pyarrow.parquet as pq

logger = logging.getLogger(__name__)
PARQUET = "application/vnd.apache.parquet"
_TASK_COLUMNS = ("sample_id", "round", "prompt", "image", "category", "model_version", "gold")


def aggregate_labels(
    rows: Iterable[Mapping[str, Any]], weights: Mapping[str, float] | None = None
) -> dict[str, tuple[float, int]]:
    """Exported rows -> {sample_id: (label, n_labels)} as SAMPLE_SCHEMA defines them: the mean of
    good=1 / bad=0 over labellers, skips excluded (a sample with only skips is absent). A labeller
    counts once per sample (their latest row, should an undone label have been exported before).

    Labels on gold tasks are left out: they measure labellers (see /v1/stats), and a gold task is
    usually not one of the run's samples. `weights` (labeller -> weight >= 0, e.g. from
    `reliability.labeller_weights`; a missing labeller weighs 1) makes the mean a weighted one;
    labels of weight 0 are dropped, and n_labels counts the labels that weigh."""
    latest: dict[tuple[str, str], tuple[int, str]] = {}
    for r in rows:
        if r.get("gold"):
            continue
        key = (r["sample_id"], r["labeller"])
        if key not in latest or r["label_id"] > latest[key][0]:
            latest[key] = (r["label_id"], r["label"])
    votes: dict[str, list[tuple[float, int]]] = {}
    for (sample_id, labeller), (_, label) in latest.items():
        w = 1.0 if weights is None else float(weights.get(labeller, 1.0))
        if label != "skip" and w > 0:
            votes.setdefault(sample_id, []).append((w, 1 if label == "good" else 0))
    return {s: (sum(w * y for w, y in v) / sum(w for w, _ in v), len(v)) for s, v in votes.items()}


def _segment(sample_id: str) -> str:
    """A sample id as one URL path segment: "?", "#", "%" or spaces in it must not change the URL."""
    return quote(sample_id, safe="")


class FeedbackError(RuntimeError):
    """The service answered with an error status."""

    def __init__(self, status_code: int, detail: Any) -> None:
        self.status_code, self.detail = status_code, detail
        super().__init__(f"feedback service returned {status_code}: {detail}")


class FeedbackClient:
    """Client for `/v1`. `labeller` names who labels: leave it None with a labeller's own token
    (the server knows its owner); with the shared token it defaults to the server's per-token id."""

    def __init__(
        self,
        url: str,
        token: str,
        labeller: str | None = None,
        timeout: float = 30.0,
        retries: int = 3,
        http: httpx.Client | None = None,
    ) -> None:
        self.labeller, self.retries = labeller, retries
        self._http = http or httpx.Client(base_url=url.rstrip("/"), timeout=timeout)
        self._http.headers["Authorization"] = f"Bearer {token}"

    def __enter__(self) -> FeedbackClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        """One call; transport errors and 503 (store briefly unavailable) are retried with backoff."""
        for attempt in range(self.retries + 1):
            try:
                resp = self._http.request(method, path, **kw)
            except httpx.TransportError as e:
                if attempt == self.retries:
                    raise
                logger.warning("%s %s failed (%s); retrying", method, path, e)
            else:
                if resp.status_code != 503 or attempt == self.retries:
                    break
            time.sleep(0.2 * 2**attempt)
        if resp.status_code >= 400:
            try:
                detail = resp.json().get("detail", resp.text)
            except ValueError:
                detail = resp.text
            raise FeedbackError(resp.status_code, detail)
        return resp

    # -- loop side (admin token) -------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        return self._request("GET", "/v1/health").json()

    def publish_tasks(self, tasks: pa.Table | Iterable[Mapping[str, Any]], chunk_rows: int = 512) -> dict[str, int]:
        """Publish (sample_id, round, prompt, image PNG bytes[, category, model_version]) rows — a
        SAMPLE_SCHEMA table or dicts — as Parquet in chunks. Re-publishing is a no-op."""
        table = (
            tasks
            if isinstance(tasks, pa.Table)
            else pa.Table.from_pylist([{k: t[k] for k in _TASK_COLUMNS if k in t} for t in tasks])
        )
        table = table.select([c for c in _TASK_COLUMNS if c in table.column_names])
        totals = {"published": 0, "existing": 0}
        for start in range(0, table.num_rows, chunk_rows):
            buf = io.BytesIO()
            pq.write_table(table.slice(start, chunk_rows), buf)
            got = self._request("POST", "/v1/tasks", content=buf.getvalue(), headers={"Content-Type": PARQUET}).json()
            totals["published"] += got["published"]
            totals["existing"] += got["existing"]
        return totals

    def stats(self, round: int | None = None) -> dict[str, Any]:
        """{"labels_per_sample": k, "rounds": [{round, published, labelled, complete, good, bad,
        skipped, labels, pairs, agreeing_pairs, agreement, gold_tasks, gold_labels}, ...],
        "labellers": [{labeller, gold_accuracy, gold_labelled, agreement, ...}, ...]} (admin)."""
        params = {"round": round} if round is not None else {}
        return self._request("GET", "/v1/stats", params=params).json()

    def export_labels(
        self, since: str | None = None, round: int | None = None, page_size: int = 10_000
    ) -> tuple[list[dict[str, Any]], str]:
        """All live labels after cursor `since` -> (rows, next_cursor). Rows: label_id, sample_id,
        round, labeller, via, label (good|bad|skip), time_spent_ms, created_at, gold (a gold task's
        answer, else None), labeller_gold_accuracy, labeller_gold_labelled, labeller_agreement."""
        rows: list[dict[str, Any]] = []
        cursor = since
        while True:
            params: dict[str, Any] = {"limit": page_size}
            if cursor is not None:
                params["since"] = cursor
            if round is not None:
                params["round"] = round
            page = self._request("GET", "/v1/labels", params=params).json()
            rows.extend(page["labels"])
            done = len(page["labels"]) < page_size
            cursor = page["next_cursor"]
            if done:
                return rows, cursor

    def export_labels_table(
        self, since: str | None = None, round: int | None = None, limit: int = 100_000
    ) -> tuple[pa.Table, str]:
        """One page of the export as a pyarrow table (Parquet on the wire) -> (table, next_cursor)."""
        params: dict[str, Any] = {"format": "parquet", "limit": limit}
        if since is not None:
            params["since"] = since
        if round is not None:
            params["round"] = round
        resp = self._request("GET", "/v1/labels", params=params)
        return pq.read_table(io.BytesIO(resp.content)), resp.headers["X-Next-Cursor"]

    def create_labeller(self, name: str) -> dict[str, Any]:
        """A labeller account -> {name, token, created_at, ...}; the token is shown only here."""
        return self._request("POST", "/v1/labellers", json={"name": name}).json()

    def labellers(self) -> list[dict[str, Any]]:
        return self._request("GET", "/v1/labellers").json()["labellers"]

    def rotate_token(self, name: str) -> dict[str, Any]:
        """A new token for the account (the old one stops working) -> {name, token, ...}."""
        return self._request("POST", f"/v1/labellers/{_segment(name)}/token").json()

    def revoke_labeller(self, name: str) -> dict[str, Any]:
        return self._request("POST", f"/v1/labellers/{_segment(name)}/revoke").json()

    # -- labeller side -----------------------------------------------------------------------
    def me(self) -> dict[str, Any]:
        """{"labeller", "token": admin|shared|labeller, "labels"}: who this client labels as."""
        params = {"labeller": self.labeller} if self.labeller else {}
        return self._request("GET", "/v1/me", params=params).json()

    def next_tasks(self, n: int = 1, round: int | None = None) -> dict[str, Any]:
        """Lease up to n tasks: {"labeller", "tasks": [{sample_id, round, prompt, image_url, ...}],
        "done", "remaining"}."""
        body: dict[str, Any] = {"n": n, "round": round}
        if self.labeller:
            body["labeller"] = self.labeller
        return self._request("POST", "/v1/tasks/next", json=body).json()

    def image(self, sample_id: str) -> bytes:
        return self._request("GET", f"/v1/tasks/{_segment(sample_id)}/image").content

    def post_label(self, sample_id: str, label: str, time_spent_ms: int | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"sample_id": sample_id, "label": label, "time_spent_ms": time_spent_ms}
        if self.labeller:
            body["labeller"] = self.labeller
        return self._request("POST", "/v1/labels", json=body).json()

    def post_labels(self, labels: list[dict[str, Any]]) -> dict[str, Any]:
        """Atomic batch of {sample_id, label[, time_spent_ms]}."""
        if self.labeller:
            labels = [{"labeller": self.labeller, **lab} for lab in labels]
        return self._request("POST", "/v1/labels/batch", json={"labels": labels}).json()

    def undo(self, sample_id: str) -> dict[str, Any]:
        params = {"labeller": self.labeller} if self.labeller else {}
        return self._request("DELETE", f"/v1/labels/{_segment(sample_id)}", params=params).json()
