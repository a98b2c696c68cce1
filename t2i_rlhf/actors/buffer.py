"""The shared sample buffer: where generated (and scored) samples stream in, get persisted, and
are served to labelling and training.

Every `put` is written to Parquet before it is acknowledged, so the files are the truth and the
actor's memory is a cache that a restart (`max_restarts`) rebuilds. Capacity bounds the samples
held in memory; a producer that would overflow it waits (up to its timeout) and is then told
with `BufferFullError` — never a silent drop. `release_round` frees a finished round's memory;
its samples stay on disk and queryable. Re-putting a sample id that is already stored is a no-op
(reported as a duplicate), which makes retried puts after a crash safe.

Parquet layout under the storage root (a local directory or any pyarrow filesystem URI)::

    <root>/round-00003/samples/part-00000000.parquet   SAMPLE_SCHEMA, one file per put, rows as
                                                       put (label / n_labels null)
    <root>/round-00003/labels/part-00000000.parquet    LABEL_SCHEMA (sample_id, label, n_labels),
                                                       one file per attach_labels call; a label
                                                       row is a sample's absolute label state and
                                                       the highest part number wins
    <root>/round-00003/_released                       marker: the round is not held in memory

Files are written under a `_tmp-` name and renamed, so no reader sees half a file; pyarrow's
dataset reader skips `_`-prefixed names. Plain pyarrow reads a round's samples with
`pq.read_table("<root>/round-00003/samples")`; `load_round` also merges the labels in.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import ray

from t2i_rlhf.actors.scorer import as_sample_batch
from t2i_rlhf.samples import SAMPLE_SCHEMA

log = logging.getLogger(__name__)

LABEL_SCHEMA = pa.schema(
    [
        pa.field("sample_id", pa.string(), nullable=False),
        pa.field("label", pa.float32()),  # mean of good=1 / bad=0 labels; null if none
        pa.field("n_labels", pa.int32(), nullable=False),
    ]
)
RELEASED = "_released"
STRATEGIES = ("random", "uncertainty")


class BufferFullError(RuntimeError):
    """The buffer stayed full for the producer's whole timeout: wait, or release a round."""


def open_storage(storage: str | Path) -> tuple[pafs.FileSystem, str]:
    """(filesystem, root path) for a local directory or a pyarrow filesystem URI."""
    text = str(storage)
    if "://" in text:
        return pafs.FileSystem.from_uri(text)
    return pafs.LocalFileSystem(), str(Path(text).resolve())


def round_dir(root: str, round: int) -> str:
    return f"{root}/round-{round:05d}"


def _part_files(fs: pafs.FileSystem, directory: str) -> list[str]:
    """Committed part files, in write order (`_tmp-` leftovers of a crash are removed)."""
    infos = fs.get_file_info(pafs.FileSelector(directory, allow_not_found=True))
    for info in infos:
        if info.base_name.startswith("_tmp-"):
            fs.delete_file(info.path)
    names = [i for i in infos if i.base_name.startswith("part-") and i.base_name.endswith(".parquet")]
    return sorted(i.path for i in names)


def _part_number(path: str) -> int:
    return int(path.rsplit("/", 1)[-1][len("part-") : -len(".parquet")])


def _read_labels(fs: pafs.FileSystem, directory: str) -> dict[str, tuple[float | None, int]]:
    labels: dict[str, tuple[float | None, int]] = {}
    for path in _part_files(fs, directory):
        table = pq.read_table(path, filesystem=fs)
        for sid, lab, n in zip(*(table.column(c).to_pylist() for c in LABEL_SCHEMA.names), strict=True):
            labels[sid] = (lab, n)
    return labels


def _merge_labels(table: pa.Table, labels: dict[str, tuple[float | None, int]]) -> pa.Table:
    states = [labels.get(sid, (None, None)) for sid in table.column("sample_id").to_pylist()]
    names = table.schema.names
    for name, k, typ in (("label", 0, pa.float32()), ("n_labels", 1, pa.int32())):
        if name in names:
            table = table.set_column(names.index(name), name, pa.array([s[k] for s in states], typ))
    return table


