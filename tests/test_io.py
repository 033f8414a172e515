import numpy as np
import pandas as pd
import pytest

from ranke import io


def _metrics(n=3):
    return pd.DataFrame(
        {
            "method": ["ranke"] * n,
            "replicate": np.zeros(n, dtype=np.int32),
            "round": np.arange(n, dtype=np.int32),
            "step": np.arange(n, dtype=np.int64) * 10,
            "metric": ["fid"] * n,
            "value": np.linspace(1, 2, n),
            "n": np.full(n, 100),
            "extractor": ["x"] * n,
            "details": ["{}"] * n,
        }
    )


def test_parquet_round_trip(tmp_path):
    df = _metrics()
    io.write_parquet(df, tmp_path / "m.parquet", "metrics")
    back = io.read_parquet(tmp_path / "m.parquet", "metrics")
    pd.testing.assert_frame_equal(back, df, check_dtype=False)
    assert back["round"].dtype == np.int32


def test_list_column_round_trip(tmp_path):
    df = pd.DataFrame(
        {
            "method": ["base", "base"],
            "round": np.int32(0),
            "prompt_id": [0, 1],
            "seed": [7, 8],
            "codes": [np.array([1, 2, 3], dtype=np.int32), np.array([4, 5, 6], dtype=np.int32)],
        }
    )
    io.write_parquet(df, tmp_path / "s.parquet", "samples")
    back = io.read_parquet(tmp_path / "s.parquet", "samples")
    assert [list(c) for c in back["codes"]] == [[1, 2, 3], [4, 5, 6]]


def test_write_rejects_wrong_columns(tmp_path):
    df = _metrics().drop(columns=["details"]).assign(extra=1)
    with pytest.raises(io.SchemaError, match=r"missing columns \['details'\].*unexpected columns \['extra'\]"):
        io.write_parquet(df, tmp_path / "m.parquet", "metrics")
    assert not (tmp_path / "m.parquet").exists()


def test_read_names_file_on_schema_mismatch(tmp_path):
    path = tmp_path / "m.parquet"
    io.write_parquet(_metrics(), path, "metrics")
    with pytest.raises(io.SchemaError, match=r"m\.parquet does not match the 'prompts' schema"):
        io.read_parquet(path, "prompts")
    with pytest.raises(FileNotFoundError, match="nothing.parquet"):
        io.read_parquet(tmp_path / "nothing.parquet", "metrics")
    (tmp_path / "bad.parquet").write_bytes(b"not parquet")
    with pytest.raises(io.SchemaError, match="bad.parquet: not a readable Parquet file"):
        io.read_parquet(tmp_path / "bad.parquet", "metrics")


def test_damaged_data_pages_name_the_file(tmp_path):
    """An intact footer (the schema reads) over damaged pages: pyarrow's own error names no file."""
    path = tmp_path / "samples.parquet"
    rng = np.random.default_rng(0)
    io.write_parquet(pd.DataFrame({"method": "m", "round": np.int32(1), "prompt_id": np.arange(500),
                                   "seed": np.arange(500), "codes": [rng.integers(0, 16384, 256, dtype=np.int32)
                                                                     for _ in range(500)]}), path, "samples")
    data = bytearray(path.read_bytes())
    data[64:len(data) // 2] = rng.integers(0, 256, len(data) // 2 - 64, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))
    with pytest.raises(io.CorruptFileError, match=r"samples\.parquet: the 'samples' file is damaged .*delete it"):
        io.read_parquet(path, "samples")


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.txt"
    io.write_text("old", target)
    with pytest.raises(RuntimeError):
        with io.atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_stale_temporaries_of_dead_writers_are_swept(tmp_path):
    """SIGKILL runs no cleanup: the next writer of the same output removes what a dead process of
    this host left (a file, or a half-written directory), and leaves a live writer's alone."""
    import subprocess

    dead = subprocess.Popen(["true"])
    dead.wait()  # a pid that has ended
    target = tmp_path / "tokens.parquet"
    stale_file = tmp_path / (io._temp_prefix("tmp", target.name, dead.pid) + "abc")
    stale_file.write_bytes(b"half")
    stale_dir = tmp_path / (io._temp_prefix("tmp", target.name, dead.pid) + "dir")
    (stale_dir / "sub").mkdir(parents=True)
    (stale_dir / "sub" / "policy.pt").write_bytes(b"x" * 1000)
    live = tmp_path / (io._temp_prefix("tmp", target.name) + "live")  # this process: still writing
    live.write_bytes(b"busy")
    other_host = tmp_path / f".tmp-{target.name}.{dead.pid}@some-other-node.xyz"
    other_host.write_bytes(b"?")
    unrelated = tmp_path / (io._temp_prefix("tmp", "prompts.parquet", dead.pid) + "q")
    unrelated.write_bytes(b"?")
    io.write_text("done", target)
    assert target.read_text() == "done"
    assert not stale_file.exists() and not stale_dir.exists()
    assert live.exists() and other_host.exists() and unrelated.exists()


def test_atomic_directory_replaces_whole(tmp_path):
    target = tmp_path / "ckpt"
    with io.atomic_path(target, is_dir=True) as tmp:
        (tmp / "a").write_text("1")
    with io.atomic_path(target, is_dir=True) as tmp:
        (tmp / "b").write_text("2")
    assert sorted(p.name for p in target.iterdir()) == ["b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_require_files_names_every_missing(tmp_path):
    (tmp_path / "here").write_text("x")
    with pytest.raises(FileNotFoundError) as e:
        io.require_files({"a.key": tmp_path / "here", "b.key": tmp_path / "gone", "c.key": None})
    assert "b.key" in str(e.value) and "c.key" in str(e.value) and "a.key" not in str(e.value)
