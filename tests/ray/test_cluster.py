"""A real multi-node run: a local Ray cluster of three node processes, in its own process.

See cluster_scenario.py for the steps. The session's Ray (conftest) is not used: a test process can only
be connected to one Ray cluster.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys


def test_named_store_on_a_three_node_cluster_survives_a_node_loss(tmp_path):
    script = os.path.join(os.path.dirname(__file__), "cluster_scenario.py")
    proc = subprocess.run([sys.executable, script, str(tmp_path / "store")], capture_output=True, text=True,
                          timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-5000:]
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    assert found["shard_nodes"] == 3, found  # one shard per node
    assert found["second_driver_rc"] == 0, found["second_driver_err"]
    assert found["second_driver_read_ok"], found
    assert found["killed_shards"] >= 1, found
    assert found["shards_on_live_nodes"] and found["victim_gone"], found
    assert found["online_equal"] and found["training_equal"], found
    assert found["audit_mismatches"] == 0, found
    assert found["events"] == 11 * 500, found  # ten batches from here, one from the second driver
