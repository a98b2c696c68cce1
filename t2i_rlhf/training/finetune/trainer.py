"""One fine-tuning round on a Ray Train group: `finetune_round` builds the TorchTrainer from the
config, runs it, and turns its last checkpoint into a model version directory.

Resume: Ray Train V2 restores a run from `RunConfig(storage_path, name)`, so calling
`finetune_round` again for the same round (same storage_path, same version) continues from the
last checkpoint; a finished round is not trained again. The job's fingerprint (config hash,
inputs, starting weights) is kept in the run directory so a changed job cannot resume by mistake.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path

import pyarrow.fs as pafs

from t2i_rlhf.logs import ray_train_log_level
from t2i_rlhf.model_version import ModelManifest
from t2i_rlhf.ray_runtime import init_ray
from t2i_rlhf.samples import parquet_files
from t2i_rlhf.training.finetune.config import RAY_DATA_CPUS, FinetuneConfig
from t2i_rlhf.training.finetune.data import (
    PRETRAIN_COLUMNS,
    count_rows,
    count_scored,
    model_columns,
    model_samples_dataset,
    parquet_bytes,
    pretrain_dataset,
    pretrain_latent_files,
)
from t2i_rlhf.training.finetune.model import export_version, resolve_base
from t2i_rlhf.training.finetune.rewards import (
    LabelAgreement,
    RewardThreshold,
    chain,
    check_unit_interval,
    read_category_weighting,
    read_prompt_normalization,
)
from t2i_rlhf.training.finetune.worker import PROGRESS, reward_column, steps_for, train_loop_per_worker

log = logging.getLogger(__name__)

JOB_FILE = "finetune_job.json"
METRIC_KEYS = ("loss", "model_loss", "pretrain_loss", "reward_mean", "step_time", "epochs_done")
# where a round's wall time went (the worker's clock, then the driver's): see `fixed_cost_line`
CLOCK_KEYS = ("worker_start_s", "model_load_s", "first_batch_s", "steps_s", "checkpoint_s")
HEALTH_CHECK_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"


def run_name(version: str) -> str:
    """The Ray Train run of a version: the same version re-run is the same run, so it resumes."""
    return f"finetune-{version}"


def _storage(storage_path: str | Path) -> str:
    text = str(storage_path)
    return text if "://" in text else str(Path(text).resolve())


def _guard_job(storage: str, name: str, job: dict) -> None:
    """Record the job on first run; refuse to resume a run whose job has changed."""
    fs, root = pafs.FileSystem.from_uri(storage)
    path = f"{root}/{name}/{JOB_FILE}"
    if fs.get_file_info(path).type == pafs.FileType.File:
        with fs.open_input_stream(path) as f:
            old = json.loads(f.read().decode())
        if old != job:
            changed = sorted(k for k in set(old) | set(job) if old.get(k) != job.get(k))
            raise ValueError(f"run {name!r} under {storage} was started with a different job (changed: "
                             f"{changed}); use another version/name or delete {root}/{name} to start over")
        log.info("run %s exists with the same job: resuming from its last checkpoint", name)
        return
    fs.create_dir(f"{root}/{name}", recursive=True)
    with fs.open_output_stream(path) as f:
        f.write(json.dumps(job, indent=2, sort_keys=True).encode())


def cpus_needed(cfg: FinetuneConfig) -> int:
    """Logical CPUs a round needs: the worker group's, plus one for Ray Data to read Parquet
    (without it the dataset never starts and the workers wait for their first batch forever)."""
    return math.ceil(cfg.num_workers * cfg.worker_bundle.get("CPU", 0.0)) + RAY_DATA_CPUS


def ensure_ray_for(cfg: FinetuneConfig) -> None:
    """Start a local Ray instance big enough for the round (ray.init's default, one logical CPU
    per core, is too small on a 2-core machine), or warn when the cluster joined is too small."""
    import ray

    need = cpus_needed(cfg)
    init_ray(need)
    have = ray.cluster_resources().get("CPU", 0.0)
    if have < need:
        log.warning("the cluster has %g CPUs; fine-tuning needs %d (%d worker(s) x %g, plus %d for Ray Data): "
                    "it will wait until an autoscaler adds them", have, need, cfg.num_workers,
                    cfg.worker_bundle.get("CPU", 0.0), RAY_DATA_CPUS)


def _fits(cfg: FinetuneConfig, files: list[Path], columns: list[str]) -> bool:
    """Whether a worker's share of `columns` fits `shard_memory_mb` (and so is held in memory)."""
    return bool(files) and parquet_bytes(files, columns) / cfg.num_workers <= cfg.shard_memory_mb * 2**20


