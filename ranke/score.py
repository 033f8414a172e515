"""Stage `score`: decode one (method, round)'s sample codes and measure them -> metrics.parquet.

`python -m ranke score --config FILE.json --method M --round R --samples P --checkpoint DIR|base
 --prompts P --code-hist P --fid-ref P --out P [--png-dir D]`

One pass over the samples in batches: codes -> that round's decoder (online or EMA weights,
config score.decoder) -> uint8 pixels exactly as upstream writes PNGs (clamp(127.5 v + 128)) ->
FID features (torch-fidelity extractor, fed as config score.fid_protocol says), CLIP image
embeddings (in the precision of config score.clip_precision), reward — all on the device, no files.
Then: FID against the cached reference statistics (ranke.fid_reference; computed with the same
protocol, checked through its metadata), CLIP score (100 x mean cosine, convention in `details`),
code-shift metrics against the real code histogram, mean reward, sample count and wall time.
Optional PNGs + a fixed-prompt grid for inspection.

Metric names (column `metric`): clip_score, fid, code_kl, code_kl_real_floor, code_entropy_bits,
code_entropy_bits_real, codebook_usage, reward, n_samples, wall_time_s.

For intervals and paired tests (ranke.report.stats) it also writes what a single number hides:
`per_sample.parquet` (every image's CLIP score and reward) and `bootstrap.parquet` (CLIP score,
reward, code-KL and FID of config score.bootstrap.resamples resamples of the prompts, the same
resamples in every run with the same prompts: ranke.metrics.bootstrap).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from ranke import io
from ranke.runtime import (
    add_config_arguments,
    autocast,
    autocast_dtype,
    config_from_args,
    log_environment,
    resolve_device,
    set_threads,
    setup_logging,
)

log = logging.getLogger("ranke.score")

METRIC_NAMES = (
    "clip_score", "fid", "code_kl", "code_kl_real_floor", "code_entropy_bits", "code_entropy_bits_real",
    "codebook_usage", "reward", "n_samples", "wall_time_s",
)
DECODER_FILES = {"online": "decoder.pt", "ema": "decoder_ema.pt"}


def decoder_path(cfg: dict, checkpoint: str | Path) -> tuple[Path, str]:
    """(VQ weights file, which) for "base" or a round checkpoint directory."""
    if str(checkpoint) == "base":
        kind = cfg.get("backbone", "llamagen")
        if kind != "llamagen":  # the base VQ lives inside the backbone's own model directory
            return Path(cfg["assets"][kind]["path"]), "base"
        path = Path(cfg["assets"]["vq"]["checkpoint"])
        if not path.is_file():
            raise FileNotFoundError(f"assets.vq.checkpoint: base VQ weights not found: {path}")
        return path, "base"
    which = (cfg.get("score") or {}).get("decoder", "online")
    if which not in DECODER_FILES:
        raise ValueError(f"score.decoder must be one of {sorted(DECODER_FILES)}, got {which!r}")
    path = Path(checkpoint) / DECODER_FILES[which]
    if not path.is_file():
        raise FileNotFoundError(f"round checkpoint has no {which} decoder (score.decoder = {which}): {path}")
    return path, which


class VQDecoder:
    """Decode-only LlamaGen path: the VQ of `path` without loading the GPT policy or text encoder
    (same arithmetic as LlamaGenBackbone.decode)."""

    def __init__(self, arch: dict, path: Path, image_size: int, device: torch.device):
        from ranke.models.backbone import build_vq
        from ranke.models.checkpoints import load_into

        vq = build_vq(arch)
        if image_size % vq.downsample:
            raise ValueError(f"image_size {image_size} is not a multiple of the VQ downsampling {vq.downsample}")
        self.vq = load_into(vq, path).to(device).eval().requires_grad_(False)
        side = image_size // vq.downsample
        self.grid = (side, side)
        self.codebook_size = int(vq.codebook_size)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (B, h*w) -> images (B,3,H,W) in [-1, 1]."""
        return self.vq.decode_codes(codes, self.grid).clamp(-1, 1)


class BackboneDecoder:
    """Any other backbone (e.g. Janus): its own decode(vq, codes) and load_vq(path)."""

    def __init__(self, cfg: dict, path: Path, which: str, device: torch.device):
        from ranke.models.factory import build_backbone

        self.backbone = build_backbone(cfg, device, load_text=False)
        self.vq = self.backbone.vq if which == "base" else self.backbone.load_vq(path)
        self.vq.eval().requires_grad_(False)
        self.codebook_size = int(self.backbone.codebook_size)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return self.backbone.decode(self.vq, codes)


