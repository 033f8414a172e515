"""Sampler throughput: images/s and peak memory per batch size (random-init GPT; prints a table).

    python bench/sample.py --preset GPT-XL --device cuda --batch-sizes 1,64,256,512 --cfg 7.5
    python bench/sample.py --preset small --device cpu --batch-sizes 1,8,32

On CPU it also times the no-cache baseline (full recomputation every step). Never asserts times.
Random init: N(0, 0.02) weights with the output head randomised too, so the sampled distribution
is not degenerate (upstream zero-initialises the head).
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ranke.models.gpt import GPT, GPTConfig  # noqa: E402
from ranke.sampling import generate, generate_uncached, release_sampler_cache  # noqa: E402

SMALL = dict(dim=128, n_layer=4, n_head=4, vocab_size=256, block_size=64, cls_token_num=16, caption_dim=64)


def build(args) -> GPT:
    if args.preset == "small":
        cfg = GPTConfig(**SMALL)
    else:
        cfg = GPTConfig.preset(args.preset, vocab_size=args.vocab, block_size=args.tokens,
                               cls_token_num=args.caption_tokens, caption_dim=args.caption_dim)
    with torch.device(args.device):
        model = GPT(cfg)
    torch.nn.init.normal_(model.output.weight, std=0.02)
    return model.eval().requires_grad_(False)


def captions(cfg: GPTConfig, b: int, device, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(b, cfg.cls_token_num, cfg.caption_dim, generator=g)
    lengths = torch.randint(1, cfg.cls_token_num + 1, (b, 1), generator=g)
    mask = torch.arange(cfg.cls_token_num)[None] < lengths
    return (emb * mask[..., None]).to(device), mask.to(device)


def peak_mem(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB"
    return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB rss"


def timed(fn, device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="small", help="GPT-B | GPT-L | GPT-XL | GPT-XXL | small")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch-sizes", default="1,8,32")
    ap.add_argument("--cfg", type=float, default=7.5)
    ap.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp32"])
    ap.add_argument("--tokens", type=int, default=256, help="image tokens (presets only)")
    ap.add_argument("--caption-tokens", type=int, default=120)
    ap.add_argument("--caption-dim", type=int, default=2048)
    ap.add_argument("--vocab", type=int, default=16384)
    ap.add_argument("--top-k", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = leave)")
    ap.add_argument("--no-baseline", action="store_true", help="skip the no-cache baseline on CPU")
    ap.add_argument("--no-graphs", action="store_true", help="CUDA: eager decode steps instead of CUDA graphs")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    amp = {"auto": "auto", "bf16": torch.bfloat16, "fp32": None}[args.dtype]
    model = build(args)
    cfg = model.config
    print(f"# {args.preset}: {model.num_params() / 1e6:.1f}M params, {cfg.block_size} tokens, "
          f"{cfg.cls_token_num} caption tokens, cfg {args.cfg}, dtype {args.dtype}, device {device}, "
          f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    rows = []
    for b in [int(x) for x in args.batch_sizes.split(",")]:
        emb, mask = captions(cfg, b, device)
        seeds = list(range(b))
        kw = dict(seeds=seeds, cfg_scale=args.cfg, top_k=args.top_k)
        graphs = device.type == "cuda" and not args.no_graphs
        mode = "kv-cache + cuda graphs" if graphs else "kv-cache"
        if device.type == "cuda":  # warm-up with the same shapes: captures the graphs, untimed
            t0 = time.perf_counter()
            generate(model, emb, mask, amp_dtype=amp, cuda_graphs=graphs, **kw)
            torch.cuda.synchronize(device)
            print(f"# batch {b}: first call (capture + warm-up) {time.perf_counter() - t0:.2f} s", file=sys.stderr)
        else:
            generate(model, emb[:1], mask[:1], amp_dtype=amp, num_tokens=2, **{**kw, "seeds": [0]})
        s = timed(lambda: generate(model, emb, mask, amp_dtype=amp, cuda_graphs=graphs, **kw), device)
        rows.append((b, mode, s, b / s, peak_mem(device)))
        if device.type == "cpu" and not args.no_baseline:
            s = timed(lambda: generate_uncached(model, emb, mask, **kw), device)
            rows.append((b, "no-cache", s, b / s, peak_mem(device)))
        release_sampler_cache()
    print("| batch | sampler | seconds | images/s | peak memory |")
    print("|---:|---|---:|---:|---|")
    for b, mode, s, ips, mem in rows:
        print(f"| {b} | {mode} | {s:.2f} | {ips:.2f} | {mem} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
