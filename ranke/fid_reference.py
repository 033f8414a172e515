"""Reference FID statistics of the real images, computed once per (dataset, subset, resolution, extractor, protocol).

`python -m ranke fid-reference --config FILE.json --out resources/fid/<key>.pt`

Real images: the COCO-layout split of config score.fid_reference (default: the val split; real
studies: COCO val2014), each centre-cropped to its shorter side and LANCZOS-resized to the
generation resolution (config image_size) — the GigaGAN/LlamaGen evaluation transform — either
all images or a fixed-seed random subset of n. Features come from the torch-fidelity extractor of
config assets.fid, fed as config score.fid_protocol says (ranke.metrics.fid: "clean" = clean-fid's
PIL-bicubic resize to 299, as the official evaluation; "torch-fidelity" = its built-in resize), the
same way the score stage feeds the generated images.

The output file name is `reference_cache_key(...)` + ".pt" (the workflow builds it from the config),
so a change of dataset, subset, resolution, extractor or FID protocol gives a new file; the file
also carries its metadata (with the extractor weights' sha256), and both this stage and the score
stage refuse to use a file whose metadata disagrees with what is asked (MATCH_FIELDS), so clean
reference statistics are never compared with torch-fidelity-protocol samples or the reverse.
Re-running with matching metadata reuses the file without reading any image.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ranke.config import configured_fid_protocol, reference_key_from_config, reference_settings
from ranke.io import save_torch, sha256_file
from ranke.runtime import (
    add_config_arguments,
    config_from_args,
    log_environment,
    resolve_device,
    set_threads,
    setup_logging,
)

log = logging.getLogger("ranke.fid_reference")

# metadata fields that must agree between a cached file and the request
MATCH_FIELDS = ("dataset_root", "split", "subset_n", "subset_seed", "resolution", "extractor", "fid_protocol",
                "weights_sha256")


class ReferenceMismatchError(ValueError):
    """A reference-statistics file was computed for other settings than the ones asked for."""


def expected_metadata(cfg: dict) -> dict:
    """The request's metadata (MATCH_FIELDS + key); hashes the extractor weights file if any."""
    s = reference_settings(cfg)
    w = s["weights"]
    if w is not None and not Path(w).is_file():
        raise FileNotFoundError(f"assets.fid.weights: {w} not found (FID feature extractor '{s['extractor']}')")
    return {**s, "weights_sha256": sha256_file(w) if w is not None else None, "key": reference_key_from_config(cfg)}


def check_metadata(meta: dict, expected: dict, path) -> None:
    diffs = [f"{k}: file has {meta.get(k)!r}, asked {expected.get(k)!r}" for k in MATCH_FIELDS
             if meta.get(k) != expected.get(k)]
    if diffs:
        raise ReferenceMismatchError(
            f"{path}: reference FID statistics were computed for other settings ({'; '.join(diffs)}); "
            "delete the file or rerun `python -m ranke fid-reference` for the current config"
        )