def load_decoder(cfg: dict, checkpoint: str | Path, device: torch.device):
    """(decoder with .decode(codes) -> [-1, 1] and .codebook_size, which, path)."""
    path, which = decoder_path(cfg, checkpoint)
    if cfg.get("backbone", "llamagen") == "llamagen":
        decoder = VQDecoder(cfg["assets"]["vq"]["arch"], path, int(cfg["image_size"]), device)
    else:
        decoder = BackboneDecoder(cfg, path, which, device)
    return decoder, which, path


def check_codes(codes: np.ndarray, prompt_ids, codebook_size: int, source) -> None:
    """Every code within [0, codebook_size), or a ValueError naming the file and the first prompt
    whose codes are not (checked before any model loads)."""
    bad = (codes < 0) | (codes >= codebook_size)
    if bad.any():
        row = int(np.flatnonzero(bad.any(axis=1))[0])
        value = int(codes[row][bad[row]][0])
        raise ValueError(f"{source}: prompt_id {int(np.asarray(prompt_ids)[row])} has code {value}, outside the "
                         f"codebook [0, {codebook_size}) of this study's VQ ({int(bad.any(axis=1).sum())} samples "
                         "affected): were these samples made with another tokenizer?")


def _read_inputs(samples_path, prompts_path) -> pd.DataFrame:
    samples = io.read_parquet(samples_path, "samples")
    prompts = io.read_parquet(prompts_path, "prompts")
    if len(samples) == 0:
        raise ValueError(f"{samples_path}: no samples")
    lengths = samples["codes"].map(len)
    if lengths.nunique() != 1:
        raise ValueError(f"{samples_path}: code maps of different lengths {sorted(lengths.unique())[:5]}")
    df = samples.merge(prompts[["prompt_id", "caption"]], on="prompt_id", how="left", validate="many_to_one")
    if df["caption"].isna().any():
        missing = df.loc[df["caption"].isna(), "prompt_id"].iloc[0]
        raise ValueError(f"{samples_path}: prompt_id {missing} is not in {prompts_path}")
    return df.sort_values(["prompt_id", "seed"], ignore_index=True)


def write_pngs(images: torch.Tensor, names: list[str], png_dir: Path) -> None:
    """Inspection only (not the scoring path): uint8 (B,3,H,W) -> PNG files."""
    from PIL import Image

    for img, name in zip(images.permute(0, 2, 3, 1).cpu().numpy(), names):
        Image.fromarray(img).save(png_dir / name)


def write_grid(images: torch.Tensor, path: Path, nrow: int = 8) -> None:
    from PIL import Image
    from torchvision.utils import make_grid

    grid = make_grid(images, nrow=min(nrow, len(images)), padding=2, pad_value=255)
    Image.fromarray(grid.permute(1, 2, 0).cpu().numpy()).save(path, format="PNG")