def load_round(storage: str | Path, round: int, columns: list[str] | None = None) -> pa.Table:
    """A round's samples with their labels, read straight from Parquet (no actor needed).

    `columns` reads only those (plus `sample_id`, which labels are joined on), so that asking
    for rewards or prompts does not read every image and latent of the round."""
    fs, root = open_storage(storage)
    base = round_dir(root, round)
    schema = _pruned_schema(columns)
    files = _part_files(fs, f"{base}/samples")
    if not files:
        return schema.empty_table()
    table = pa.concat_tables(pq.read_table(p, filesystem=fs, schema=SAMPLE_SCHEMA, columns=schema.names)
                             for p in files)
    return _merge_labels(table, _read_labels(fs, f"{base}/labels"))


def _pruned_schema(columns: list[str] | None) -> pa.Schema:
    """SAMPLE_SCHEMA restricted to `columns` and `sample_id`; an unknown column is a ValueError."""
    if not columns:
        return SAMPLE_SCHEMA
    unknown = [c for c in columns if c not in SAMPLE_SCHEMA.names]
    if unknown:
        raise ValueError(f"unknown sample columns {unknown}; the schema has {SAMPLE_SCHEMA.names}")
    keep = {"sample_id", *columns}
    return pa.schema([f for f in SAMPLE_SCHEMA if f.name in keep])


@dataclass
class _Round:
    batches: list[pa.RecordBatch] = field(default_factory=list)
    n: int = 0
    released: bool = False
    next_sample_part: int = 0
    next_label_part: int = 0


