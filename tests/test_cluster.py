"""A real two-node Ray cluster on this machine (`ray start --head` + `ray start --address`), a job submitted with
`ray job submit`, and checks that the work ran on both nodes and the output is complete.

The cluster lives in its own short temp dir and its own ports, so it never meets the session's embedded Ray or
anyone else's; teardown stops exactly the processes whose command line names that temp dir (``ray stop`` would
stop every Ray on the machine).
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(os.environ.get("VIRTUAL_ENV", REPO / ".venv")) / "bin"

pytestmark = pytest.mark.slow


def free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def processes_under(marker: str) -> list[int]:
    """Ids of the processes whose command line names ``marker`` (our cluster's temp dir)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmdline:
            pids.append(int(entry.name))
    return pids


def stop_cluster(temp_dir: str) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in processes_under(temp_dir):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + 10
        while processes_under(temp_dir) and time.time() < deadline:
            time.sleep(0.2)


def ray(args, env, timeout=180):
    proc = subprocess.run([str(BIN / "ray"), *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"ray {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def start_node(args, env, marker, attempts=3):
    """`ray start`, retried: on a loaded machine a raylet can miss Ray's fixed 30 s registration window."""
    for attempt in range(attempts):
        proc = subprocess.run([str(BIN / "ray"), "start", *args], env=env, cwd=REPO, capture_output=True, text=True)
        if proc.returncode == 0:
            return
        stop_cluster(marker)  # only what this attempt started
        if attempt == attempts - 1:
            raise AssertionError(f"ray start failed {attempts} times:\n{proc.stdout}\n{proc.stderr}")


@pytest.fixture
def cluster():
    temp_dir = tempfile.mkdtemp(prefix="dqc-", dir="/tmp")  # short: Ray puts unix sockets in it
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(RAY_AUTH_MODE="token", PATH=f"{BIN}:{env.get('PATH', '')}", RAY_USAGE_STATS_ENABLED="0")
    gcs, dash, client, *more = free_ports(14)
    common = ["--num-cpus", "1", "--object-store-memory", str(150 * 2**20), "--disable-usage-stats"]
    common += ["--node-ip-address", "127.0.0.1"]
    try:
        start_node(
            ["--head", "--port", str(gcs), "--dashboard-port", str(dash), "--include-dashboard", "true"]
            + ["--dashboard-host", "127.0.0.1", "--ray-client-server-port", str(client), "--temp-dir", temp_dir]
            + ["--node-manager-port", str(more[0]), "--object-manager-port", str(more[1])]
            + ["--dashboard-agent-listen-port", str(more[2]), "--dashboard-agent-grpc-port", str(more[3])]
            + ["--runtime-env-agent-port", str(more[4]), "--metrics-export-port", str(more[5])]
            + ["--resources", '{"dq_head": 1}']
            + common,
            env,
            marker=temp_dir,
        )
        start_node(
            # its own temp dir (inside ours): two nodes sharing one would unpack the job's working dir over
            # each other, deleting the driver's current directory
            ["--address", f"127.0.0.1:{gcs}", "--resources", '{"dq_worker": 1}', "--temp-dir", f"{temp_dir}/w"]
            + ["--node-manager-port", str(more[6]), "--object-manager-port", str(more[7])]
            + ["--dashboard-agent-listen-port", str(more[8]), "--dashboard-agent-grpc-port", str(more[9])]
            + ["--runtime-env-agent-port", str(more[10])]
            + common,
            env,
            marker=f"{temp_dir}/w",
        )
        yield {"env": env, "dashboard": f"http://127.0.0.1:{dash}", "temp_dir": temp_dir}
    finally:
        stop_cluster(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_a_job_on_a_two_node_cluster_uses_both_nodes(cluster, tiny_corpus, tmp_path):
    out = tmp_path / "run"
    job = ["--config", "tests/data/fast.yaml", "--input", str(tiny_corpus), "--output", str(out)]
    job += ["--set", "input.batch_rows=10", "--set", "stages.heuristics.resources.batch_size=8"]
    job += ["--set", "ray.shuffle_partitions=4"]
    log = ray(
        [
            "job",
            "submit",
            "--address",
            cluster["dashboard"],
            "--working-dir",
            ".",
            "--",
            "python",
            "jobs/score.py",
            *job,
        ],
        cluster["env"],
        timeout=420,
    )
    assert "succeeded" in log, log
    m = json.loads((out / "manifest.json").read_text())
    assert m["status"] == "succeeded" and m["ray"]["nodes"] == 2 and m["ray"]["cpus"] == 2
    c = m["counts"]
    assert c["consistent"] and c["input"] == c["accepted"] + c["rejected"]
    assert pq.read_table(out / "docs").num_rows == c["accepted"] > 0
    nodes = {n for s in m["stages"].values() for n in s.get("nodes", [])}
    assert len(nodes) == 2, m["stages"]  # work ran on both nodes
    assert m["stages"]["heuristics"]["rows"] == c["accepted"]