def load_reference(path: str | os.PathLike, expected: dict | None = None) -> dict:
    """{"mu", "sigma" (float64 numpy), "meta"}; refuses a file whose metadata disagrees with `expected`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"reference FID statistics not found: {path} (run `python -m ranke fid-reference`)")
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(obj, dict) or not {"mu", "sigma", "meta"} <= set(obj):
        raise ReferenceMismatchError(f"{path}: not a ranke reference-statistics file (keys mu, sigma, meta)")
    if expected is not None:
        check_metadata(obj["meta"], expected, path)
    ref = {"mu": obj["mu"].double().numpy(), "sigma": obj["sigma"].double().numpy(), "meta": obj["meta"]}
    if "sigma_sqrt" in obj:  # absent from files written before it was cached
        ref["sigma_sqrt"] = obj["sigma_sqrt"].double().numpy()
    return ref


def select_images(root, split: str, n: int, seed: int | None) -> list[str]:
    """Files (relative to root) of all images of the split, or a fixed-seed subset of n (sorted by image id)."""
    from ranke.data.coco import read_split

    images = read_split(root, split).images.sort_values("image_id", ignore_index=True)
    files = images["file"].tolist()
    if n and n < len(files):
        idx = np.sort(np.random.default_rng(seed).choice(len(files), size=n, replace=False))
        files = [files[i] for i in idx]
    elif n and n > len(files):
        log.warning("score.fid_reference.n = %d but split '%s' has only %d images: using all", n, split, len(files))
    return files


def compute_reference(cfg: dict, device=None, *, batch_size: int | None = None, workers: int | None = None) -> dict:
    """Extract features of the reference images -> {"mu", "sigma", "meta"} (not saved)."""
    from ranke.data.coco import EVAL, BadImages, CocoImages
    from ranke.metrics.fid import fid_statistics, load_fid_extractor

    device = resolve_device(device or cfg.get("device", "auto"))
    meta = expected_metadata(cfg)
    ref = (cfg.get("score") or {}).get("fid_reference") or {}
    batch_size = batch_size or int((cfg.get("score") or {}).get("batch_size", 100))
    # CPUs this job may use (SLURM restricts the affinity; os.cpu_count() would report the whole node)
    workers = int(ref.get("workers", min(8, len(os.sched_getaffinity(0))))) if workers is None else workers

    files = select_images(meta["dataset_root"], meta["split"], meta["subset_n"], meta["subset_seed"])
    if len(files) < 2:
        raise ValueError(f"need >= 2 reference images, found {len(files)} in {meta['dataset_root']} {meta['split']}")
    extractor = load_fid_extractor(cfg["assets"]["fid"], device, protocol=configured_fid_protocol(cfg),
                                   clip_cfg=cfg["assets"].get("clip"))
    log.info("reference %s: %d images at %d px, extractor %s (protocol %s), batch %d, %d loader workers",
             meta["key"], len(files), meta["resolution"], extractor.name, extractor.protocol, batch_size, workers)

    # Decoding + LANCZOS resizing run in DataLoader worker processes, batched, overlapped with features.
    dataset = CocoImages(meta["dataset_root"], files, meta["resolution"], EVAL, errors=True)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=workers,
                                         pin_memory=device.type == "cuda", shuffle=False)
    bad = BadImages(cfg.get("bad_images", "fail"), f"fid-reference {meta['split']}")
    t0 = time.perf_counter()
    feats = []
    with torch.inference_mode():
        for idx, images, errors in tqdm(loader, desc="fid-reference", unit="batch", mininterval=10):
            good = bad.keep(idx, errors, dataset)
            if good.any():
                feats.append(extractor.features(images[good]))
    bad.finish(len(files), need=2)
    feats = torch.cat(feats)
    stats = fid_statistics(feats)
    log.info("reference features %s in %.1f s", tuple(feats.shape), time.perf_counter() - t0)
    meta = {**meta, "n_images": int(feats.shape[0]), "feature_layer": extractor.layer,
            "feature_dim": int(feats.shape[1]), "resample": "lanczos", "crop": "center",
            "preprocessing": extractor.preprocessing, "torch_fidelity": _tf_version(),
            "skipped_images": bad.skipped}
    return {"mu": stats["mu"], "sigma": stats["sigma"], "meta": meta}


def _tf_version() -> str:
    import torch_fidelity

    return str(getattr(torch_fidelity, "__version__", "?"))


def save_reference(ref: dict, path: str | os.PathLike) -> None:
    """{"mu", "sigma", "sigma_sqrt", "meta"}: the square root of sigma is computed once here, so that
    every score job's Frechet distance needs one symmetric eigen-solve (ranke.metrics.fid)."""
    from ranke.metrics.fid import covariance_sqrt

    root = ref.get("sigma_sqrt")
    save_torch({"mu": torch.as_tensor(ref["mu"], dtype=torch.float64),
                "sigma": torch.as_tensor(ref["sigma"], dtype=torch.float64),
                "sigma_sqrt": torch.as_tensor(covariance_sqrt(ref["sigma"]) if root is None else root,
                                              dtype=torch.float64),
                "meta": ref["meta"]}, path)


def ensure_reference(cfg: dict, out: str | os.PathLike, device=None, *, force: bool = False) -> dict:
    """Load `out` if its metadata matches the config, else compute and save it (atomically)."""
    out = Path(out)
    expected = expected_metadata(cfg)
    if out.stem != expected["key"]:
        log.warning("output name %s does not match the cache key %s", out.name, expected["key"])
    if out.is_file() and not force:
        try:
            ref = load_reference(out, expected)
            log.info("reusing reference statistics %s (%d images)", out, ref["meta"].get("n_images", -1))
            return ref
        except ReferenceMismatchError as e:
            log.warning("recomputing: %s", e)
    ref = compute_reference(cfg, device)
    save_reference(ref, out)
    log.info("wrote %s", out)
    return ref


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ranke fid-reference", description=__doc__.splitlines()[0])
    add_config_arguments(p, "config subset: device, image_size, assets {coco_root, fid, clip}, bad_images, score {batch_size, fid_protocol, fid_reference}")
    p.add_argument("--out", required=True, help="output .pt (name = reference_cache_key(...) + '.pt')")
    p.add_argument("--force", action="store_true", help="recompute even if a matching file exists")
    p.add_argument("--log", default=None, help="also log to this file")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default: all cores)")
    args = p.parse_args(argv)
    setup_logging(args.log)
    set_threads(args.threads)
    cfg = config_from_args(args)
    log_environment({"stage": "fid-reference", "key": reference_key_from_config(cfg)})
    ensure_reference(cfg, args.out, force=args.force)
    return 0
