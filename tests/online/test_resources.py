"""What a run needs from its Ray cluster at once (t2i_rlhf/online/resources.py): computed from the
config without Ray, and a cluster too small for it an error in seconds instead of a wait forever."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from t2i_rlhf.config import load_config
from t2i_rlhf.online import resources
from t2i_rlhf.online.resources import ClusterTooSmallError, check_cluster, explain, run_needs, shortfalls
from tests.online.test_loop import driver_env, write_config

REPO = Path(__file__).resolve().parents[2]
SHAPES_CONFIGS = ["shapes.yaml", "shapes-ci.yaml", "shapes-paper.yaml"]


def needs_of(tmp_path: Path, **changes):
    return run_needs(load_config(write_config(tmp_path, **changes)))


def lines(found) -> list[str]:
    return [s.line for s in found]


@pytest.mark.parametrize("name", SHAPES_CONFIGS)
def test_shipped_configs_fit_the_local_instance_of_a_two_core_machine(name):
    needs = run_needs(load_config(REPO / "configs" / name))
    assert needs.peak() == {"CPU": 6.0}  # 2 generators + scorer + the training group (2 CPUs) + Ray Data
    local = {"CPU": float(max(needs.local_cpus(), 2))}  # what init_ray starts: max(min_cpus, cores)
    assert shortfalls(needs, local, [local]) == []
    assert shortfalls(needs, {"CPU": 6.0}, [{"CPU": 6.0}]) == []  # deploy/submit_local.sh's head


def test_the_gpu_config_fits_the_cluster_its_deploy_files_describe():
    """configs/sd15-cluster.yaml on deploy/rayjob.yaml's two GPU nodes (32 CPUs, 8 GPUs each; the
    head has no CPUs for work), with the two half-GPU scorers on two different GPUs at worst."""
    needs = run_needs(load_config(REPO / "configs" / "sd15-cluster.yaml"))
    assert needs.peak() == {"CPU": 53.0, "GPU": 15.0}
    worst = needs.peak()["GPU"] + 1.0  # each 0.5-GPU scorer alone on a GPU no whole-GPU worker can use
    node = {"CPU": 32.0, "GPU": 8.0}
    assert worst <= 2 * node["GPU"]
    assert shortfalls(needs, {"CPU": 64.0, "GPU": 16.0}, [node, node]) == []


def test_shapes_ci_on_a_two_cpu_cluster_is_short_at_each_step(tmp_path):
    """The observed hang: both CPUs held by the generators, the reward-model task queued forever."""
    needs = needs_of(tmp_path)
    found = shortfalls(needs, {"CPU": 2.0}, [{"CPU": 2.0}])
    assert lines(found) == [
        "reward-model training needs 4 CPUs at once: 2 generators × 1 + scorer 1 + reward-model task 1; "
        "the cluster has 2 CPUs",
        "fine-tuning needs 6 CPUs at once: 2 generators × 1 + scorer 1 + 2 training workers × 1 + "
        "Ray Data task 1; the cluster has 2 CPUs",
    ]
    message = explain(found, needs)
    for part in ("too small", "rollout.generators", "finetune.num_workers", "`ray start --num-cpus 6`",
                 "`run.resource_check: warn`"):
        assert part in message, part


def test_round_zeros_reward_model_runs_before_the_scorers_exist(tmp_path):
    needs = needs_of(tmp_path, **{"run.rounds": 1})
    reward_phase = needs.phases[0]
    assert [p.what for p in reward_phase.parts] == ["generator", "reward-model task"]
    assert reward_phase.total() == {"CPU": 3.0}
    assert [p.what for p in needs_of(tmp_path).phases[0].parts] == ["generator", "scorer", "reward-model task"]


def test_a_custom_resource_no_node_advertises(tmp_path):
    needs = needs_of(tmp_path, **{"rollout.generator_resources": {"gen_node": 1}})
    found = shortfalls(needs, {"CPU": 8.0}, [{"CPU": 8.0}])
    assert "fine-tuning needs 2 gen_node at once: 2 generators × 1; the cluster has none" in lines(found)
    assert ("a generator needs {CPU: 1, gen_node: 1} on one node; no node has that "
            "(nodes: {CPU: 8, gen_node: 0})") in lines(found)
    assert not any("CPU" in s.resources for s in found if "at once" in s.line)  # 8 CPUs are enough
    assert """`ray start --resources '{"gen_node": 2}'`""" in explain(found, needs)
    # advertised on a node: the run fits
    node = {"CPU": 8.0, "gen_node": 4.0}
    assert shortfalls(needs, node, [node]) == []


def test_gpus_asked_for_on_a_cluster_without_gpus(tmp_path):
    needs = needs_of(tmp_path, **{"rollout.generation.num_gpus": 1, "finetune.use_gpu": True})
    assert needs.peak() == {"CPU": 6.0, "GPU": 4.0}  # each training worker gets 1 GPU, as ScalingConfig does
    found = shortfalls(needs, {"CPU": 16.0}, [{"CPU": 16.0}])
    assert "fine-tuning needs 4 GPUs at once: 2 generators × 1 + 2 training workers × 1; the cluster has none" \
        in lines(found)
    assert "a training worker needs {CPU: 1, GPU: 1} on one node; no node has that (nodes: {CPU: 16, GPU: 0})" \
        in lines(found)
    assert "4 GPUs in all" in explain(found, needs)


def test_every_bundle_must_fit_on_one_node(tmp_path):
    """Totals are not enough: a 5-CPU worker on two 4-CPU nodes never starts."""
    needs = needs_of(tmp_path, **{"rollout.generators": 1, "finetune.num_workers": 1,
                                  "finetune.threads_per_worker": 5})
    assert needs.peak() == {"CPU": 8.0}
    nodes = [{"CPU": 4.0}, {"CPU": 4.0}]
    assert lines(shortfalls(needs, {"CPU": 8.0}, nodes)) == [
        "a training worker needs {CPU: 5} on one node; no node has that (nodes: {CPU: 4})"]
    assert shortfalls(needs, {"CPU": 8.0}) == []  # no node list: totals only


def test_strict_placement_of_the_generators(tmp_path):
    nodes = [{"CPU": 2.0}] * 4
    pack = needs_of(tmp_path, **{"rollout.generators": 3, "rollout.placement_strategy": "STRICT_PACK"})
    assert lines(shortfalls(pack, {"CPU": 8.0}, nodes)) == [
        "3 generators placed STRICT_PACK need {CPU: 3} on one node; no node has that (nodes: {CPU: 2})"]
    spread = needs_of(tmp_path, **{"rollout.generators": 3, "rollout.placement_strategy": "STRICT_SPREAD",
                                   "rollout.generator_resources": {"gen_node": 1}})
    gen_nodes = [{"CPU": 4.0, "gen_node": 1.0}, {"CPU": 4.0, "gen_node": 1.0}, {"CPU": 4.0}]
    assert lines(shortfalls(spread, {"CPU": 12.0, "gen_node": 3.0}, gen_nodes)) == [
        "3 generators placed STRICT_SPREAD need 3 nodes with {CPU: 1, gen_node: 1} each; 2 have it"]


def test_worker_bundle_is_what_ray_train_reserves():
    from ray.train import ScalingConfig

    from t2i_rlhf.training.finetune.config import FinetuneConfig

    for kw in ({}, {"threads_per_worker": 2}, {"use_gpu": True}, {"use_gpu": True, "resources_per_worker": {"CPU": 8}},
               {"use_gpu": True, "resources_per_worker": {"CPU": 8, "GPU": 0.5}},
               {"resources_per_worker": {"CPU": 1, "train_node": 1}}):
        cfg = FinetuneConfig(**kw)
        assert cfg.worker_bundle == ScalingConfig(
            num_workers=2, use_gpu=cfg.use_gpu, resources_per_worker=cfg.workers_resources
        )._resources_per_worker_not_none, kw


@pytest.mark.parametrize("mode", ["error", "warn", "off"])
def test_check_cluster_follows_run_resource_check(tmp_path, monkeypatch, caplog, mode):
    """`check_cluster` against a fake two-CPU cluster (no Ray started)."""
    import ray

    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0, "memory": 1e9})
    monkeypatch.setattr(ray, "nodes", lambda: [{"Alive": True, "Resources": {"CPU": 2.0}},
                                               {"Alive": False, "Resources": {"CPU": 64.0}}])
    cfg = load_config(write_config(tmp_path, **{"run.resource_check": mode}))
    with caplog.at_level(logging.INFO, logger="t2i_rlhf.online.resources"):
        if mode == "error":
            with pytest.raises(ClusterTooSmallError, match="fine-tuning needs 6 CPUs at once"):
                check_cluster(cfg)
        else:
            check_cluster(cfg)
    warned = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert bool(warned) == (mode == "warn")
    assert "fine-tuning: {CPU: 6}" in caplog.text  # the needs are logged whatever the mode


def test_bad_resource_check_values_are_config_errors(tmp_path):
    with pytest.raises(ValueError, match="run.resource_check"):
        load_config(write_config(tmp_path, **{"run.resource_check": "maybe"}))
    with pytest.raises(ValueError, match="run.resource_wait_warn_s"):
        load_config(write_config(tmp_path, **{"run.resource_wait_warn_s": 0}))


def test_a_task_waiting_for_resources_is_not_silent(monkeypatch, caplog):
    import ray

    waits = iter([([], ["ref"]), ([], ["ref"]), (["ref"], [])])
    monkeypatch.setattr(ray, "wait", lambda refs, timeout: next(waits))
    monkeypatch.setattr(ray, "get", lambda ref: {"ok": ref})
    monkeypatch.setattr(ray, "available_resources", lambda: {"CPU": 0.0})
    monkeypatch.setattr(resources, "task_state", lambda ref: "PENDING_NODE_ASSIGNMENT")
    with caplog.at_level(logging.WARNING, logger="t2i_rlhf.online.resources"):
        out = resources.get_when_scheduled("ref", what="the reward-model task", need={"CPU": 1.0}, warn_after_s=5)
    assert out == {"ok": "ref"}
    assert [r.getMessage() for r in caplog.records] == [
        f"the reward-model task has not started after {s} s: it needs {{CPU: 1}}, the cluster has {{CPU: 0}} free "
        "(PENDING_NODE_ASSIGNMENT)" for s in (5, 10)]
    # once running, a long task is its own business: no warning
    caplog.clear()
    waits = iter([([], ["ref"])])
    monkeypatch.setattr(resources, "task_state", lambda ref: "RUNNING")
    assert resources.get_when_scheduled("ref", what="t", need={"CPU": 1.0}, warn_after_s=5) == {"ok": "ref"}
    assert not caplog.records


# --- against a real cluster ----------------------------------------------------------------------

@pytest.fixture
def two_cpu_cluster():
    """`ray start --head` offering 2 CPUs, as on this 2-core machine (its own port: 6391 is the
    two-node fixture's). Its temp dir is short: Ray's socket paths under a test's tmp_path pass
    the 107-character limit of a Unix socket, and the raylet never starts."""
    ray_bin = str(Path(sys.executable).parent / "ray")
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    port = "6393"
    temp = tempfile.mkdtemp(prefix="t2i-ray-")
    head = subprocess.Popen([ray_bin, "start", "--head", "--block", f"--port={port}", "--num-cpus=2",
                             "--include-dashboard=false", f"--temp-dir={temp}"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while subprocess.run([ray_bin, "status", f"--address=127.0.0.1:{port}"], env=env,
                         capture_output=True).returncode != 0:
        assert head.poll() is None and time.monotonic() < deadline, "the 2-CPU head did not start"
        time.sleep(1)
    yield f"127.0.0.1:{port}"
    head.send_signal(signal.SIGTERM)
    head.wait(timeout=60)
    shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.ray
@pytest.mark.slow
def test_a_cluster_too_small_for_the_config_fails_in_seconds(tmp_path, two_cpu_cluster):
    config = write_config(tmp_path, **{"run.storage": str(tmp_path / "runs")})
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "t2i_rlhf.cli", "run", "--config", str(config)],
                         env=driver_env(two_cpu_cluster), capture_output=True, text=True, timeout=60)
    assert out.returncode != 0, out.stdout[-2000:]
    assert time.monotonic() - t0 < 60
    assert "fine-tuning needs 6 CPUs at once" in out.stderr and "the cluster has 2 CPUs" in out.stderr, \
        out.stderr[-3000:]
    assert "run.resource_check: warn" in out.stderr
    run_dir = tmp_path / "runs" / "shapes-ci"
    assert not (run_dir / "pretrain").exists() and not (run_dir / "samples").exists()  # nothing started