def finetune_round(
    config: FinetuneConfig | dict,
    samples: str | Path | list,
    pretrain_data: str | Path | list | None,
    base: str | Path,
    out_dir: str | Path,
    round: int,
    version: str | None = None,
    storage_path: str | Path = "runs/finetune",
    name: str | None = None,
    fail_at_step: int | None = None,
) -> ModelManifest:
    """Fine-tune for one round and write the model version directory `out_dir`.

    samples: Parquet file(s)/dir(s) of the round's scored samples (SAMPLE_SCHEMA).
    pretrain_data: Parquet of the pre-training set (images + captions, or cached latents); may be
        None when beta = 0.
    base: a diffusers pipeline directory or the parent model version directory.
    Returns the manifest written to out_dir (version defaults to f"r{round:04d}").
    fail_at_step: fault injection (tests, drills; local storage only): one worker dies once there.
    """
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    cfg = config if isinstance(config, FinetuneConfig) else FinetuneConfig(**config)
    start = resolve_base(base)
    version = version or f"r{round:04d}"
    name = name or run_name(version)
    storage = _storage(storage_path)
    column = reward_column(cfg)

    sample_files = parquet_files(samples)
    n_model = count_scored(sample_files, column)
    model_rows = n_model // cfg.num_workers
    if model_rows < cfg.model_batch:
        raise ValueError(f"{n_model} samples with a {column!r} over {cfg.num_workers} worker(s) is less "
                         f"than one micro-batch of {cfg.model_batch} model samples per worker")
    if cfg.objective == "negative_aware" and cfg.reward_normalization == "none":
        check_unit_interval(sample_files, column)
    # r read as a verdict: the score's and the labels' (agreement), or the score's alone (threshold)
    verdict = (LabelAgreement(cfg.verdict_threshold) if cfg.reward_source == "agreement"
               else None if cfg.reward_threshold is None else RewardThreshold(cfg.reward_threshold))
    normalization = None
    if cfg.reward_normalization == "prompt":  # the round's statistics, applied by Ray Data
        normalization = read_prompt_normalization(sample_files, column, cfg.reward_clip, verdict)
    elif cfg.reward_normalization == "category":
        normalization = read_category_weighting(sample_files, column, verdict)
    normalization = chain(verdict, normalization)
    ensure_ray_for(cfg)  # after the cheap checks: a bad input fails before Ray starts
    small = _fits(cfg, sample_files, model_columns(column, normalization))  # held in memory: the driver reads it
    datasets = {"model": model_samples_dataset(sample_files, column, normalization, small=small)}
    pre_rows, pre_files = 0, []
    if cfg.uses_pretrain:
        if pretrain_data is None:
            raise ValueError(f"beta={cfg.beta} needs pre-training data (--pretrain-data)")
        pre_files = pretrain_latent_files(pretrain_data, Path(start.pipeline_dir), cfg.latent_cache)
        pre_rows = count_rows(pre_files) // cfg.num_workers
        datasets["pretrain"] = pretrain_dataset(pre_files)
    total = steps_for(cfg, model_rows)

    _guard_job(storage, name, {
        "config_hash": cfg.config_hash(), "samples": [str(f) for f in sample_files],
        "pretrain": [str(f) for f in pre_files], "start": start.to_dict(), "round": round,
    })
    log.info("round %d (%s): %s objective, %d scored samples, %d pre-training rows/worker, %d steps on %d "
             "worker(s)", round, version, cfg.objective, n_model, pre_rows, total, cfg.num_workers)
    local = fail_at_step is not None and "://" not in storage
    # Ray Train's controller polls its workers every 2 s, so a round's end was seen 1-4 s late;
    # at 0.5 s, 1.4-2.0 s (a user's own setting wins). Ray Train passes it on to the controller.
    os.environ.setdefault(HEALTH_CHECK_ENV, "0.5")
    fit_started = time.time()
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "finetune": cfg.model_dump(mode="json"), "start": start.to_dict(), "total_steps": total,
            "model_rows_per_worker": model_rows, "pretrain_rows_per_worker": pre_rows,
            "in_memory": {"model": small,
                          "pretrain": _fits(cfg, pre_files, PRETRAIN_COLUMNS)},
            "fail_at_step": fail_at_step,
            "fail_marker": f"{storage}/{name}/.injected_failure" if local else None,
            "fit_started_at": fit_started,
        },
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                                     resources_per_worker=cfg.worker_bundle),
        run_config=RunConfig(
            name=name, storage_path=storage,
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.checkpoints_to_keep),
            logging_config=LoggingConfig(log_level=ray_train_log_level()),
        ),
        datasets=datasets,
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"run {name} finished without a checkpoint; see its logs under {storage}/{name}")
    fit_s = time.time() - fit_started
    metrics = {k: float(v) for k, v in (result.metrics or {}).items() if k in METRIC_KEYS + CLOCK_KEYS}
    with result.checkpoint.as_directory() as ckpt_dir:
        steps = int(json.loads((Path(ckpt_dir) / PROGRESS).read_text())["step"])
        if steps != total:
            raise RuntimeError(f"run {name} ended at step {steps} of {total}; re-run to resume it")
        manifest = ModelManifest(
            version=version, round=round, parent_version=start.parent_version, steps=steps,
            config_hash=cfg.config_hash(), kind="lora" if cfg.lora else "unet",
            base_model=start.pipeline_dir, metrics=metrics,
        )
        metrics["fit_s"] = fit_s
        t_export = time.time()
        export_version(Path(ckpt_dir), Path(out_dir), manifest)
    clock = {**metrics, "export_s": time.time() - t_export}
    log.info("wrote model version %s (%s, %d steps) to %s", version, manifest.kind, steps, out_dir)
    if "steps_s" in clock:
        log.info("round %d (%s): %s", round, version, fixed_cost_line(clock))
    return manifest


def fixed_cost_line(m: dict[str, float]) -> str:
    """A round's wall time outside its optimizer steps, by where it went: what a round costs
    however few steps it takes. `ray_s` is what neither side's clock saw: the controller and
    worker group's start and stop, the last checkpoint and Ray Train's reporting."""
    outside = m["fit_s"] - m["steps_s"] + m.get("export_s", 0.0)
    seen = sum(m.get(k, 0.0) for k in ("worker_start_s", "model_load_s", "first_batch_s", "checkpoint_s"))
    parts = {"worker start": m.get("worker_start_s", 0.0), "model load": m.get("model_load_s", 0.0),
             "first batch": m.get("first_batch_s", 0.0), "checkpoints": m.get("checkpoint_s", 0.0),
             "other Ray Train": m["fit_s"] - m["steps_s"] - seen, "export": m.get("export_s", 0.0)}
    detail = ", ".join(f"{k} {v:.1f} s" for k, v in parts.items())
    return f"{m['steps_s']:.1f} s of steps, {outside:.1f} s outside them ({detail})"
