"""A store under Ray's token authentication: drivers without the cluster's token can neither connect nor
stop it; a driver with the token can do both.

The cluster is a separate local Ray (``ray start --head --block`` with ``RAY_AUTH_MODE=token`` and
``RAY_AUTH_TOKEN``) on free ports with its own temp dir and an empty ``HOME`` (so no ``~/.ray/auth_token``
of this machine is found by any process of the test); every driver is its own process. The cluster is
ended by signalling the ``ray start`` process, then killing by PID any process left that runs from the
test's temp dir; never with ``ray stop``.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import ray

try:
    from ray._raylet import AuthenticationMode  # noqa: F401  (Ray 2.52+)
except ImportError:  # pragma: no cover - depends on the installed Ray
    pytest.skip(f"Ray {ray.__version__} has no token authentication (RAY_AUTH_MODE=token needs Ray 2.52+)",
                allow_module_level=True)

REFUSED = "Authentication token is missing or incorrect"  # the GCS's answer, logged by the refused driver


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _ray_cli() -> list[str]:
    exe = Path(sys.executable).with_name("ray")
    return [str(exe)] if exe.exists() else [sys.executable, "-c", "from ray.scripts.scripts import main; main()"]


def _pids_under(base: str) -> list[int]:
    """PIDs of processes whose command line names the test's temp dir (the cluster's daemons and workers)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if base in cmd:
            out.append(int(entry))
    return out


@pytest.fixture(scope="module")
def cluster():
    base = tempfile.mkdtemp(prefix="rfauth", dir="/tmp")  # short: Ray's socket paths must fit in 107 bytes
    home = os.path.join(base, "home")
    os.makedirs(home)
    token = secrets.token_hex(32)
    gcs, client, dash, agent = free_ports(4)
    # Drivers start from a clean environment: no Ray variables of this test session, an empty HOME.
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["HOME"] = home
    head_env = {**env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}
    log = open(os.path.join(base, "head.log"), "w+")
    head = subprocess.Popen([*_ray_cli(), "start", "--head", "--block", "--port", str(gcs),
                             "--node-ip-address", "127.0.0.1", "--temp-dir", os.path.join(base, "ray"),
                             "--num-cpus", "1", "--include-dashboard", "false", "--dashboard-port", str(dash),
                             "--dashboard-agent-listen-port", str(agent), "--ray-client-server-port", str(client),
                             "--disable-usage-stats"],
                            env=head_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while "Ray runtime started" not in Path(log.name).read_text():
            assert head.poll() is None and time.monotonic() < deadline, Path(log.name).read_text()[-3000:]
            time.sleep(0.5)
        yield {"address": f"127.0.0.1:{gcs}", "token": token, "env": env, "base": base}
    finally:
        head.send_signal(signal.SIGTERM)  # `ray start --block` ends the daemons it started
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            head.kill()
            head.wait(timeout=30)
        for pid in _pids_under(base):  # anything that outlived it (workers), by PID
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        log.close()
        shutil.rmtree(base, ignore_errors=True)


def driver(code: str, env: dict, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], env=env, capture_output=True,
                          text=True, timeout=timeout)


def rayfs_cli(env: dict, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rayfs.cli", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


OPEN = """
import json, sys, warnings
warnings.filterwarnings("ignore")
import pandas as pd, rayfs
address, path = sys.argv[1:]
store = rayfs.FeatureStore.open(path, shards=2, name="guarded", address=address)
store.register_stream("ev", entities=["user"], timestamp="ts")
store.register_feature(rayfs.Feature(name="n", stream="ev", entity="user", agg="count"))
store.ingest("ev", pd.DataFrame({"user": ["a", "b", "a"], "ts": [1, 2, 3]}))
print(json.dumps(store.get_features("user", ["a", "b", "c"], "n")["n"].tolist()))
store.close()  # detach: the named store keeps running in the cluster
"""

CONNECT = """
import json, sys, warnings
warnings.filterwarnings("ignore")
import rayfs
store = rayfs.connect("guarded", address=sys.argv[1])
print(json.dumps(store.get_features("user", ["a", "b", "c"], "n")["n"].tolist()))
store.close()
"""


def test_a_driver_without_the_token_can_neither_connect_nor_stop_the_store(cluster):
    address, token, env = cluster["address"], cluster["token"], cluster["env"]
    with_token = {**env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}
    r = driver(OPEN, with_token, address, os.path.join(cluster["base"], "store"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout.strip().splitlines()[-1]) == [2, 1, 0]

    no_token = dict(env)  # RAY_AUTH_MODE unset and no token file: Ray connects without credentials
    wrong = {**env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    stop = ["stop", "--name", "guarded", "--address", address]
    attempts = {"connect without a token": lambda: driver(CONNECT, no_token, address, timeout=120),
                "connect with a wrong token": lambda: driver(CONNECT, wrong, address, timeout=120),
                "stop without a token": lambda: rayfs_cli(no_token, *stop, timeout=120),
                "stop with a wrong token": lambda: rayfs_cli(wrong, *stop, timeout=120)}
    with ThreadPoolExecutor(len(attempts)) as pool:  # each waits ~20 s for the GCS before giving up
        results = dict(zip(attempts, pool.map(lambda f: f(), attempts.values()), strict=True))
    for what, r in results.items():
        assert r.returncode != 0, (what, r.stdout)
        assert REFUSED in r.stderr, (what, r.stderr[-2000:])
        assert "Failed to connect to Ray cluster" in r.stderr, (what, r.stderr[-2000:])

    # The store is untouched: a driver with the token reads the same values, then stops it.
    r = driver(CONNECT, with_token, address)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout.strip().splitlines()[-1]) == [2, 1, 0]
    r = rayfs_cli(with_token, *stop)
    assert r.returncode == 0 and "stopped store guarded" in r.stdout, r.stderr[-3000:]
    r = driver(CONNECT, with_token, address)
    assert r.returncode != 0 and "no store named 'guarded'" in r.stderr, r.stderr[-3000:]
