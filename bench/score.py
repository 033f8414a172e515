"""Throughput of the score stage's hot path: decode + FID features + CLIP, with a per-step breakdown.

    .venv/bin/python bench/score.py --preset demo --n 256 --batch-size 64
    .venv/bin/python bench/score.py --preset llamagen-256 --n 8 --batch-size 4      # CPU: keep n small
    .venv/bin/python bench/score.py --preset llamagen-256 --n 30000 --batch-size 250 # GPU target: <= 180 s

Random weights throughout (same architectures and cost as the real models, nothing downloaded):
`demo` = the demo VQ (config.yaml) at 32 px + a tiny CLIP used both as CLIP-score model and as the
"clip-image" FID extractor; `llamagen-256` = LlamaGen VQ-16 at 256 px + torch-fidelity
inception-v3-compat + open_clip ViT-B-32-quickgelu.

The breakdown separates image preprocessing (uint8 quantisation, Inception's internal resize to
299, CLIP's resize to 224 + normalisation — all batched tensor ops on the device) from the model
forward passes, and times the upstream style (PIL resize of one image at a time) for comparison.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ranke.metrics import resize_batch, to_uint8, uint8_to_float  # noqa: E402
from ranke.metrics.fid import INCEPTION, load_fid_extractor, write_random_inception_weights  # noqa: E402

DEMO_VQ = {"codebook_size": 256, "codebook_embed_dim": 8, "codebook_l2_norm": True, "ch": 32, "ch_mult": [1, 2, 2],
           "z_channels": 64, "num_res_blocks": 1}
DEMO_CLIP = {"embed_dim": 64,
             "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 4, "head_width": 32},
             "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}}


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build(preset: str, device: torch.device, tmp: Path):
    from ranke.models.backbone import build_vq
    from ranke.models.clip import ClipModel, create_clip
    import open_clip

    torch.manual_seed(0)
    if preset == "demo":
        vq, size = build_vq(DEMO_VQ), 32
        name = "ranke-bench-demo-clip"
        (tmp / f"{name}.json").write_text(json.dumps(DEMO_CLIP))
        model = create_clip(name, config=tmp / f"{name}.json", device=device)
        clip = ClipModel(model.eval().requires_grad_(False), open_clip.get_tokenizer(name), name=name)
        torch.save(model.state_dict(), tmp / "clip.pt")
        extractor = load_fid_extractor({"extractor": "clip-image", "weights": str(tmp / "clip.pt")}, device,
                                       clip_model=clip)
    elif preset == "llamagen-256":
        vq, size = build_vq({}), 256  # VQ-16 defaults
        name = "ViT-B-32-quickgelu"
        model = create_clip(name, device=device)
        clip = ClipModel(model.eval().requires_grad_(False), open_clip.get_tokenizer(name),
                         prompt_prefix="A photo depicts ", name=name)
        weights = tmp / "inception-random.pth"
        write_random_inception_weights(weights)
        extractor = load_fid_extractor({"extractor": INCEPTION, "weights": str(weights)}, device)
    else:
        raise SystemExit(f"unknown preset {preset}")
    vq = vq.to(device).eval().requires_grad_(False)
    grid = size // vq.downsample
    return vq, grid, size, clip, extractor


def run(args) -> dict:
    torch.set_num_threads(args.threads)
    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    amp = torch.bfloat16 if (device.type == "cuda" and not args.fp32) else None
    tmp = Path(tempfile.mkdtemp(prefix="ranke-bench-"))
    vq, grid, size, clip, extractor = build(args.preset, device, tmp)
    captions = [f"a photo of object number {i} on a table" for i in range(args.batch_size)]
    g = torch.Generator().manual_seed(0)
    codes_all = torch.randint(0, vq.codebook_size, (args.n, grid * grid), generator=g)
    times = dict.fromkeys(("decode", "quantise uint8", "fid resize (inception/extractor input)", "fid forward",
                           "clip preprocess (resize+norm)", "clip image forward", "clip text"), 0.0)
    fid_resize = None
    if extractor.name == INCEPTION:
        from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x as tf_resize

        def fid_resize(x):
            return tf_resize(x.float(), size=(299, 299), align_corners=False)

    def step(codes, record: bool):
        t = time.perf_counter()

        def mark(key):
            nonlocal t
            sync(device)
            now = time.perf_counter()
            if record:
                times[key] += now - t
            t = now

        with torch.inference_mode():
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                images = vq.decode_codes(codes.to(device), (grid, grid)).clamp(-1, 1)
            mark("decode")
            pixels = to_uint8(images)
            mark("quantise uint8")
            if fid_resize is not None:
                fid_resize(pixels)  # timed alone: the extractor repeats it inside its forward
                mark("fid resize (inception/extractor input)")
            extractor.features(pixels)
            mark("fid forward")
            x = clip.preprocess(resize_batch(uint8_to_float(pixels), clip.image_size, "bicubic"))
            mark("clip preprocess (resize+norm)")
            clip.model.encode_image(x)
            mark("clip image forward")
            clip.embed_texts(captions[: len(codes)])
            mark("clip text")

    step(codes_all[: args.batch_size], record=False)  # warm-up
    t0 = time.perf_counter()
    for start in range(0, args.n, args.batch_size):
        step(codes_all[start : start + args.batch_size], record=True)
    total = time.perf_counter() - t0

    # upstream style for comparison: PIL, one image at a time (uint8 -> PIL -> bicubic 224 -> tensor)
    from PIL import Image

    with torch.inference_mode():
        pixels = to_uint8(vq.decode_codes(codes_all[: min(16, args.n)].to(device), (grid, grid)).clamp(-1, 1)).cpu()
    t = time.perf_counter()
    for img in pixels.permute(0, 2, 3, 1).numpy():
        pil = Image.fromarray(img).resize((clip.image_size, clip.image_size), Image.Resampling.BICUBIC)
        torch.from_numpy(np.asarray(pil).copy()).permute(2, 0, 1).float().div(255)
    pil_per_image = (time.perf_counter() - t) / len(pixels)
    return {"preset": args.preset, "device": str(device), "threads": torch.get_num_threads(), "n": args.n,
            "batch_size": args.batch_size, "image_size": size, "fid_extractor": extractor.name,
            "clip": clip.name, "total_s": total, "images_per_s": args.n / total, "breakdown_s": times,
            "pil_loop_resize_ms_per_image": 1000 * pil_per_image}


def table(r: dict) -> str:
    lines = [f"preset {r['preset']} | {r['device']} ({r['threads']} threads) | n={r['n']} batch={r['batch_size']} | "
             f"{r['image_size']} px | FID {r['fid_extractor']} | CLIP {r['clip']}",
             "", "| step | total s | ms / image | share |", "|---|---:|---:|---:|"]
    tot = sum(r["breakdown_s"].values())
    for k, v in r["breakdown_s"].items():
        if k.startswith("fid resize") and r["fid_extractor"] != INCEPTION:
            continue
        lines.append(f"| {k} | {v:.3f} | {1000 * v / r['n']:.2f} | {100 * v / max(tot, 1e-12):.1f}% |")
    lines += [f"| **all** | {r['total_s']:.3f} | {1000 * r['total_s'] / r['n']:.2f} | {r['images_per_s']:.1f} images/s |",
              "", f"upstream-style PIL bicubic resize to {224 if r['preset'] != 'demo' else 'CLIP size'}, one image "
              f"at a time: {r['pil_loop_resize_ms_per_image']:.2f} ms / image (not used)"]
    if r["fid_extractor"] == INCEPTION:
        lines.append("note: 'fid forward' includes the extractor's own resize, timed alone in the row above it")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="demo", choices=["demo", "llamagen-256"])
    p.add_argument("--n", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--fp32", action="store_true", help="no bf16 autocast for decoding on GPU")
    p.add_argument("--json", default=None, help="also write the result as JSON")
    args = p.parse_args(argv)
    r = run(args)
    print(table(r))
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
