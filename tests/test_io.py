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


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.txt"
    io.write_text("old", target)
    with pytest.raises(RuntimeError):
        with io.atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


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
