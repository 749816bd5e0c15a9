"""`--executor ray` on a real Ray cluster: byte-identical to the local executor, and a worker killed
in the middle of a task is retried.

Ray's servers listen on every interface and cannot be told otherwise, so the test's cluster runs
in a network namespace of its own whose only interface is loopback (`unshare -rn`): nothing it
opens is reachable from outside this machine, or from outside the namespace. The drivers
(`lmforge data`) join that namespace with `nsenter`. One cluster serves the whole module.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from lmforge.cli import main as cli_main  # noqa: E402
from test_data_pipeline import make_inputs, tree_bytes, write_recipe  # noqa: E402

pytest.importorskip("ray")
psutil = pytest.importorskip("psutil")

BIN = Path(sys.executable).parent
ADDRESS = "127.0.0.1:6379"
START_TIMEOUT = 180


def _netns_available() -> bool:
    if not (shutil.which("unshare") and shutil.which("nsenter") and shutil.which("ip")):
        return False
    return subprocess.run(["unshare", "-rn", "true"], capture_output=True).returncode == 0


@pytest.fixture(scope="module")
def cluster():
    """A one-node Ray cluster (2 CPUs, token authentication) in a loopback-only network namespace."""
    if not _netns_available():
        pytest.skip("needs unshare/nsenter and unprivileged network namespaces")
    temp = tempfile.mkdtemp(prefix="lmray", dir="/tmp")  # Ray's socket paths must stay short
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(16),
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    start = (
        f'ip link set lo up && exec "{BIN / "ray"}" start --head --block --node-ip-address=127.0.0.1 '
        f"--port=6379 --num-cpus=2 --include-dashboard=false --temp-dir={temp}"
    )
    log = open(Path(temp) / "start.log", "wb")
    proc = subprocess.Popen(
        ["unshare", "-rn", "sh", "-c", start],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.time() + START_TIMEOUT
    while b"block forever" not in (Path(temp) / "start.log").read_bytes():
        if proc.poll() is not None or time.time() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail("ray start failed:\n" + (Path(temp) / "start.log").read_text()[-3000:])
        time.sleep(0.5)
    enter = ["nsenter", "-t", str(proc.pid), "-U", "-n", "--preserve-credentials", "--"]
    try:
        yield {"enter": enter, "env": env, "pid": proc.pid}
    finally:
        proc.send_signal(signal.SIGTERM)  # `ray start --block` stops what it started
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


def ray_data(cluster, recipe: Path) -> subprocess.Popen:
    """`lmforge data RECIPE --executor ray`, run inside the cluster's namespace."""
    return subprocess.Popen(
        [*cluster["enter"], str(BIN / "lmforge"), "data", str(recipe), "--executor", "ray"],
        env=cluster["env"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def ray_processes(cluster) -> list:
    root = psutil.Process(cluster["pid"])
    return [root, *root.children(recursive=True)]


def test_the_cluster_is_reachable_on_loopback_only(cluster):
    addrs = subprocess.run([*cluster["enter"], "ip", "-o", "addr"], capture_output=True, text=True).stdout
    assert {line.split()[1] for line in addrs.splitlines()} == {"lo"}
    listening = subprocess.run([*cluster["enter"], "ss", "-ltnH"], capture_output=True, text=True).stdout
    local = [line.split()[3] for line in listening.splitlines()]
    assert any(a.endswith(":6379") for a in local)  # the GCS, inside the namespace
    # outside the namespace no Ray process listens on any address
    pids = {p.pid for p in ray_processes(cluster)}
    assert len(pids) > 3
    outside = [
        c for c in psutil.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN and c.pid in pids
    ]
    assert outside == []


def test_ray_output_is_byte_identical_to_local(cluster, tmp_path):
    inputs = make_inputs(tmp_path / "in", files=5, docs_per_file=30)
    local = write_recipe(
        tmp_path / "local.yaml", tmp_path / "local", inputs, workers=2, minhash={"bucket_shards": 2}
    )
    assert cli_main(["data", str(local)]) == 0
    recipe = write_recipe(
        tmp_path / "ray.yaml",
        tmp_path / "ray",
        inputs,
        minhash={"bucket_shards": 2},
        ray={"address": ADDRESS, "num_cpus": 1, "memory": 300 << 20},
    )
    proc = ray_data(cluster, recipe)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode()[-3000:]
    assert tree_bytes(tmp_path / "ray" / "data") == tree_bytes(tmp_path / "local" / "data")


def kill_a_running_task(cluster, proc: subprocess.Popen, title: str) -> int | None:
    """SIGKILL the first Ray worker seen running `title` (its process title is `ray::<function>`)."""
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        for p in ray_processes(cluster):
            try:
                if re.fullmatch(rf"ray::{title}\b.*", " ".join(p.cmdline())):
                    p.send_signal(signal.SIGKILL)
                    return p.pid
            except psutil.Error:
                continue
        time.sleep(0.05)
    return None


def slow_inputs(tmp_path: Path) -> list[str]:
    return make_inputs(tmp_path / "in", files=4, docs_per_file=400, seed=5)


def test_a_worker_killed_mid_task_is_retried_and_the_output_is_unchanged(cluster, tmp_path):
    inputs = slow_inputs(tmp_path)
    local = write_recipe(tmp_path / "local.yaml", tmp_path / "local", inputs, workers=2)
    assert cli_main(["data", str(local)]) == 0
    recipe = write_recipe(
        tmp_path / "ray.yaml", tmp_path / "ray", inputs, ray={"address": ADDRESS, "max_retries": 2}
    )
    proc = ray_data(cluster, recipe)
    killed = kill_a_running_task(cluster, proc, "_phase1")
    _, err = proc.communicate(timeout=300)
    assert killed is not None, "the run finished before a task could be killed"
    assert not psutil.pid_exists(killed) or psutil.Process(killed).status() == psutil.STATUS_ZOMBIE
    assert proc.returncode == 0, err.decode()[-3000:]
    assert tree_bytes(tmp_path / "ray" / "data") == tree_bytes(tmp_path / "local" / "data")


@pytest.mark.slow
def test_without_retries_a_killed_worker_fails_the_run_and_a_rerun_resumes(cluster, tmp_path):
    inputs = slow_inputs(tmp_path)
    local = write_recipe(tmp_path / "local.yaml", tmp_path / "local", inputs, workers=2)
    assert cli_main(["data", str(local)]) == 0
    recipe = write_recipe(
        tmp_path / "ray.yaml", tmp_path / "ray", inputs, ray={"address": ADDRESS, "max_retries": 0}
    )
    proc = ray_data(cluster, recipe)
    assert kill_a_running_task(cluster, proc, "_phase1") is not None
    _, err = proc.communicate(timeout=300)
    assert proc.returncode != 0 and b"failed 1 times" in err
    proc = ray_data(cluster, recipe)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode()[-3000:]
    assert tree_bytes(tmp_path / "ray" / "data") == tree_bytes(tmp_path / "local" / "data")