class SampleBuffer:
    """Bounded, persistent sample store; an async Ray actor (`SampleBufferActor`)."""

    def __init__(self, storage: str | Path, capacity: int = 4096) -> None:
        if capacity < 1:
            raise ValueError("buffer capacity must be >= 1")
        self.capacity = capacity
        self.storage = str(storage)
        self._fs, self._root = open_storage(storage)
        self._fs.create_dir(self._root, recursive=True)
        self._rounds: dict[int, _Round] = {}
        self._round_of: dict[str, int] = {}
        self._labels: dict[str, tuple[float | None, int]] = {}
        self._resident = 0
        self._cond: asyncio.Condition | None = None
        self._recover()

    # --- persistence ---------------------------------------------------------------------------

    def _recover(self) -> None:
        """Rebuild memory from the files (a fresh start finds none)."""
        infos = self._fs.get_file_info(pafs.FileSelector(self._root, allow_not_found=True))
        for info in sorted(infos, key=lambda i: i.base_name):
            if info.type != pafs.FileType.Directory or not info.base_name.startswith("round-"):
                continue
            rnd = int(info.base_name[len("round-") :])
            state = self._rounds.setdefault(rnd, _Round())
            marker = self._fs.get_file_info(f"{info.path}/{RELEASED}")
            state.released = marker.type == pafs.FileType.File
            files = _part_files(self._fs, f"{info.path}/samples")
            for path in files:
                cols = ["sample_id"] if state.released else None
                table = pq.read_table(path, filesystem=self._fs, columns=cols,
                                      schema=None if cols else SAMPLE_SCHEMA)
                ids = table.column("sample_id").to_pylist()
                keep = [sid not in self._round_of for sid in ids]
                if not all(keep):
                    log.warning("%s repeats %d stored sample ids; ignoring them", path, len(keep) - sum(keep))
                    table = table.filter(pa.array(keep))
                for sid in table.column("sample_id").to_pylist():
                    self._round_of[sid] = rnd
                state.n += table.num_rows
                if not state.released and table.num_rows:
                    state.batches.extend(table.combine_chunks().to_batches())
            state.next_sample_part = _part_number(files[-1]) + 1 if files else 0
            label_files = _part_files(self._fs, f"{info.path}/labels")
            state.next_label_part = _part_number(label_files[-1]) + 1 if label_files else 0
            self._labels.update(_read_labels(self._fs, f"{info.path}/labels"))
        self._resident = sum(s.n for s in self._rounds.values() if not s.released)
        if self._rounds:
            log.info("buffer recovered %d samples in %d rounds from %s (%d in memory)",
                     len(self._round_of), len(self._rounds), self.storage, self._resident)

    def _write(self, table: pa.Table, directory: str, part: int) -> None:
        """Atomic write: readers see the whole part file or none of it."""
        self._fs.create_dir(directory, recursive=True)
        tmp = f"{directory}/_tmp-{uuid.uuid4().hex}.parquet"
        pq.write_table(table, tmp, filesystem=self._fs)
        self._fs.move(tmp, f"{directory}/part-{part:08d}.parquet")

    # --- producers -----------------------------------------------------------------------------

    def _condition(self) -> asyncio.Condition:
        if self._cond is None:  # created lazily, inside the actor's event loop
            self._cond = asyncio.Condition()
        return self._cond

    async def put(self, batch: pa.RecordBatch | pa.Table, timeout_s: float | None = 60.0) -> dict:
        """Persist and hold a batch. Waits while the buffer is full; raises BufferFullError if it
        is still full after `timeout_s` (None: wait indefinitely, 0: do not wait). Returns
        {"added", "duplicates", "rewards"} (rewards of the added rows)."""
        batch = as_sample_batch(batch)  # ValueError on a wrong schema
        ids = batch.column("sample_id").to_pylist()
        if len(set(ids)) != len(ids):
            raise ValueError("a batch repeats sample ids; every sample needs its own id")
        n_new = sum(sid not in self._round_of for sid in ids)
        if n_new > self.capacity:
            raise ValueError(f"{n_new} new samples can never fit a buffer of capacity {self.capacity}")
        cond = self._condition()
        async with cond:
            def has_room() -> bool:
                return self._resident + n_new <= self.capacity

            if not has_room():
                if timeout_s is not None and timeout_s <= 0:
                    raise BufferFullError(self._full_message(n_new))
                try:
                    await asyncio.wait_for(cond.wait_for(has_room), timeout_s)
                except asyncio.TimeoutError:
                    raise BufferFullError(self._full_message(n_new)) from None
            fresh = batch.filter(pa.array([sid not in self._round_of for sid in ids]))
            for rnd in sorted(set(fresh.column("round").to_pylist())):
                self._add(rnd, fresh.filter(pc.equal(fresh.column("round"), rnd)))
        duplicates = batch.num_rows - fresh.num_rows
        if duplicates:
            log.warning("buffer ignored %d samples it already holds", duplicates)
        return {"added": fresh.num_rows, "duplicates": duplicates,
                "rewards": fresh.column("reward").to_pylist()}

    def _full_message(self, n: int) -> str:
        return (f"sample buffer full: {self._resident}/{self.capacity} samples held, {n} more offered; "
                "release finished rounds (release_round) or raise the capacity")

    def _add(self, rnd: int, part: pa.RecordBatch) -> None:
        state = self._rounds.setdefault(rnd, _Round())
        directory = f"{round_dir(self._root, rnd)}/samples"
        self._write(pa.Table.from_batches([part]), directory, state.next_sample_part)
        state.next_sample_part += 1
        for sid in part.column("sample_id").to_pylist():
            self._round_of[sid] = rnd
        state.n += part.num_rows
        if not state.released:
            state.batches.append(part)
            self._resident += part.num_rows

    async def release_round(self, round: int) -> int:
        """Drop a finished round from memory (it stays on disk); returns the samples freed."""
        state = self._rounds.get(round)
        if state is None or state.released:
            return 0
        base = round_dir(self._root, round)
        self._fs.create_dir(base, recursive=True)
        with self._fs.open_output_stream(f"{base}/{RELEASED}") as f:
            f.write(b"released\n")
        freed, state.released, state.batches = state.n, True, []
        cond = self._condition()
        async with cond:
            self._resident -= freed
            cond.notify_all()
        return freed

    # --- labels --------------------------------------------------------------------------------

    def attach_labels(self, labels: dict[str, tuple[float | None, int]] | Iterable[tuple]) -> int:
        """Set samples' label state: sample_id -> (label mean in [0, 1], n_labels). All or
        nothing: an unknown id or a bad value is a ValueError and nothing is stored."""
        items = list(labels.items()) if isinstance(labels, dict) else [(r[0], (r[1], r[2])) for r in labels]
        by_round: dict[int, list[tuple[str, float | None, int]]] = {}
        for sid, (label, n) in items:
            if sid not in self._round_of:
                raise ValueError(f"unknown sample id {sid!r}; no labels attached")
            if int(n) < 0 or (int(n) > 0 and (label is None or not 0.0 <= float(label) <= 1.0)):
                raise ValueError(f"bad label for {sid}: label {label!r} with n_labels {n!r}")
            value = None if int(n) == 0 else float(label)
            by_round.setdefault(self._round_of[sid], []).append((sid, value, int(n)))
        for rnd, rows in by_round.items():
            state = self._rounds[rnd]
            table = pa.Table.from_pylist(
                [dict(zip(LABEL_SCHEMA.names, r, strict=True)) for r in rows], schema=LABEL_SCHEMA
            )
            self._write(table, f"{round_dir(self._root, rnd)}/labels", state.next_label_part)
            state.next_label_part += 1
            self._labels.update({sid: (lab, n) for sid, lab, n in rows})
        return len(items)

    # --- queries -------------------------------------------------------------------------------

    def rounds(self) -> list[int]:
        return sorted(self._rounds)

    def stats(self) -> dict:
        return {
            "capacity": self.capacity, "resident": self._resident, "total": len(self._round_of),
            "labelled": sum(1 for _, n in self._labels.values() if n > 0),
            "rounds": {r: {"samples": s.n, "released": s.released} for r, s in sorted(self._rounds.items())},
        }

    def _round_table(self, round: int, columns: list[str] | None = None) -> pa.Table:
        """A round's samples with labels; a released round reads only `columns` from Parquet."""
        state = self._rounds.get(round)
        if state is None:
            return _pruned_schema(columns).empty_table()
        if state.released:
            return load_round(self.storage, round, columns)
        table = pa.Table.from_batches(state.batches, schema=SAMPLE_SCHEMA)
        if columns:
            table = table.select(_pruned_schema(columns).names)
        return _merge_labels(table, self._labels)

    def samples(self, round: int, columns: list[str] | None = None) -> pa.Table:
        """Every sample of a round, labels included."""
        table = self._round_table(round, columns)
        return table.select(columns) if columns else table

    def get(self, sample_ids: list[str], columns: list[str] | None = None) -> pa.Table:
        """Samples by id, in the order asked; an unknown id is a ValueError."""
        unknown = [s for s in sample_ids if s not in self._round_of]
        if unknown:
            raise ValueError(f"unknown sample ids {unknown[:5]}")
        wanted = set(sample_ids)
        tables = [self._round_table(r, columns) for r in sorted({self._round_of[s] for s in sample_ids})]
        table = pa.concat_tables(t.filter(pc.is_in(t.column("sample_id"), pa.array(list(wanted))))
                                 for t in tables) if tables else _pruned_schema(columns).empty_table()
        index = {sid: i for i, sid in enumerate(table.column("sample_id").to_pylist())}
        table = table.take(pa.array([index[s] for s in sample_ids], pa.int64()))
        return table.select(columns) if columns else table

    def unlabelled(
        self, n: int, strategy: str = "random", round: int | None = None, seed: int = 0,
        columns: list[str] | None = None,
    ) -> pa.Table:
        """Up to n samples without labels, for labellers: "random", or "uncertainty" (reward
        closest to 0.5 first, unscored samples last). `round=None` searches rounds in memory."""
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {strategy!r}; choose from {STRATEGIES}")
        if round is None:
            rounds = [r for r, s in sorted(self._rounds.items()) if not s.released]
        else:
            rounds = [round]
        needed = [*columns, "n_labels", "reward"] if columns else None
        tables = [self._round_table(r, needed) for r in rounds]
        table = pa.concat_tables(tables) if tables else _pruned_schema(needed).empty_table()
        table = table.filter(pc.fill_null(pc.equal(table.column("n_labels"), 0), True))
        if strategy == "random":
            order = np.random.default_rng(seed).permutation(table.num_rows)
        else:
            reward = table.column("reward").to_numpy(zero_copy_only=False).astype(np.float64)
            distance = np.where(np.isnan(reward), np.inf, np.abs(reward - 0.5))
            order = np.argsort(distance, kind="stable")
        table = table.take(pa.array(order[: max(n, 0)], pa.int64()))
        return table.select(columns) if columns else table


SampleBufferActor = ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)(SampleBuffer)