def score(cfg: dict, method: str, round_idx: int, samples_path, checkpoint, prompts_path, code_hist_path,
          fid_ref_path, out_path, png_dir=None, grid_path=None, *, replicate: int = 0, per_sample_path=None,
          bootstrap_path=None) -> pd.DataFrame:
    """Decode + measure one (method, replicate, round); writes `out_path` (schema metrics) and,
    when given, `per_sample_path` (schema per_sample) and `bootstrap_path` (schema bootstrap)."""
    from ranke.fid_reference import expected_metadata, load_reference
    from ranke.metrics import bootstrap as bs
    from ranke.runtime import code_version
    from ranke.metrics import to_uint8, uint8_to_float
    from ranke.config import configured_fid_protocol
    from ranke.metrics.clip_score import (IMAGE_RESIZE, check_clip_files, clip_convention, image_embeddings,
                                          load_clip_model, pair_scores, resolve_clip_precision, text_embeddings)
    from ranke.metrics.fid import fid_statistics, frechet_distance, load_fid_extractor
    from ranke.metrics.shift import code_histogram, kl_divergence, real_histograms, shift_metrics
    from ranke.rewards import build_reward

    t_start = time.perf_counter()
    sc = cfg.get("score") or {}
    device = resolve_device(cfg.get("device", "auto"))
    dtype = autocast_dtype(cfg.get("precision", "auto"), device)
    batch_size = int(sc.get("batch_size", 100))
    eps = float(sc.get("shift_smoothing", 1e-6))
    fid_protocol = configured_fid_protocol(cfg)
    clip_precision = resolve_clip_precision(sc.get("clip_precision", "auto"), device)
    if png_dir is None and sc.get("write_png"):
        png_dir = Path(out_path).parent / "images"

    # Inputs first (cheap, and fail before any model loads).
    from ranke.config import codebook_size as configured_codebook_size

    df = _read_inputs(samples_path, prompts_path)
    codes_all = np.stack(df["codes"].to_numpy()).astype(np.int64)
    check_codes(codes_all, df["prompt_id"], configured_codebook_size(cfg), samples_path)
    code_hist = io.read_parquet(code_hist_path, "code_hist")
    reference = load_reference(fid_ref_path, expected_metadata(cfg))
    if reference["meta"]["resolution"] != int(cfg["image_size"]):
        raise ValueError(f"{fid_ref_path}: reference at {reference['meta']['resolution']} px, config image_size {cfg['image_size']}")

    # every weight file, before any model loads: one FileNotFoundError naming the config key
    decoder_path(cfg, checkpoint)
    check_clip_files(cfg["assets"]["clip"], "assets.clip")
    if cfg["assets"]["reward"].get("kind", "open_clip") == "open_clip":
        check_clip_files(cfg["assets"]["reward"], "assets.reward")

    decoder, which, vq_path = load_decoder(cfg, checkpoint, device)
    clip = load_clip_model(cfg["assets"]["clip"], device, precision=clip_precision)
    fid_cfg = cfg["assets"]["fid"]
    # the demo's clip-image FID reuses the CLIP-score model only when that one runs in fp32, so
    # that the FID feature space does not depend on score.clip_precision
    same_clip = fid_cfg["extractor"] == "clip-image" and fid_cfg.get("weights") and clip_precision == "fp32" and \
        Path(fid_cfg["weights"]).resolve() == Path(cfg["assets"]["clip"]["weights"]).resolve()
    extractor = load_fid_extractor(fid_cfg, device, protocol=fid_protocol, clip_cfg=cfg["assets"]["clip"],
                                   clip_model=clip if same_clip else None)
    reward_model = build_reward(cfg["assets"]["reward"], device)

    n = len(df)
    codebook_size = decoder.codebook_size
    log.info("scoring %s round %d: %d samples (%d prompts), decoder %s (%s), batch %d, device %s, autocast %s",
             method, round_idx, n, df["prompt_id"].nunique(), which, vq_path, batch_size, device, dtype)

    grid_rows = set(df.groupby("prompt_id", sort=True).head(1).index[: int(sc.get("grid_prompts", 8))])
    grid_images: dict[int, torch.Tensor] = {}
    feats, img_emb, txt_emb, rewards = [], [], [], []
    timing = dict.fromkeys(("decode", "fid", "clip", "reward", "png"), 0.0)

    def tick(key, t0):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        timing[key] += time.perf_counter() - t0
        return time.perf_counter()

    with contextlib.ExitStack() as stack:
        # PNGs (inspection only) go to a temporary directory renamed onto png_dir on success
        png_tmp = stack.enter_context(io.atomic_path(png_dir, is_dir=True)) if png_dir else None
        stack.enter_context(torch.inference_mode())
        for start in tqdm(range(0, n, batch_size), desc=f"score {method} r{round_idx}", mininterval=10):
            rows = slice(start, start + batch_size)
            captions = df["caption"].iloc[rows].tolist()
            t0 = time.perf_counter()
            codes = torch.from_numpy(codes_all[rows]).to(device, non_blocking=True)
            with autocast(device, dtype):
                images = decoder.decode(codes)
            pixels = to_uint8(images)  # exactly what the upstream PNG would hold
            t0 = tick("decode", t0)
            feats.append(extractor.features(pixels))
            t0 = tick("fid", t0)
            img_emb.append(image_embeddings(clip, pixels).cpu())
            txt_emb.append(text_embeddings(clip, captions).cpu())
            t0 = tick("clip", t0)
            rewards.append(reward_model(uint8_to_float(pixels), captions).float().cpu())
            t0 = tick("reward", t0)
            for i in grid_rows.intersection(range(start, start + len(captions))):
                grid_images[i] = pixels[i - start].cpu()
            if png_tmp is not None:
                ids = zip(df["prompt_id"].iloc[rows], df["seed"].iloc[rows])
                write_pngs(pixels, [f"{p:06d}_{sd}.png" for p, sd in ids], png_tmp)
                tick("png", t0)
        if png_tmp is not None:
            write_grid(torch.stack([grid_images[i] for i in sorted(grid_images)]), png_tmp / "grid.png")
    if grid_path is not None:
        # the report's cross-method sample grid: same prompts and seeds for every method
        with io.atomic_path(grid_path) as tmp:
            write_grid(torch.stack([grid_images[i] for i in sorted(grid_images)]), tmp)
    if png_dir:
        log.info("wrote %d PNGs + grid.png (first %d prompts) to %s", n, len(grid_images), png_dir)

    features = torch.cat(feats)
    fid_value = frechet_distance(fid_statistics(features), reference)
    clip_per_sample = pair_scores(torch.cat(img_emb), torch.cat(txt_emb)).double().numpy()
    reward_per_sample = torch.cat(rewards).double().numpy()
    clip_value = float(clip_per_sample.mean())
    reward_value = float(reward_per_sample.mean())
    gen_counts = code_histogram(codes_all, codebook_size)
    real = real_histograms(code_hist, codebook_size)
    shift = shift_metrics(gen_counts, real, eps)
    n_real = int(real["count"].sum() // codes_all.shape[1])

    # bootstrap resamples of the prompts (the same weights in every run with these prompts)
    boot_cfg = sc.get("bootstrap") or {}
    n_boot, n_boot_fid = int(boot_cfg.get("resamples", 1000)), int(boot_cfg.get("fid_resamples", 200))
    boot_seed = int(boot_cfg.get("seed", 0))
    prompt_index, prompt_ids = pd.factorize(df["prompt_id"], sort=True)
    sample_set = bs.sample_set_fingerprint(df["prompt_id"], df["seed"])
    t0 = time.perf_counter()
    weights = bs.row_weights(bs.resample_weights(len(prompt_ids), max(n_boot, n_boot_fid), boot_seed), prompt_index)
    boot = {
        "clip_score": bs.weighted_means(clip_per_sample, weights[:n_boot]),
        "reward": bs.weighted_means(reward_per_sample, weights[:n_boot]),
        "code_kl": np.array([kl_divergence(c, real["count"], eps) for c in
                             bs.weighted_code_counts(codes_all, weights[:n_boot], codebook_size)]),
        "fid": bs.weighted_fid(features.to(device), weights[:n_boot_fid], reference),
    }
    timing["bootstrap"] = time.perf_counter() - t0
    wall = time.perf_counter() - t_start
    log.info("timing (s): %s; %.1f images/s overall", {k: round(v, 2) for k, v in timing.items()}, n / wall)
    log.info("bootstrap over %d prompts: %d resamples (FID %d), seed %d, sample set %s", len(prompt_ids), n_boot,
             n_boot_fid, boot_seed, sample_set)

    s = cfg.get("sampling") or {}
    common = {
        "n_prompts": int(df["prompt_id"].nunique()), "n_samples": n, "image_size": int(cfg["image_size"]),
        "cfg_scale": s.get("cfg_scale"), "temperature": s.get("temperature"), "top_k": s.get("top_k"),
        "top_p": s.get("top_p"), "sampling_seed": s.get("seed"), "decoder": which, "decoder_path": str(vq_path),
        "backbone": cfg.get("backbone", "llamagen"), "code_version": code_version(), "sample_set": sample_set,
        "bootstrap": {"resamples": n_boot, "fid_resamples": n_boot_fid, "seed": boot_seed, "unit": "prompt"},
    }
    clip_cfg, reward_cfg = cfg["assets"]["clip"], cfg["assets"]["reward"]
    fid_details = {"label": extractor.label, "reference": reference["meta"].get("key"),
                   "reference_images": reference["meta"].get("n_images"), "feature_layer": extractor.layer,
                   "weights_sha256": extractor.weights_sha256,
                   "fid_protocol": extractor.protocol or f"not applicable to {extractor.name}",
                   "preprocessing": extractor.preprocessing}
    clip_details = {"convention": clip_convention(clip_cfg), "precision": clip_precision,
                    "image_resize": f"{IMAGE_RESIZE} to {clip.image_size}"}
    shift_details = {"smoothing_eps": eps, "kl": "KL(generated || real), nats", "entropy": "bits",
                     "real_images": n_real, "codebook_size": codebook_size}
    reward_name = reward_cfg.get("model") or reward_cfg.get("path") or reward_cfg.get("kind", "")
    rows_out = [
        ("clip_score", clip_value, n, clip_cfg.get("model", ""), clip_details),
        ("fid", fid_value, n, extractor.name, fid_details),
        ("code_kl", shift["code_kl"], n, "vq-codes", shift_details),
        ("code_kl_real_floor", shift["code_kl_real_floor"], n_real, "vq-codes",
         {**shift_details, "kl": "KL(real half A || real half B), nats"}),
        ("code_entropy_bits", shift["code_entropy_bits"], n, "vq-codes", shift_details),
        ("code_entropy_bits_real", shift["code_entropy_bits_real"], n_real, "vq-codes", shift_details),
        ("codebook_usage", shift["codebook_usage"], n, "vq-codes", shift_details),
        ("reward", reward_value, n, str(reward_name), {"kind": reward_cfg.get("kind", "open_clip"),
                                                       "convention": "100 x mean cosine"}),
        ("n_samples", float(n), n, "", {}),
        ("wall_time_s", wall, n, "", {"timing_s": {k: round(v, 3) for k, v in timing.items()}}),
    ]
    step = int(round_idx) * int((cfg.get("rounds") or {}).get("steps", 0))
    metrics = pd.DataFrame({
        "method": method,
        "replicate": np.int32(replicate),
        "round": np.int32(round_idx),
        "step": np.int64(step),
        "metric": [r[0] for r in rows_out],
        "value": [float(r[1]) for r in rows_out],
        "n": [int(r[2]) for r in rows_out],
        "extractor": [r[3] for r in rows_out],
        "details": [json.dumps({**common, **r[4]}, sort_keys=True, default=str) for r in rows_out],
    })
    if per_sample_path is not None:
        io.write_parquet(pd.DataFrame({
            "method": method, "replicate": np.int32(replicate), "round": np.int32(round_idx),
            "prompt_id": df["prompt_id"].to_numpy(np.int64), "seed": df["seed"].to_numpy(np.int64),
            "clip_score": clip_per_sample, "reward": reward_per_sample,
        }), per_sample_path, "per_sample")
    if bootstrap_path is not None:
        io.write_parquet(pd.concat([pd.DataFrame({
            "method": method, "replicate": np.int32(replicate), "round": np.int32(round_idx), "metric": name,
            "resample": np.arange(len(values), dtype=np.int32), "value": values.astype(np.float64),
            "sample_set": sample_set,
        }) for name, values in boot.items()], ignore_index=True), bootstrap_path, "bootstrap")
    io.write_parquet(metrics, out_path, "metrics")
    log.info("wrote %s: %s", out_path, ", ".join(f"{m}={v:.4g}" for m, v in zip(metrics["metric"], metrics["value"])))
    return metrics


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ranke score", description=__doc__.splitlines()[0])
    add_config_arguments(p, "config subset: device, precision, backbone, image_size, assets, sampling, rounds, score, prompts")
    p.add_argument("--method", required=True, help="method name (recorded in the metrics)")
    p.add_argument("--replicate", type=int, default=0, help="the replicate's seed (config `replicates`)")
    p.add_argument("--round", type=int, required=True, help="round number (0: the base model)")
    p.add_argument("--samples", required=True, help="samples.parquet of this method and round")
    p.add_argument("--checkpoint", required=True, help="round checkpoint dir, or 'base'")
    p.add_argument("--prompts", required=True, help="prompts.parquet of the study")
    p.add_argument("--code-hist", required=True, help="code_hist.parquet of the real images (code shift)")
    p.add_argument("--fid-ref", required=True, help="reference statistics written by fid-reference")
    p.add_argument("--out", required=True, help="metrics.parquet to write")
    p.add_argument("--png-dir", default=None, help="also write PNGs + grid.png here (default: config score.write_png)")
    p.add_argument("--grid", default=None, help="write the fixed-prompt sample grid (PNG) here")
    p.add_argument("--per-sample", default=None, help="write every image's CLIP score and reward here (Parquet)")
    p.add_argument("--bootstrap", default=None, help="write the metrics of bootstrap resamples here (Parquet)")
    p.add_argument("--log", default=None, help="also log to this file")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default: all cores)")
    args = p.parse_args(argv)
    setup_logging(args.log)
    set_threads(args.threads)
    cfg = config_from_args(args)
    log_environment({"stage": "score", "method": args.method, "replicate": args.replicate, "round": args.round})
    score(cfg, args.method, args.round, args.samples, args.checkpoint, args.prompts, args.code_hist,
          args.fid_ref, args.out, png_dir=args.png_dir, grid_path=args.grid, replicate=args.replicate,
          per_sample_path=args.per_sample, bootstrap_path=args.bootstrap)
    return 0
