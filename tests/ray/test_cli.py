"""The ``rayfs`` command line end to end, in real processes: serve a config, use it by name, stop it.

``rayfs serve`` runs in the background with its own local Ray; every other command is a separate
process that joins that Ray by address and finds the store by name.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from rayfs.sources.files import write_table
from rayfs.testing import oracle_training_set

CONFIG = """
[store]
name = "clitest"
path = "store"
shards = 2
durability = "sync"

[[streams]]
name = "upvotes"
entities = ["user", "post"]
timestamp = "ts"

[[features]]
name = "user_upvotes_7d"
stream = "upvotes"
entity = "user"
agg = "count"
window = "7d"
owner = "ranking"
description = "Upvotes in the last 7 days"

[[sql]]
query = "SELECT user, SUM(score) AS user_score, LAST_K(post, 2) AS user_last_posts FROM upvotes GROUP BY user"
"""


def rayfs(*args, cwd, timeout=180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rayfs.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout)


def events(seed: int, n: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    t0 = pd.Timestamp("2024-03-01", tz="UTC")
    return pd.DataFrame({"user": [f"u{i}" for i in rng.integers(0, 20, n)],
                         "post": [f"p{i}" for i in rng.integers(0, 50, n)],
                         "score": rng.normal(size=n).round(3),
                         "ts": t0 + pd.to_timedelta(rng.integers(0, 20 * 86_400, n), unit="s")})


@pytest.fixture
def served(tmp_path):
    (tmp_path / "reddit.toml").write_text(CONFIG)
    proc = subprocess.Popen([sys.executable, "-m", "rayfs.cli", "serve", "--config", "reddit.toml"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if line.startswith("serving until"):
            break
    text = "".join(lines)
    m = re.search(r"address='([^']+)'", text)
    assert m, text + proc.stderr.read() if proc.poll() is not None else text
    yield tmp_path, m.group(1), proc
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


def test_serve_ingest_files_train_describe_audit_stop(served):
    cwd, address, proc = served
    target = ["--name", "clitest", "--address", address]
    a, b = events(1, 3000), events(2, 2000)
    write_table(a, str(cwd / "a.parquet"))
    b.assign(ts=b["ts"].dt.strftime("%Y-%m-%dT%H:%M:%SZ")).to_csv(cwd / "b.csv", index=False)  # ISO strings
    r = rayfs("ingest", "upvotes", "a.parquet", "b.csv", "--batch-rows", "1000", *target, cwd=cwd)
    assert r.returncode == 0, r.stderr
    assert "ingested 5,000 events" in r.stdout

    r = rayfs("features", "list", *target, cwd=cwd)
    assert r.returncode == 0, r.stderr
    assert all(n in r.stdout for n in ("user_upvotes_7d", "user_score", "user_last_posts"))
    r = rayfs("features", "describe", "user_upvotes_7d", *target, cwd=cwd)
    d = json.loads(r.stdout)
    assert d["owner"] == "ranking" and d["window"] == "7d" and d["stats"]["count"] == 20
    assert d["sql"] == "SELECT user, COUNT(*) AS user_upvotes_7d FROM upvotes GROUP BY user"

    obs = pd.DataFrame({"user": [f"u{i}" for i in range(25)],
                        "ts": pd.Timestamp("2024-03-10", tz="UTC") + pd.to_timedelta(np.arange(25), unit="h"),
                        "label": np.arange(25) % 2})
    write_table(obs, str(cwd / "obs.parquet"))
    r = rayfs("train", "obs.parquet", "--features", "user_upvotes_7d,user_score", "-o", "train.parquet",
              *target, cwd=cwd)
    assert r.returncode == 0, r.stderr
    got = pd.read_parquet(cwd / "train.parquet")
    from rayfs.model.config import load_config

    cfg = load_config(cwd / "reddit.toml")
    want = oracle_training_set({"upvotes": pd.concat([a, b], ignore_index=True)}, cfg.stream_map,
                               [cfg.feature_map["user_upvotes_7d"], cfg.feature_map["user_score"]], obs,
                               timestamp="ts")
    assert got["user_upvotes_7d"].tolist() == want["user_upvotes_7d"].tolist()
    np.testing.assert_allclose(got["user_score"], want["user_score"], rtol=1e-9)
    assert got["label"].tolist() == obs["label"].tolist()

    r = rayfs("audit", "-n", "50", *target, cwd=cwd)
    assert r.returncode == 0 and "OK" in r.stdout, r.stdout + r.stderr
    r = rayfs("status", *target, cwd=cwd)
    assert r.returncode == 0 and "2 shards" in r.stdout, r.stderr
    r = rayfs("ingest", "nope", "a.parquet", *target, cwd=cwd)
    assert r.returncode == 2 and "unknown stream 'nope'" in r.stderr

    r = rayfs("stop", *target, cwd=cwd)
    assert r.returncode == 0, r.stderr
    assert proc.wait(timeout=60) == 0  # serve notices the store is gone, shuts its Ray down and exits
    # The data stays: the same config opens it again (embedded, from its path) with everything in it.
    r = rayfs("features", "describe", "user_score", "--config", "reddit.toml", cwd=cwd)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["stats"]["count"] == 20


def test_bad_config_is_reported_with_file_and_line(tmp_path):
    (tmp_path / "bad.toml").write_text(CONFIG.replace('agg = "count"', 'agg = "cnt"'))
    r = rayfs("serve", "--config", "bad.toml", cwd=tmp_path, timeout=60)
    assert r.returncode == 2
    assert re.search(r"bad\.toml:\d+: features\[0\]\.agg: .*'cnt'", r.stderr), r.stderr
    assert not os.path.exists(tmp_path / "store")


def test_ingest_of_a_bad_file_midway_names_the_file_and_keeps_what_came_before(tmp_path):
    """Files are ingested in one pipelined call: a bad batch in the second file stops the ingest with an
    error naming that file and saying that the batches before it were ingested; they are."""
    (tmp_path / "reddit.toml").write_text(CONFIG)
    good, bad = events(31, 3000), events(32, 400)
    write_table(good, str(tmp_path / "a.parquet"))
    bad = bad.astype({"score": object})
    bad.loc[250, "score"] = "not a number"
    write_table(bad, str(tmp_path / "b.csv"))
    r = rayfs("ingest", "upvotes", "a.parquet", "b.csv", "--batch-rows", "1000", "--config", "reddit.toml",
              cwd=tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "score" in r.stderr and "b.csv" in r.stderr, r.stderr
    assert "batches 0..2 were ingested" in r.stderr, r.stderr
    r = rayfs("features", "describe", "user_score", "--config", "reddit.toml", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["stats"]["count"] == good["user"].nunique()


def one_error_line(r: subprocess.CompletedProcess, command: str) -> str:
    """The error a failed command printed: exit status 2, one line on stderr (last), no traceback."""
    assert r.returncode == 2, r.stdout + r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith(f"rayfs {command}: ")]
    assert errors == lines[-1:], r.stderr
    return errors[0]


@pytest.mark.parametrize("args, message", [
    (["demo", "--events", "-5"], "argument --events: must be an integer >= 1, not -5"),
    (["demo", "--events", "lots"], "argument --events: expected an integer, got 'lots'"),
    (["demo", "--observations", "0"], "argument --observations: must be an integer >= 1, not 0"),
    (["demo", "--shards", "0"], "argument --shards: must be an integer >= 1, not 0"),
    (["demo", "--seed", "-1"], "argument --seed: must be an integer >= 0, not -1"),
    (["ingest", "upvotes", "a.parquet", "--batch-rows", "0", "--path", "store"],
     "argument --batch-rows: must be an integer >= 1, not 0"),
    (["audit", "-n", "-3", "--path", "store"], "argument -n: must be an integer >= 1, not -3"),
])
def test_meaningless_numbers_are_usage_errors_not_tracebacks(tmp_path, args, message):
    r = rayfs(*args, cwd=tmp_path, timeout=60)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip().splitlines()[-1].endswith(message), r.stderr
    assert list(tmp_path.iterdir()) == []  # nothing was started or created


@pytest.mark.parametrize("args", [
    ["features", "list"], ["features", "describe", "user_score"], ["status"], ["audit"], ["stop"],
    ["train", "obs.parquet", "-o", "out.parquet"], ["ingest", "upvotes", "obs.parquet"],
], ids=lambda a: " ".join(a[:2]))
def test_a_path_that_holds_no_store_is_refused_and_nothing_is_created(tmp_path, args):
    write_table(pd.DataFrame({"user": ["u1"], "ts": [1.0]}), str(tmp_path / "obs.parquet"))
    (tmp_path / "empty").mkdir()
    command = " ".join(a for a in args[:2] if a in ("features", "list", "describe")) or args[0]
    for target, created in (("typo", False), ("empty", True)):
        r = rayfs(*args, "--path", target, cwd=tmp_path, timeout=60)
        line = one_error_line(r, command)
        assert f"--path {target}: no rayfs store there" in line, line
        assert (tmp_path / target).exists() is created
    assert list((tmp_path / "empty").iterdir()) == []
    assert not (tmp_path / "out.parquet").exists()


def iso_events(seed: int, n: int) -> tuple[pd.DataFrame, list[str]]:
    """Events (ts exact, microseconds) and their timestamps as text: whole seconds with Z for the first
    1,200 rows, then fractions, offsets and naive (UTC) forms mixed."""
    df = events(seed, n)
    rng = np.random.default_rng(seed)
    df["ts"] = df["ts"] + pd.to_timedelta(np.where(np.arange(n) < 1200, 0, rng.integers(0, 10**6, n)), unit="us")
    texts = []
    for i, t in enumerate(df["ts"]):
        if i < 1200:
            texts.append(t.strftime("%Y-%m-%dT%H:%M:%SZ"))
        elif i % 3 == 0:
            texts.append(t.strftime("%Y-%m-%dT%H:%M:%S.%fZ"))
        elif i % 3 == 1:
            texts.append(t.tz_convert("Asia/Kolkata").isoformat())
        else:
            texts.append(t.tz_localize(None).isoformat())
    return df, texts


def test_json_lines_with_every_iso_form_after_line_1000_ingest_and_train(tmp_path):
    (tmp_path / "reddit.toml").write_text(CONFIG.replace('name = "clitest"\n', ""))  # an embedded store
    df, texts = iso_events(41, 1600)
    with open(tmp_path / "e.jsonl", "w") as fh:
        for (user, post, score), ts in zip(df[["user", "post", "score"]].itertuples(index=False), texts, strict=True):
            fh.write(json.dumps({"user": user, "post": post, "score": score, "ts": ts}) + "\n")
    obs_df, obs_texts = iso_events(42, 1300)
    obs = obs_df[["user"]].assign(ts=obs_df["ts"], label=np.arange(len(obs_df)) % 2)
    with open(tmp_path / "obs.jsonl", "w") as fh:
        for user, ts, label in zip(obs["user"], obs_texts, obs["label"], strict=True):
            fh.write(json.dumps({"user": user, "ts": ts, "label": int(label)}) + "\n")

    r = rayfs("ingest", "upvotes", "e.jsonl", "--batch-rows", "1000", "--config", "reddit.toml", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "ingested 1,600 events" in r.stdout
    r = rayfs("train", "obs.jsonl", "--features", "user_upvotes_7d,user_score", "-o", "train.parquet",
              "--config", "reddit.toml", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    got = pd.read_parquet(tmp_path / "train.parquet")
    from rayfs import load_config

    cfg = load_config(tmp_path / "reddit.toml")
    want = oracle_training_set({"upvotes": df}, cfg.stream_map,
                               [cfg.feature_map["user_upvotes_7d"], cfg.feature_map["user_score"]], obs,
                               timestamp="ts")
    assert got["user_upvotes_7d"].tolist() == want["user_upvotes_7d"].tolist()
    np.testing.assert_allclose(got["user_score"], want["user_score"], rtol=1e-9)

    # a missing input file, after the store was opened: one line naming the file
    r = rayfs("ingest", "upvotes", "missing.jsonl", "--config", "reddit.toml", cwd=tmp_path)
    assert "missing.jsonl: no such file" in one_error_line(r, "ingest")
