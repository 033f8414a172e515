"""Files between stages: atomic writes, explicit Parquet schemas, validated reads.

Every file a stage hands to a later stage goes through this module, so that
(1) a killed stage never leaves a half-written output (temp file + rename), and
(2) a reader fails with the file's name when the columns are not what it expects.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

# ----------------------------------------------------------------------------------------------
# Parquet schemas (the contract between stages). Extra columns are an error, so that a stage
# cannot silently depend on something another stage does not promise.

_codes = pa.list_(pa.int32())

SCHEMAS: dict[str, pa.Schema] = {
    # tokenize: one row per image of a split
    "tokens": pa.schema(
        [
            ("image_id", pa.int64()),
            ("split", pa.string()),
            ("file", pa.string()),  # path relative to the COCO root
            ("caption_ids", pa.list_(pa.int64())),
            ("captions", pa.list_(pa.string())),
            ("codes", _codes),  # row-major grid_h * grid_w codebook indices
            ("grid_h", pa.int16()),
            ("grid_w", pa.int16()),
            ("vq_sha256", pa.string()),
        ]
    ),
    # tokenize: reference code histogram; count_a/count_b are two disjoint halves of the images
    # (even / odd row index) for the finite-sample "Real" floor of the code-shift metric.
    "code_hist": pa.schema(
        [
            ("code", pa.int32()),
            ("count", pa.int64()),
            ("count_a", pa.int64()),
            ("count_b", pa.int64()),
        ]
    ),
    # prompts: the evaluation prompt set
    "prompts": pa.schema(
        [
            ("prompt_id", pa.int64()),
            ("image_id", pa.int64()),
            ("caption_id", pa.int64()),
            ("caption", pa.string()),
        ]
    ),
    # baseline / sample: generated code maps
    "samples": pa.schema(
        [
            ("method", pa.string()),
            ("round", pa.int32()),
            ("prompt_id", pa.int64()),
            ("seed", pa.int64()),
            ("codes", _codes),
        ]
    ),
    # score: long format, one row per (metric) of one (method, replicate, round)
    "metrics": pa.schema(
        [
            ("method", pa.string()),
            ("replicate", pa.int32()),  # the replicate's seed (config `replicates`)
            ("round", pa.int32()),
            ("step", pa.int64()),  # cumulative training steps of the method at this round
            ("metric", pa.string()),
            ("value", pa.float64()),
            ("n", pa.int64()),  # number of samples behind the value
            ("extractor", pa.string()),  # feature extractor / model that produced the value
            ("details", pa.string()),  # JSON: protocol facts (cfg, prompts, conventions, ...)
        ]
    ),
    # score: one row per generated image: what a bootstrap or a paired test over prompts needs
    # (each image's codes, its contribution to the code histogram, are in samples.parquet)
    "per_sample": pa.schema(
        [
            ("method", pa.string()),
            ("replicate", pa.int32()),
            ("round", pa.int32()),
            ("prompt_id", pa.int64()),
            ("seed", pa.int64()),  # the sample's sampling seed
            ("clip_score", pa.float64()),  # 100 x cosine(image, caption), the CLIP-score model
            ("reward", pa.float64()),  # the training reward of the decoded image
        ]
    ),
    # score: the metrics of bootstrap resamples of the prompts, long format. Resample b has the
    # same prompt weights in every score job with the same prompts (ranke.metrics.bootstrap), so
    # rows of two methods with equal `sample_set` pair up resample by resample.
    "bootstrap": pa.schema(
        [
            ("method", pa.string()),
            ("replicate", pa.int32()),
            ("round", pa.int32()),
            ("metric", pa.string()),
            ("resample", pa.int32()),
            ("value", pa.float64()),
            ("sample_set", pa.string()),  # fingerprint of the (prompt_id, seed) rows resampled
        ]
    ),
    # round: one row per training step (NaN where a term is off in that mode)
    "train_log": pa.schema(
        [
            ("method", pa.string()),
            ("replicate", pa.int32()),  # the round's training seed (= its replicate)
            ("round", pa.int32()),
            ("step", pa.int64()),
            ("phase", pa.string()),  # "policy", "decoder" or "both"
            ("reward_mean", pa.float64()),
            ("reward_std", pa.float64()),
            ("reward_best_mean", pa.float64()),
            ("loss_policy", pa.float64()),
            ("loss_pg", pa.float64()),
            ("kl", pa.float64()),
            ("ratio_mean", pa.float64()),
            ("tau", pa.float64()),
            ("loss_disc", pa.float64()),
            ("loss_rec", pa.float64()),
            ("loss_rec_l1", pa.float64()),
            ("loss_rec_perceptual", pa.float64()),
            ("loss_rec_gan", pa.float64()),
            ("adaptive_weight", pa.float64()),
            ("loss_rank_gan", pa.float64()),
            ("loss_consistency", pa.float64()),
            ("loss_reward", pa.float64()),
            ("loss_lasc", pa.float64()),
            ("loss_decoder", pa.float64()),
            ("grad_norm_policy", pa.float64()),
            ("grad_norm_decoder", pa.float64()),
            ("grad_norm_disc", pa.float64()),
            ("step_time_s", pa.float64()),
        ]
    ),
    # demo: quality bars of the demo base models
    "demo_quality": pa.schema(
        [
            ("model", pa.string()),
            ("metric", pa.string()),
            ("value", pa.float64()),
            ("target", pa.string()),  # the bar, as text (e.g. ">= 24"), "" when informational
            ("n", pa.int64()),
        ]
    ),
}


class SchemaError(ValueError):
    """A Parquet file does not have the columns/types its reader expects."""


class CorruptFileError(OSError):
    """A file between stages cannot be read although its header is intact (the message names it)."""


# ----------------------------------------------------------------------------------------------
# Atomic writes


_HOST = os.uname().nodename.split(".")[0]
log = logging.getLogger("ranke.io")


def _temp_prefix(kind: str, name: str, pid: int | None = None) -> str:
    """`.tmp-<name>.<pid>@<host>.`: a temporary says who writes it, so that a later writer can tell
    one left by a killed process (SIGKILL runs no cleanup) from one still being written."""
    return f".{kind}-{name}.{os.getpid() if pid is None else pid}@{_HOST}."


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def sweep_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Remove the temporaries of `path` (files or half-written directories, `.tmp-` and `.old-`)
    whose writer, a process on this host, has ended. A temporary of another host (a shared file
    system) or of a live process is left alone. Returns what was removed."""
    path = Path(path)
    removed = []
    if not path.parent.is_dir():
        return removed
    for kind in ("tmp", "old"):
        head = f".{kind}-{path.name}."
        for sibling in path.parent.glob(f"{glob.escape(head)}*"):
            owner = sibling.name[len(head):].split(".", 1)[0]  # "<pid>@<host>"
            pid, _, host = owner.partition("@")
            if not pid.isdigit() or host != _HOST or _pid_alive(int(pid)):
                continue
            size = _size(sibling)
            if sibling.is_dir() and not sibling.is_symlink():
                shutil.rmtree(sibling, ignore_errors=True)
            else:
                sibling.unlink(missing_ok=True)
            log.info("removed %s (%.1f MB), left behind by process %s, which has ended", sibling, size / 2**20, pid)
            removed.append(sibling)
    return removed


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    try:
        return path.stat().st_size
    except OSError:
        return 0


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, is_dir: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of `path`; on success rename it onto `path`.

    On an exception the temporary is removed and `path` is left untouched (an older version,
    if any, survives). The temporary lives in the same directory so the rename is atomic. A
    killed writer cannot clean up: the next writer of `path` removes what dead writers on this
    host left (sweep_stale_temporaries); at paper scale that is a checkpoint-sized directory.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale_temporaries(path)
    if is_dir:
        tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix("tmp", path.name), dir=path.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=_temp_prefix("tmp", path.name), dir=path.parent)
        os.close(fd)
        tmp = Path(name)
    # mkstemp/mkdtemp create owner-only files; outputs are ordinary shared files (umask applies)
    os.chmod(tmp, (0o777 if is_dir else 0o666) & ~_umask())
    try:
        yield tmp
        if is_dir and path.exists():
            # os.replace cannot replace a non-empty directory: move the old one aside first.
            old = path.with_name(_temp_prefix("old", path.name) + "x")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(text: str, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(obj, path: str | os.PathLike) -> None:
    write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n", path)


def save_torch(obj, path: str | os.PathLike) -> None:
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


# ----------------------------------------------------------------------------------------------
# Parquet


def write_parquet(df: pd.DataFrame, path: str | os.PathLike, kind: str) -> None:
    """Write `df` with the named schema (columns reordered, types cast), atomically."""
    schema = SCHEMAS[kind]
    missing = [n for n in schema.names if n not in df.columns]
    extra = [c for c in df.columns if c not in schema.names]
    if missing or extra:
        raise SchemaError(
            f"cannot write {path} as '{kind}': missing columns {missing}, unexpected columns {extra}"
        )
    table = pa.Table.from_pandas(df[schema.names], schema=schema, preserve_index=False)
    table = table.replace_schema_metadata({b"ranke.kind": kind.encode()})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def read_parquet(path: str | os.PathLike, kind: str) -> pd.DataFrame:
    """Read a Parquet file and check it has exactly the named schema (names and types)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{kind} file not found: {path}")
    expected = SCHEMAS[kind]
    try:
        actual = pq.read_schema(path)
    except Exception as e:  # pyarrow raises several types for a corrupt file
        raise SchemaError(f"{path}: not a readable Parquet file ({e})") from e
    problems = []
    for field in expected:
        if field.name not in actual.names:
            problems.append(f"missing column '{field.name}' ({field.type})")
        elif not actual.field(field.name).type.equals(field.type):
            problems.append(
                f"column '{field.name}' has type {actual.field(field.name).type}, expected {field.type}"
            )
    for name in actual.names:
        if name not in expected.names:
            problems.append(f"unexpected column '{name}'")
    if problems:
        raise SchemaError(f"{path} does not match the '{kind}' schema: " + "; ".join(problems))
    try:
        return pq.read_table(path, schema=expected).to_pandas()
    except Exception as e:  # damaged data pages behind an intact footer: pyarrow names no file
        raise CorruptFileError(f"{path}: the '{kind}' file is damaged ({type(e).__name__}: {e}); delete it and "
                               "rerun: Snakemake then remakes it with the stage that writes it") from e


# ----------------------------------------------------------------------------------------------
# Misc


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def require_files(paths: dict[str, str | os.PathLike | None]) -> None:
    """Raise one FileNotFoundError naming every missing file, keyed by what it is for."""
    missing = [f"{what}: {p}" for what, p in paths.items() if p is None or not Path(p).exists()]
    if missing:
        raise FileNotFoundError("missing input files:\n  " + "\n  ".join(missing))
