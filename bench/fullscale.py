"""The LlamaGen-XL study's real architectures at their real sizes, random weights, on this CPU.

    .venv/bin/python bench/fullscale.py                          # every part, batch 1 and 2 (~11 min here)
    .venv/bin/python bench/fullscale.py --parts gpt_sample,t5_encode --batch-sizes 1 --json out.json
    .venv/bin/python bench/fullscale.py --smoke --parts gpt_logprob  # tiny sizes, seconds (the test)

Table 1 (measured). Every part runs in its own subprocess, builds its model with random weights
through the project's code (nothing is loaded or downloaded) and times one call per batch size:

  gpt_sample       ranke.sampling.generate on GPT-XL t2i (775M; 256 image tokens, 120 caption
                   tokens of width 2048, vocab 16384) with the study's rollout settings (CFG 6,
                   top-k 1000), fp32 (what the sampler uses on CPU)
  gpt_logprob      ranke.sampling.teacher_forced_logprobs + backward (the policy update's cost)
  gpt_logprob_ckpt the same with the round's gradient checkpointing (not in the default set: one
                   more forward)
  t5_encode        ranke.models.text.TextEncoder.encode of 120-token captions on a random
                   T5EncoderModel with FLAN-T5-XL's sizes (1.2B)
  reward_fwd       ranke.rewards.HFClipReward (CLIP ViT-L/14 sizes) on 256 px images, no grad
                   (scoring the rollouts)
  reward_fwd_bwd   the same with backward to the images (the decoder's reward term)
  decoder_step     ranke.train.round.RoundRunner._decoder_update itself (discriminator step, then
                   L1 + LPIPS + adaptive-weight GAN reconstruction, rank-GAN, EMA consistency and
                   CLIP-L reward terms, backward into the VQ decoder, AdamW, EMA); batch b = b GT
                   images + b selected rollouts (rank_k 1: one per prompt)
  vq_decode        VQ-16 decode of 16x16 codes -> 256 px (the score stage's decode, no grad)
  vq_encode        VQ-16 encode of 256 px images -> codes (the tokenize stage)
  lpips_fwd_bwd    ranke.perceptual.LPIPSVGG at 256 px, backward to one input
  inception        torch-fidelity inception-v3-compat via ranke.metrics.fid (random weights
                   from write_random_inception_weights), uint8 256 px -> 2048 features at 299
  clip_score       open_clip ViT-B-32-quickgelu (pretrained=None) through
                   ranke.metrics.clip_score: image features (bicubic 224) + text features

Per row: seconds of the one timed call, the peak resident memory during that call (VmHWM, reset
through /proc/self/clear_refs just before it), that peak minus the RSS right after the build (the
memory the call needs on top of the resident model), the subprocess's whole-life peak (ru_maxrss
from wait4, so parts never contaminate each other), the parameter count and the build time. Batch
sizes run in ascending order in one process (gpt_sample: batch 1 only by default, see GptSample);
only the cheap parts get an untimed warm-up call (for the big ones one call takes tens of seconds
and one-time costs are well under a second). A part that does not fit is reported, never
dropped: before each call the child compares a memory estimate (a formula where one exists, else
the previous batch's transient scaled linearly) with MemAvailable ("needs ~N GiB"); a watchdog
kills a child when the machine runs low on memory; a per-part wall-clock limit (--part-timeout)
kills a child that overruns ("timed out"), and a child skips a batch size whose predicted time
would overrun it ("skipped: predicted ...").

Table 2 (computed). The GPU and host memory the study's jobs need, from the real parameter counts
(every model built on the meta device, or on the CPU where a library cannot) and the study config
(workflow/studies/llamagen_xl.yaml via ranke.config.load_config): the training-round rank (world
size 8, 4 prompts x 8 rollouts per GPU), the sample job (sampling.batch_size) and the score job
(score.batch_size), each next to what the study asks for (`resources:` mem_mb per rule, host;
cluster.slurm.mem_gb, host, for the round job) and the GPUs (H200 ~139 GiB, A100/H100 80 GiB).
The GPT activations and the KV caches are formulas over the real shapes (printed with each row;
see `gpt_activation_terms`); the activations of the convolutional parts (VQ decoder, LPIPS, CLIP,
Inception) come from Table 1: the measured fp32 transient per image times the study's batch (an
upper bound for the GPU, which runs them under bf16 autocast). Each job's peak is its resident
state plus its largest phase.

On this machine (2 shared AMD EPYC cores, AVX2, 24 GiB, other agents' jobs raising the load
average to 1.1-4.1) the default run took 10.9 minutes (gpt_sample 3 of them);
`--parts gpt_sample --batch-sizes 2` took another 4.4.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

STUDY = REPO / "workflow" / "studies" / "llamagen_xl.yaml"
GiB = 2**30
H200_GIB, A100_GIB = 139.0, 80.0
TAG = "@@fullscale "  # prefix of the child's result lines (libraries print to stdout too)

# transformers' public configs of the two HF models the study uses (sizes only: nothing is loaded)
FLAN_T5_XL = dict(vocab_size=32128, d_model=2048, d_kv=64, d_ff=5120, num_layers=24, num_heads=32,
                  feed_forward_proj="gated-gelu", relative_attention_num_buckets=32,
                  relative_attention_max_distance=128, layer_norm_epsilon=1e-6, tie_word_embeddings=False)
CLIP_VIT_L14 = dict(  # openai/clip-vit-large-patch14 config.json
    projection_dim=768,
    text_config=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                     max_position_embeddings=77, vocab_size=49408, projection_dim=768),
    vision_config=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                       image_size=224, patch_size=14, projection_dim=768),
)
# --smoke: the same code paths at toy sizes (a few seconds per part), so the script cannot rot
SMOKE = dict(
    image_size=32, caption_len=8,
    gpt=dict(dim=64, n_layer=2, n_head=4, vocab_size=256, block_size=16, cls_token_num=8, caption_dim=32),
    vq=dict(codebook_size=256, codebook_embed_dim=8, codebook_l2_norm=True, ch=32, ch_mult=[1, 2, 2], z_channels=64,
            num_res_blocks=1),
    t5=dict(vocab_size=100, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, feed_forward_proj="gated-gelu",
            tie_word_embeddings=False),
    clip_l=dict(projection_dim=16,
                text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                 max_position_embeddings=16, vocab_size=100, projection_dim=16),
                vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                   image_size=32, patch_size=8, projection_dim=16)),
    clip_score_config={"embed_dim": 16, "quick_gelu": True,
                       "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
                       "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}},
    top_k=10, discriminator=dict(n_layers=2, ndf=8),
)


# ----------------------------------------------------------------------------------------------
# the study's shapes


def load_study(path: Path = STUDY) -> dict:
    from ranke.config import load_config

    return load_config(path)


def study_spec(cfg: dict, smoke: bool = False) -> dict:
    """Everything a part needs to build its model, as plain JSON (the child gets it as a file).

    The GPT is GPTConfig.preset(<study preset>) with the study's caption_dim and the VQ / image /
    caption shapes: the production architecture, whatever else the merged config carries (see
    `study_gpt_mismatch`)."""
    from ranke.models.gpt import GPTConfig

    a, t = cfg["assets"], cfg["train"]
    image_size = int(cfg["image_size"])
    grid = image_size // 2 ** (len(a["vq"]["arch"]["ch_mult"]) - 1)
    caption_len = int(a["text_encoder"]["max_length"])
    gpt = GPTConfig.preset(a["gpt"]["arch"]["preset"], caption_dim=int(a["gpt"]["arch"]["caption_dim"]),
                           vocab_size=int(a["vq"]["arch"]["codebook_size"]), block_size=grid * grid,
                           cls_token_num=caption_len).to_dict()
    spec = dict(
        smoke=smoke, image_size=image_size, caption_len=caption_len, gpt=gpt, vq=dict(a["vq"]["arch"]),
        t5=dict(FLAN_T5_XL), clip_l=copy.deepcopy(CLIP_VIT_L14), clip_score_model=a["clip"]["model"],
        clip_score_config=None, clip_prefix=a["clip"].get("prompt_prefix") or "",
        rollout=dict(t["rollout"]), logprob_mask=t["policy"].get("logprob_mask", "generation"),
        train=copy.deepcopy(t),
    )
    if smoke:
        spec.update(image_size=SMOKE["image_size"], caption_len=SMOKE["caption_len"], gpt=dict(SMOKE["gpt"]),
                    vq=dict(SMOKE["vq"]), t5=dict(SMOKE["t5"]), clip_l=copy.deepcopy(SMOKE["clip_l"]),
                    clip_score_model="ranke-fullscale-smoke-clip", clip_score_config=SMOKE["clip_score_config"])
        spec["gpt"] = GPTConfig(**spec["gpt"]).to_dict()
        spec["rollout"]["top_k"] = SMOKE["top_k"]
        spec["train"]["discriminator"].update(SMOKE["discriminator"])
    return spec


def study_gpt_mismatch(cfg: dict, spec: dict) -> str | None:
    """What the study config actually resolves the policy to, if that is not the preset."""
    from ranke.models.backbone import gpt_config

    a = cfg["assets"]
    resolved = gpt_config(a["gpt"]["arch"], a["vq"]["arch"]["codebook_size"], spec["gpt"]["block_size"],
                          spec["caption_len"]).to_dict()
    diff = {k: (resolved[k], spec["gpt"][k]) for k in ("dim", "n_layer", "n_head") if resolved[k] != spec["gpt"][k]}
    if not diff:
        return None
    return ("WARNING: load_config(study) resolves assets.gpt.arch to "
            + ", ".join(f"{k}={v[0]}" for k, v in diff.items())
            + f" (arch = {a['gpt']['arch']}: the demo config.yaml's dim/n_layer/n_head are merged under the study's "
            "preset and override it), not " + ", ".join(f"{k}={v[1]}" for k, v in diff.items())
            + "; loading the real t2i_XL checkpoint into that model would fail. The tables below use the preset.")


# ----------------------------------------------------------------------------------------------
# memory probes (Linux /proc)


def _status_kib(field: str) -> int:
    return int(re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M).group(1))


def rss_gib() -> float:
    return _status_kib("VmRSS") / 2**20


def peak_rss_gib() -> float:
    return _status_kib("VmHWM") / 2**20


def reset_peak_rss() -> None:
    """Reset VmHWM to the current RSS ("5" in clear_refs, Linux >= 4.0), so the next peak is one call's."""
    Path("/proc/self/clear_refs").write_text("5")


def mem_available_gib() -> float:
    return int(re.search(r"^MemAvailable:\s+(\d+) kB", Path("/proc/meminfo").read_text(), re.M).group(1)) / 2**20


# ----------------------------------------------------------------------------------------------
# formulas over the shapes (shared by the children's memory checks and Table 2)


def gpt_activation_terms(gpt: dict, batch: int, *, precision: str, checkpointing: bool) -> dict[str, float]:
    """Bytes kept for the backward of teacher_forced_logprobs on `batch` sequences, by term.

    Read off ranke.models.gpt (what each op saves for its backward), per token and layer:
      bf16 autocast (the GPU round): 38*d + 8*f + 4*H bytes
        each RMSNorm 8d (its fp32 upcast 4d, the bf16 normalised copy 2d, the bf16 cast the
        next linear saves 2d), x2; the fused wqkv output 6d (v is a view that keeps it alive);
        RoPE's fp32 upcasts of q and k 8d and their bf16 results 4d; the attention output 2d
        and the wo input (a reshape copy) 2d; SwiGLU w1 / silu / w3 / product outputs 8f; the
        attention's logsumexp 4H (GPU memory-efficient SDPA saves no S x S matrix)
      fp32 (the CPU check below): 52*d + 16*f + 4*H bytes (same list, no casts: norms 12d each,
        wqkv 12d, rotated q and k 8d, attention output and wo input 8d, SwiGLU 16f, logsumexp)
    with S = cls_token_num + block_size - 1 positions (caption + codes[:, :-1]), d = dim,
    f = ffn_hidden, H = n_head. Outside the blocks: the caption MLP (T * (2*Dc + 4*d) in bf16),
    the final norm over the L image positions (8d), the fp32 log-softmax output over the vocab
    (4*V per image position), the (B,1,S,S) bool attention mask. Gradient checkpointing (the
    round's enable_gradient_checkpointing) keeps each block's input (2d bf16 per token and layer)
    and recomputes one block at a time in the backward. The backward's working set is taken as
    one more block's activations plus two logits-sized fp32 buffers (gradients of the log-softmax
    input and of the bf16 logits)."""
    d, nl, h = gpt["dim"], gpt["n_layer"], gpt["n_head"]
    f = _ffn_hidden(gpt)
    t, lpos, v, dc = gpt["cls_token_num"], gpt["block_size"], gpt["vocab_size"], gpt["caption_dim"]
    s = t + lpos - 1
    if precision == "bf16":
        per_tok_layer, block_in, cap, norm = 38 * d + 8 * f + 4 * h, 2 * d, t * (2 * dc + 4 * d), 8 * d
    elif precision == "fp32":
        per_tok_layer, block_in, cap, norm = 52 * d + 16 * f + 4 * h, 4 * d, t * (4 * dc + 8 * d), 12 * d
    else:
        raise ValueError(precision)
    one_block = batch * s * per_tok_layer
    terms = {}
    if checkpointing:
        terms["block inputs (checkpointed)"] = batch * s * nl * block_in
        terms["one block recomputed"] = one_block
    else:
        terms["blocks"] = nl * one_block
    terms["caption MLP + final norm"] = batch * (cap + lpos * norm)
    terms["log-softmax output (fp32)"] = batch * lpos * v * 4
    terms["attention mask"] = batch * s * s
    terms["backward working set"] = one_block + 2 * batch * lpos * v * 4
    return terms


def _ffn_hidden(gpt: dict) -> int:
    from ranke.models.gpt import GPTConfig

    return GPTConfig(**gpt).ffn_hidden


def kv_cache_bytes(gpt: dict, rows: int, dtype_bytes: int) -> int:
    """ranke.sampling's static cache: n_layer x (K, V) x rows x kv_heads x (T + L - 1) slots x head_dim."""
    kv_heads = gpt.get("n_kv_head") or gpt["n_head"]
    slots = gpt["cls_token_num"] + gpt["block_size"] - 1
    return gpt["n_layer"] * 2 * rows * kv_heads * slots * (gpt["dim"] // gpt["n_head"]) * dtype_bytes


def prefill_bytes(gpt: dict, rows: int, dtype_bytes: int) -> int:
    """Live tensors of one block during the caption prefill: rows x T x (4d + 3f) elements (input,
    wqkv output, w1 / w3 / product), plus the (rows,1,T,T) bool mask."""
    t, d = gpt["cls_token_num"], gpt["dim"]
    return rows * t * (4 * d + 3 * _ffn_hidden(gpt)) * dtype_bytes + rows * t * t


# ----------------------------------------------------------------------------------------------
# model builders (random weights, the project's classes)


def build_gpt(spec: dict, *, trainable: bool):
    from ranke.models.gpt import GPT, GPTConfig

    torch.manual_seed(0)
    model = GPT(GPTConfig(**spec["gpt"]))
    # upstream zero-initialises the head: a random one gives the sampler non-degenerate logits
    torch.nn.init.normal_(model.output.weight, std=0.02)
    return model.eval().requires_grad_(trainable)


def random_captions(spec: dict, b: int):
    """(emb (b, T, Dc) zero on padding, mask (b, T)) with random caption lengths (the cost of a
    forward does not depend on them: every position is computed, padded keys are masked)."""
    g = torch.Generator().manual_seed(b)
    t, dc = spec["gpt"]["cls_token_num"], spec["gpt"]["caption_dim"]
    lengths = torch.randint(1, t + 1, (b, 1), generator=g)
    mask = torch.arange(t)[None] < lengths
    return torch.randn(b, t, dc, generator=g) * 0.1 * mask[..., None], mask


def build_vq(spec: dict):
    from ranke.models.backbone import build_vq as project_build_vq

    torch.manual_seed(0)
    return project_build_vq(spec["vq"]).eval()


class FixedIdsTokenizer:
    """Stands in for the FLAN-T5 tokenizer (no tokenizer files exist offline): every caption is
    `max_length` random token ids ending in </s>, i.e. a caption that fills all 120 positions."""

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size
        self.padding_side = "right"

    def __call__(self, captions, max_length, **_):
        g = torch.Generator().manual_seed(len(captions))
        ids = torch.randint(3, self.vocab_size, (len(captions), max_length), generator=g)
        ids[:, -1] = 1  # </s>
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


@contextlib.contextmanager
def loaded_from(directory: Path, **returns):
    """Run a project loader on random models: `<Class>.from_pretrained` returns the given object
    while the block runs (returns = {name: (Class, object)}), so the project's own __init__ runs
    end to end on a directory that holds only a config.json."""
    with contextlib.ExitStack() as stack:
        for cls, obj in returns.values():
            stack.enter_context(mock.patch.object(cls, "from_pretrained", lambda *a, _obj=obj, **k: _obj))
        yield directory


def build_text_encoder(spec: dict):
    """ranke.models.text.TextEncoder (fp32 on the CPU, as the project runs T5 there) around a
    random T5EncoderModel(T5Config(FLAN-T5-XL sizes)) and FixedIdsTokenizer."""
    from transformers import AutoTokenizer, T5Config, T5EncoderModel

    from ranke.models.text import TextEncoder

    torch.manual_seed(0)
    config = T5Config(**spec["t5"])
    model = T5EncoderModel(config)
    directory = Path(tempfile.mkdtemp(prefix="ranke-fullscale-t5-"))
    config.save_pretrained(directory)  # TextEncoder checks for config.json
    with loaded_from(directory, model=(T5EncoderModel, model),
                     tokenizer=(AutoTokenizer, FixedIdsTokenizer(spec["t5"]["vocab_size"]))):
        return TextEncoder(directory, max_length=spec["caption_len"], padding="right", device="cpu")


def build_hf_clip_reward(spec: dict):
    """ranke.rewards.HFClipReward around a random CLIPModel(CLIP ViT-L/14 sizes). Its text side is
    served from the reward's own per-caption cache, prefilled with random unit vectors by
    `cache_caption_embeddings` (no CLIP tokenizer files offline; training caches captions the
    same way), so the stand-in tokenizer is never called."""
    from transformers import AutoTokenizer, CLIPConfig, CLIPModel

    from ranke.rewards import HFClipReward

    torch.manual_seed(0)
    model = CLIPModel(CLIPConfig(**spec["clip_l"]))
    directory = Path(tempfile.mkdtemp(prefix="ranke-fullscale-clip-"))
    with loaded_from(directory, model=(CLIPModel, model), tokenizer=(AutoTokenizer, None)):
        return HFClipReward({"weights": str(directory), "prompt_prefix": ""}, "cpu")


def cache_caption_embeddings(reward, captions: list[str]) -> None:
    dim = int(reward.model.config.projection_dim)
    g = torch.Generator().manual_seed(1)
    for c in captions:
        reward._cache[c] = torch.nn.functional.normalize(torch.randn(dim, generator=g), dim=0)


def build_score_clip(spec: dict):
    """The CLIP-score model as ranke.metrics.clip_score uses it: open_clip, random init."""
    import open_clip

    from ranke.models.clip import ClipModel, create_clip

    torch.manual_seed(0)
    name, config = spec["clip_score_model"], None
    if spec["clip_score_config"] is not None:  # --smoke: a tiny custom architecture
        config = Path(tempfile.mkdtemp(prefix="ranke-fullscale-")) / f"{name}.json"
        config.write_text(json.dumps(spec["clip_score_config"]))
    model = create_clip(name, config=config, device="cpu").eval().requires_grad_(False)
    return ClipModel(model, open_clip.get_tokenizer(name), prompt_prefix=spec["clip_prefix"], name=name)


def build_inception():
    from ranke.metrics.fid import INCEPTION, load_fid_extractor, write_random_inception_weights

    weights = Path(tempfile.mkdtemp(prefix="ranke-fullscale-")) / "inception-random.pth"
    write_random_inception_weights(weights)
    return load_fid_extractor({"extractor": INCEPTION, "weights": str(weights)}, "cpu")


def n_params(*modules) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())


def grad_bytes(params) -> int:
    return sum(p.grad.numel() * p.grad.element_size() for p in params if p.grad is not None)


def images(spec: dict, b: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(100 + b)
    s = spec["image_size"]
    return torch.rand(b, 3, s, s, generator=g) * 2 - 1


def random_codes(b: int, length: int, vocab: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, (b, length), generator=torch.Generator().manual_seed(seed + b))


# ----------------------------------------------------------------------------------------------
# parts: build once per subprocess, then one timed call per batch size


class Part:
    """name, what is timed, build(spec) -> state, run(state, b) -> extra dict."""

    name = ""
    what = ""
    warmup = False  # cheap parts: one untimed call at the smallest batch first
    default_batches: tuple[int, ...] | None = None  # None: --batch-sizes' default (1, 2)
    min_limit_s = 0.0  # a part that cannot finish one call within --part-timeout on this CPU

    def build(self, spec):
        raise NotImplementedError

    def params(self, state) -> int:
        raise NotImplementedError

    def run(self, state, b: int) -> dict:
        raise NotImplementedError

    def need_gib(self, state, b: int) -> float | None:
        """Memory this call adds beyond what is resident, if a formula says so (else None)."""
        return None


class GptSample(Part):
    name, what = "gpt_sample", "generate: 256 tokens, CFG, top-k (study rollout settings)"
    # Each of the 256 decode steps reads all 3.1 GB of fp32 weights: 0.66 s a step at batch 1 and
    # 0.94 s at batch 2 on one shared core here (169 s and 241 s a call). So batch 1 only by
    # default (--batch-sizes 1,2 adds batch 2), with a limit that fits the build and one call.
    default_batches, min_limit_s = (1,), 600.0

    def build(self, spec):
        return SimpleNamespace(spec=spec, model=build_gpt(spec, trainable=False))

    def params(self, st):
        return n_params(st.model)

    def run(self, st, b):
        from ranke.sampling import generate, release_sampler_cache

        r = st.spec["rollout"]
        emb, mask = random_captions(st.spec, b)
        t0 = time.perf_counter()
        out = generate(st.model, emb, mask, seeds=list(range(b)), cfg_scale=float(r["cfg_scale"]),
                       temperature=float(r["temperature"]), top_k=int(r["top_k"]), top_p=float(r["top_p"]))
        dt = time.perf_counter() - t0
        release_sampler_cache()
        n = out.shape[1]
        return dict(seconds=dt, note=f"{1000 * dt / n:.0f} ms/token step, cfg {r['cfg_scale']}, top-k {r['top_k']}")

    def need_gib(self, st, b):
        return kv_cache_bytes(st.spec["gpt"], 2 * b, 4) / GiB


class GptLogprob(Part):
    name, what = "gpt_logprob", "teacher_forced_logprobs + backward (fp32)"
    checkpointing = False

    def build(self, spec):
        model = build_gpt(spec, trainable=True)
        if self.checkpointing:
            from ranke.train.round import enable_gradient_checkpointing

            enable_gradient_checkpointing(model)
        return SimpleNamespace(spec=spec, model=model)

    def params(self, st):
        return n_params(st.model)

    def run(self, st, b):
        from ranke.sampling import teacher_forced_logprobs

        emb, mask = random_captions(st.spec, b)
        c = random_codes(b, st.spec["gpt"]["block_size"], st.spec["gpt"]["vocab_size"])
        param_ptrs = {p.untyped_storage().data_ptr() for p in st.model.parameters()}
        saved: dict[int, int] = {}

        def pack(x):  # count each storage the autograd graph keeps once (weights excluded)
            ptr = x.untyped_storage().data_ptr()
            if ptr not in param_ptrs:
                saved[ptr] = x.untyped_storage().nbytes()
            return x

        t0 = time.perf_counter()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
            logp = teacher_forced_logprobs(st.model, emb, mask, c, mask=st.spec["logprob_mask"])
        loss = -logp.mean()
        loss.backward()
        dt = time.perf_counter() - t0
        grads = grad_bytes(st.model.parameters())
        st.model.zero_grad(set_to_none=True)
        formula = gpt_activation_terms(st.spec["gpt"], b, precision="fp32", checkpointing=self.checkpointing)
        kept = sum(v for k, v in formula.items() if k != "backward working set")  # what autograd saves
        note = (f"saved tensors {sum(saved.values()) / GiB:.2f} GiB vs fp32 formula {kept / GiB:.2f} GiB; "
                f"grads {grads / GiB:.2f} GiB")
        if self.checkpointing:  # the checkpoint's own hooks keep the blocks' tensors from ours
            note = f"saved outside checkpointed blocks {sum(saved.values()) / GiB:.2f} GiB; grads {grads / GiB:.2f} GiB"
        return dict(seconds=dt, grad_gib=grads / GiB, saved_gib=sum(saved.values()) / GiB,
                    formula_fp32_gib=kept / GiB, note=note)

    def need_gib(self, st, b):
        act = gpt_activation_terms(st.spec["gpt"], b, precision="fp32", checkpointing=self.checkpointing)
        return (4 * n_params(st.model) + sum(act.values())) / GiB


class GptLogprobCkpt(GptLogprob):
    name, what, checkpointing = "gpt_logprob_ckpt", "teacher_forced_logprobs + backward, checkpointed blocks", True


class T5Encode(Part):
    name, what = "t5_encode", "TextEncoder.encode, 120-token captions (fp32)"

    def build(self, spec):
        return SimpleNamespace(spec=spec, enc=build_text_encoder(spec))

    def params(self, st):
        return n_params(st.enc.model)

    def run(self, st, b):
        t0 = time.perf_counter()
        emb, _ = st.enc.encode([f"caption {i}" for i in range(b)])
        return dict(seconds=time.perf_counter() - t0, note=f"-> {tuple(emb.shape)}")


class RewardFwdBwd(Part):
    name, what = "reward_fwd_bwd", "HFClipReward(images 256 px) + backward to the images"

    def build(self, spec):
        return SimpleNamespace(spec=spec, reward=build_hf_clip_reward(spec))

    def params(self, st):
        return n_params(st.reward.model)

    def run(self, st, b):
        caps = [f"caption {i}" for i in range(b)]
        cache_caption_embeddings(st.reward, caps)
        x = images(st.spec, b).requires_grad_(True)
        t0 = time.perf_counter()
        r = st.reward(x, caps)
        (-r.mean()).backward()
        return dict(seconds=time.perf_counter() - t0, note=f"resized to {st.reward.size} px inside the reward")


class RewardFwd(RewardFwdBwd):
    name, what = "reward_fwd", "HFClipReward(images 256 px) under no_grad (rollout scoring)"

    def run(self, st, b):
        caps = [f"caption {i}" for i in range(b)]
        cache_caption_embeddings(st.reward, caps)
        x = images(st.spec, b)
        t0 = time.perf_counter()
        with torch.no_grad():
            st.reward(x, caps)
        return dict(seconds=time.perf_counter() - t0, note=f"resized to {st.reward.size} px inside the reward")


class DecoderStep(Part):
    name, what = "decoder_step", "RoundRunner._decoder_update (disc step + all decoder terms, AdamW, EMA)"

    def build(self, spec):
        """A real RoundRunner (method mode "decoder", the study's train section on one process, the
        discriminator on from step 0) around VQ-16, LPIPS-VGG and the CLIP-L reward; its policy is a
        1-layer stand-in GPT, which the decoder update never touches."""
        from ranke.models.backbone import LlamaGenBackbone
        from ranke.models.gpt import GPT, GPTConfig
        from ranke.perceptual import LPIPSVGG
        from ranke.train.round import RoundRunner

        vq = build_vq(spec)
        side = spec["image_size"] // vq.downsample
        stand_in = GPT(GPTConfig(dim=64, n_layer=1, n_head=4, vocab_size=vq.codebook_size, block_size=side * side,
                                 cls_token_num=spec["caption_len"], caption_dim=spec["gpt"]["caption_dim"]))
        backbone = LlamaGenBackbone(None, stand_in.eval(), vq, spec["image_size"], "cpu")
        train = copy.deepcopy(spec["train"])
        train.update(world_size=1, checkpoint_every=0)
        train["discriminator"]["start_step"] = 0
        cfg = {"seed": 0, "device": "cpu", "precision": "fp32", "image_size": spec["image_size"],
               "assets": {"reward": {"kind": "bench"}, "perceptual": {"kind": "lpips-vgg"}},
               "methods": {"m": {"mode": "decoder"}}, "rounds": {"steps": 1}, "train": train}
        torch.manual_seed(0)
        runner = RoundRunner(cfg, "m", 1, None, "<random>", tempfile.mkdtemp(prefix="ranke-fullscale-"),
                             device=torch.device("cpu"), backbone=backbone, reward=build_hf_clip_reward(spec),
                             perceptual=LPIPSVGG().eval().requires_grad_(False), data=[])
        # AdamW state exists for the whole round: create it now so it is resident, not "transient"
        for opt, params in ((runner.opt_decoder, runner.dec_params), (runner.opt_disc, list(runner.disc.parameters()))):
            for p in params:
                p.grad = torch.zeros_like(p)
            opt.step()
            opt.zero_grad(set_to_none=True)
        return SimpleNamespace(spec=spec, runner=runner, grid=(side, side))

    def params(self, st):
        r = st.runner
        return n_params(r.vq, r.disc, r.perceptual, r.reward.model)

    def run(self, st, b):
        from ranke.train.rollout import Batch

        r, spec = st.runner, st.spec
        vocab, n = r.vq.codebook_size, st.grid[0] * st.grid[1]
        caps = [f"caption {i}" for i in range(b)]
        cache_caption_embeddings(r.reward, caps)
        batch = Batch(list(range(b)), caps, images(spec, b), random_codes(b, n, vocab), 0)
        sel = random_codes(b, n, vocab, seed=1000)
        with torch.no_grad():  # the round has these from the reward phase (EMA decoder, clamped)
            sel_ema = r.vq_ema.decode_codes(sel, st.grid).clamp(-1, 1)
        row: dict = {}
        t0 = time.perf_counter()
        r._decoder_update(row, 0, batch, sel, caps, torch.ones(b), sel_ema, None)
        dt = time.perf_counter() - t0
        grads = grad_bytes(r.dec_params) + grad_bytes(r.disc.parameters())
        return dict(seconds=dt, grad_gib=grads / GiB,
                    note=f"{b} GT + {b} rollouts; loss_decoder {row.get('loss_decoder', float('nan')):.3g}")


class VqDecode(Part):
    name, what = "vq_decode", "VQ-16 decode_codes 16x16 -> 256 px, clamp (no grad)"

    def build(self, spec):
        vq = build_vq(spec).requires_grad_(False)
        return SimpleNamespace(spec=spec, vq=vq, grid=spec["image_size"] // vq.downsample)

    def params(self, st):
        return n_params(st.vq)

    def run(self, st, b):
        c = random_codes(b, st.grid * st.grid, st.vq.codebook_size)
        t0 = time.perf_counter()
        with torch.inference_mode():
            st.vq.decode_codes(c, (st.grid, st.grid)).clamp(-1, 1)
        return dict(seconds=time.perf_counter() - t0, note=f"decoder {n_params(st.vq.post_quant_conv, st.vq.decoder) / 1e6:.1f}M params")


class VqEncode(VqDecode):
    name, what = "vq_encode", "VQ-16 encode 256 px -> 16x16 codes (no grad)"

    def run(self, st, b):
        x = images(st.spec, b)
        t0 = time.perf_counter()
        st.vq.encode(x)
        return dict(seconds=time.perf_counter() - t0, note=f"encoder {n_params(st.vq.encoder, st.vq.quant_conv) / 1e6:.1f}M params")


class LpipsFwdBwd(Part):
    name, what, warmup = "lpips_fwd_bwd", "LPIPSVGG(x, y) at 256 px + backward to x", True

    def build(self, spec):
        from ranke.perceptual import LPIPSVGG

        torch.manual_seed(0)
        return SimpleNamespace(spec=spec, lpips=LPIPSVGG().eval().requires_grad_(False))

    def params(self, st):
        return n_params(st.lpips)

    def run(self, st, b):
        x, y = images(st.spec, b).requires_grad_(True), images(st.spec, b + 1)[:b]
        t0 = time.perf_counter()
        st.lpips(x, y).mean().backward()
        return dict(seconds=time.perf_counter() - t0)


class Inception(Part):
    name, what, warmup = "inception", "FidExtractor.features: uint8 256 px -> 299 -> 2048", True

    def build(self, spec):
        return SimpleNamespace(spec=spec, ext=build_inception())

    def params(self, st):
        return n_params(st.ext.module)

    def run(self, st, b):
        from ranke.metrics import to_uint8

        x = to_uint8(images(st.spec, b))
        t0 = time.perf_counter()
        st.ext.features(x)
        return dict(seconds=time.perf_counter() - t0)


class ClipScore(Part):
    name, what, warmup = "clip_score", "clip_score image_embeddings (bicubic 224) + text_embeddings", True

    def build(self, spec):
        return SimpleNamespace(spec=spec, clip=build_score_clip(spec))

    def params(self, st):
        return n_params(st.clip.model)

    def run(self, st, b):
        from ranke.metrics import to_uint8
        from ranke.metrics.clip_score import image_embeddings, pair_scores, text_embeddings

        x = to_uint8(images(st.spec, b))
        t0 = time.perf_counter()
        pair_scores(image_embeddings(st.clip, x), text_embeddings(st.clip, [f"a photo of thing {i}" for i in range(b)]))
        return dict(seconds=time.perf_counter() - t0, note=f"image tower {n_params(st.clip.model.visual) / 1e6:.1f}M params")


PARTS: dict[str, Part] = {p.name: p for p in (
    GptSample(), GptLogprob(), GptLogprobCkpt(), T5Encode(), RewardFwd(), RewardFwdBwd(), DecoderStep(), VqDecode(),
    VqEncode(),
    LpipsFwdBwd(), Inception(), ClipScore())}
DEFAULT_PARTS = [n for n in PARTS if n != "gpt_logprob_ckpt"]


# ----------------------------------------------------------------------------------------------
# child: one part, JSON lines on stdout


def emit(**kw) -> None:
    print(TAG + json.dumps(kw), flush=True)


def child_main(part_name: str, spec: dict, batches: list[int], limit_s: float, threads: int) -> int:
    start = time.monotonic()
    torch.set_num_threads(threads)
    part = PARTS[part_name]
    emit(event="start", rss_gib=rss_gib())
    t0 = time.perf_counter()
    state = part.build(spec)
    # "transient" = peak minus this resident RSS, not minus the RSS just before a call: the
    # allocator keeps memory an earlier call freed, which would hide part of a later call's use
    resident = rss_gib()
    emit(event="built", build_s=time.perf_counter() - t0, params=part.params(state), rss_gib=resident)
    if part.warmup:
        part.run(state, min(batches))
    last = None  # (batch, seconds, transient GiB) of the previous call
    margin_gib = 1.0  # keep this much free for the rest of the machine (other agents)
    for b in sorted(batches):
        elapsed = time.monotonic() - start
        if last is not None:
            predicted = last[1] * b / last[0]  # linear in the batch: an upper bound at these sizes
            if elapsed + predicted > limit_s - 5:
                emit(event="skip", batch=b, reason=f"skipped: predicted {predicted:.0f} s would pass the "
                                                    f"{limit_s:.0f} s part limit ({elapsed:.0f} s used)")
                continue
        need = part.need_gib(state, b)
        if need is None and last is not None:
            need = last[2] * b / last[0]
        avail = mem_available_gib() + max(0.0, rss_gib() - resident)  # memory this process already holds counts
        if need is not None and need > avail - margin_gib:
            emit(event="skip", batch=b, reason=f"needs ~{need:.1f} GiB more, MemAvailable {avail:.1f} GiB")
            continue
        before = rss_gib()
        reset_peak_rss()
        out = part.run(state, b)
        peak = peak_rss_gib()
        emit(event="measure", batch=b, rss_before_gib=before, peak_gib=peak, transient_gib=peak - resident, **out)
        last = (b, out["seconds"], peak - resident)
    return 0


# ----------------------------------------------------------------------------------------------
# parent: run the parts one by one, each in its own process


def run_part(name: str, spec_path: Path, batches: list[int], limit_s: float, threads: int, floor_gib: float) -> dict:
    """Start the child, watch time and machine memory, reap it with wait4 for its own ru_maxrss."""
    limit_s = max(limit_s, PARTS[name].min_limit_s)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", name, "--spec", str(spec_path),
           "--batch-sizes", ",".join(map(str, batches)), "--part-timeout", str(limit_s), "--threads", str(threads)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, cwd=REPO)
        killed = None
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if killed is None and time.monotonic() - t0 > limit_s:
                killed = f"timed out (part limit {limit_s:.0f} s)"
            elif killed is None and mem_available_gib() < floor_gib:
                killed = f"killed: machine MemAvailable fell below {floor_gib:.1f} GiB"
            if killed is not None:
                os.kill(proc.pid, signal.SIGKILL)
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.5)
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
        wall = time.monotonic() - t0
        out.seek(0)
        err.seek(0)
        events = [json.loads(line[len(TAG):]) for line in out if line.startswith(TAG)]
        stderr_tail = err.read()[-2000:]
    rc = proc.returncode
    failure = killed
    if failure is None and rc != 0:
        failure = "killed by the kernel (SIGKILL: out of memory?)" if rc == -signal.SIGKILL else f"failed (exit {rc})"
    return dict(part=name, events=events, wall_s=wall, process_peak_gib=usage.ru_maxrss / 2**20, failure=failure,
                stderr_tail=stderr_tail if failure else "")


def table1_rows(result: dict, batches: list[int]) -> list[dict]:
    """One row per requested batch size: measured, skipped (with the reason), or lost to the failure."""
    part = PARTS[result["part"]]
    ev = {e["event"]: e for e in result["events"] if e["event"] in ("start", "built")}
    built = ev.get("built", {})
    by_batch = {e["batch"]: e for e in result["events"] if e["event"] in ("measure", "skip")}
    rows = []
    for b in sorted(batches):
        e = by_batch.get(b)
        row = dict(part=part.name, what=part.what, batch=b, params_m=built.get("params", 0) / 1e6 or None,
                   build_s=built.get("build_s"), model_rss_gib=built.get("rss_gib"),
                   process_peak_gib=result["process_peak_gib"], status="ok", seconds=None, peak_gib=None,
                   transient_gib=None, grad_gib=None, note="")
        if e is None:
            note = "while building" if not built else f"before batch {b} finished"
            tail = result["stderr_tail"].strip()
            if result["failure"] and result["failure"].startswith("failed") and tail:
                note += ": " + tail.splitlines()[-1][:160]
            row.update(status=result["failure"] or "missing", note=note)
        elif e["event"] == "skip":
            row.update(status="skipped", note=e["reason"])
        else:
            row.update(seconds=e["seconds"], peak_gib=e["peak_gib"], transient_gib=e["transient_gib"],
                       grad_gib=e.get("grad_gib"), note=e.get("note", ""))
            for k in ("saved_gib", "formula_fp32_gib"):
                if k in e:
                    row[k] = e[k]
        rows.append(row)
    return rows


def _fmt(v, spec=".2f", none="-"):
    return none if v is None else format(v, spec)


def print_table1(rows: list[dict]) -> None:
    print("| part | what is timed | batch | seconds | peak RSS GiB | peak - resident GiB | process peak GiB | "
          "params M | build s | status / note |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        status = r["note"] if r["status"] == "ok" else f"**{r['status']}** {r['note']}".strip()
        print(f"| {r['part']} | {r['what']} | {r['batch']} | {_fmt(r['seconds'], '.1f')} | {_fmt(r['peak_gib'])} | "
              f"{_fmt(r['transient_gib'])} | {_fmt(r['process_peak_gib'])} | {_fmt(r['params_m'], '.1f')} | "
              f"{_fmt(r['build_s'], '.0f')} | {status} |")


# ----------------------------------------------------------------------------------------------
# Table 2: what the study's GPU jobs need


def model_sizes(spec: dict) -> dict[str, dict]:
    """{name: {params, fp32_bytes (params + buffers in fp32)}} of every model of the study."""
    import open_clip
    from transformers import CLIPConfig, CLIPModel, T5Config, T5EncoderModel

    from ranke.models.gpt import GPT, GPTConfig
    from ranke.models.vq import VQConfig, VQModel
    from ranke.perceptual import LPIPSVGG
    from ranke.train.discriminator import PatchDiscriminator

    dsc = spec["train"]["discriminator"]
    with torch.device("meta"):
        models = {
            "gpt": GPT(GPTConfig(**spec["gpt"])),
            "vq": VQModel(VQConfig.from_dict(spec["vq"])),
            "t5": T5EncoderModel(T5Config(**spec["t5"])),
            "clip_l": CLIPModel(CLIPConfig(**spec["clip_l"])),
            "lpips": LPIPSVGG(),
            "disc": PatchDiscriminator(3, int(dsc["ndf"]), int(dsc["n_layers"])),
        }
    if spec["clip_score_config"] is None:
        models["clip_b"] = open_clip.create_model(spec["clip_score_model"], pretrained=None, device="meta")
    else:
        models["clip_b"] = build_score_clip(spec).model
    out = {}
    for name, m in models.items():
        p = sum(x.numel() for x in m.parameters())
        buf = sum(x.numel() for x in m.buffers())
        out[name] = dict(params=p, fp32_bytes=4 * (p + buf))
    vq = models["vq"]
    out["vq_decoder"] = dict(params=sum(x.numel() for x in vq.decoder_parameters()))
    out["gpt_linear"] = dict(params=sum(x.weight.numel() for x in models["gpt"].modules()
                                        if isinstance(x, torch.nn.Linear)))
    # torch-fidelity's InceptionV3 loads weights in its constructor: count the random state dict
    with tempfile.TemporaryDirectory() as tmp:
        from ranke.metrics.fid import write_random_inception_weights

        write_random_inception_weights(Path(tmp) / "w.pth")
        sd = torch.load(Path(tmp) / "w.pth", map_location="cpu", weights_only=True)
    n = sum(v.numel() for v in sd.values() if v.is_floating_point())
    out["inception"] = dict(params=n, fp32_bytes=4 * n)
    return out


class MeasuredFit:
    """Memory of a part at batch N extrapolated from its Table 1 rows: fixed + per_item x N, the
    line through the smallest and largest measured batch ("peak - resident" minus the gradients,
    fp32 on this CPU). With one measured batch, or a non-increasing pair (allocator noise), it is
    N x (that batch's memory / its size): an upper bound, since it scales the fixed part too."""

    def __init__(self, rows: list[dict], part: str):
        pts = sorted((r["batch"], (r["transient_gib"] - (r["grad_gib"] or 0.0)) * GiB)
                     for r in rows if r["part"] == part and r["status"] == "ok")
        self.part, self.fixed, self.per_item, self.how = part, None, None, ""
        if len(pts) >= 2 and pts[-1][1] > pts[0][1]:
            (b0, m0), (b1, m1) = pts[0], pts[-1]
            self.per_item = (m1 - m0) / (b1 - b0)
            self.fixed = max(0.0, m0 - self.per_item * b0)
            self.how = f"fit through b={b0},{b1}"
        elif pts:
            b, m = pts[-1]
            self.fixed, self.per_item, self.how = 0.0, m / b, f"b={b} scaled"

    def formula(self, n: int, unit: str = "image") -> str:
        if self.per_item is None:
            return f"NOT MEASURED ({self.part} did not run)"
        return (f"{self.fixed / GiB:.2f} GiB + {n} x {self.per_item / GiB:.3f} GiB per {unit} "
                f"({self.part}, fp32 here, {self.how})")

    def bytes(self, n: int) -> float | None:
        return None if self.per_item is None else self.fixed + self.per_item * n


def memory_plan(cfg: dict, spec: dict, sizes: dict, rows: list[dict], baseline_gib: float | None) -> list[dict]:
    """Table 2 rows: (job, kind, item, formula, bytes). kind: resident | phase:<name> | host."""
    gpt = spec["gpt"]
    P, Plin = sizes["gpt"]["params"], sizes["gpt_linear"]["params"]
    t = cfg["train"]
    world = int(t["world_size"])
    prompts = int(t["prompts_per_step"]) // world
    seqs = prompts * int(t["group_size"])
    gt = prompts  # GT reconstructions per rank per step
    sel = prompts * int(t["decoder"]["rank_k"])  # selected rollouts the decoder trains on
    image_bytes = 3 * spec["image_size"] ** 2 * 4
    M = lambda x: f"{x / 1e6:.1f}M"  # noqa: E731
    out: list[dict] = []

    def add(job, kind, item, formula, nbytes):
        out.append(dict(job=job, kind=kind, item=item, formula=formula, bytes=nbytes))

    dec, vqd, rew = MeasuredFit(rows, "decoder_step"), MeasuredFit(rows, "vq_decode"), MeasuredFit(rows, "reward_fwd")
    inc, cls, t5 = MeasuredFit(rows, "inception"), MeasuredFit(rows, "clip_score"), MeasuredFit(rows, "t5_encode")

    # -- the training round, one rank (one GPU) ---------------------------------------------
    job = f"round rank (1 of {world} GPUs; {prompts} prompts x {t['group_size']} rollouts = {seqs} seqs)"
    add(job, "resident", "GPT-XL online weights fp32", f"4 B x {M(P)}", 4 * P)
    add(job, "resident", "GPT-XL grads fp32 (live from one backward to the next zero_grad)", f"4 B x {M(P)}", 4 * P)
    add(job, "resident", "AdamW exp_avg + exp_avg_sq fp32", f"8 B x {M(P)}", 8 * P)
    add(job, "resident", "fixed KL reference (deepcopy of the fp32 policy)", f"4 B x {M(P)}", 4 * P)
    add(job, "resident", "policy EMA (deepcopy, fp32)", f"4 B x {M(P)}", 4 * P)
    add(job, "resident", "sampler's bf16 weight copy (ranke.sampling cache; the round never releases it)",
        f"2 B x {M(P)}", 2 * P)
    rows_roll = 2 * seqs
    add(job, "resident", "rollout KV cache (kept in the sampler cache between steps)",
        f"{gpt['n_layer']} layers x K,V x {rows_roll} rows (CFG) x {gpt['cls_token_num'] + gpt['block_size'] - 1} "
        f"slots x {gpt['dim']} x 2 B", kv_cache_bytes(gpt, rows_roll, 2))
    add(job, "resident", "T5-XL encoder bf16", f"2 B x {M(sizes['t5']['params'])}", 2 * sizes["t5"]["params"])
    add(job, "resident", "VQ-16 online + EMA fp32 (whole model each)", f"2 x 4 B x {M(sizes['vq']['params'])}",
        2 * sizes["vq"]["fp32_bytes"])
    pdec = sizes["vq_decoder"]["params"]
    add(job, "resident", "decoder grads + AdamW state fp32", f"12 B x {M(pdec)}", 12 * pdec)
    pd = sizes["disc"]["params"]
    add(job, "resident", "PatchGAN discriminator weights + grads + AdamW", f"16 B x {M(pd)}", 16 * pd)
    add(job, "resident", "CLIP ViT-L/14 reward fp32 (vision + text)", f"4 B x {M(sizes['clip_l']['params'])}",
        sizes["clip_l"]["fp32_bytes"])
    add(job, "resident", "LPIPS-VGG fp32", f"4 B x {M(sizes['lpips']['params'])}", sizes["lpips"]["fp32_bytes"])
    add(job, "phase:rollouts", "caption prefill, one block live (bf16)",
        f"{rows_roll} rows x {gpt['cls_token_num']} x (4d + 3f) x 2 B", prefill_bytes(gpt, rows_roll, 2))
    add(job, "phase:reward decode", f"EMA decode of {seqs} rollouts, no grad", vqd.formula(seqs), vqd.bytes(seqs))
    add(job, "phase:reward scoring", f"CLIP-L reward on {seqs} images, no grad", rew.formula(seqs), rew.bytes(seqs))
    add(job, "phase:reward scoring", f"the {seqs} EMA images (kept for the consistency term)",
        f"{seqs} x 3 x 256^2 x 4 B", seqs * image_bytes)
    for ckpt in (False, True):
        terms = gpt_activation_terms(gpt, seqs, precision="bf16", checkpointing=ckpt)
        label = "checkpointing on (study)" if ckpt else "checkpointing off"
        for k, v in terms.items():
            add(job, f"phase:policy update, {label}", f"log-prob fwd/bwd activations: {k}",
                _term_formula(k, gpt, seqs, ckpt), v)
        add(job, f"phase:policy update, {label}", "autocast's bf16 copies of the trainable linear weights"
            + (" (summed: conservative, they are freed before the backward)" if ckpt else ""),
            f"2 B x {M(Plin)}", 2 * Plin)
    add(job, "phase:optimizer", "AdamW (foreach) temporary, one fp32 tensor per parameter", f"4 B x {M(P)}", 4 * P)
    add(job, "phase:decoder update", f"{gt} GT + {sel} selected rollouts (without decoder / disc grads)",
        dec.formula(gt, "GT + rollout pair"), dec.bytes(gt))

    # -- sample job (the evaluation sampler) ------------------------------------------------
    bs = int(cfg["sampling"]["batch_size"])
    job = f"sample job (batch {bs})"
    add(job, "resident", "GPT-XL fp32 (as loaded) + the sampler's bf16 copy", f"6 B x {M(P)}", 6 * P)
    add(job, "resident", "T5-XL encoder bf16", f"2 B x {M(sizes['t5']['params'])}", 2 * sizes["t5"]["params"])
    add(job, "resident", "VQ-16 fp32 (from_config moves it to the GPU)", f"4 B x {M(sizes['vq']['params'])}",
        sizes["vq"]["fp32_bytes"])
    add(job, "resident", "KV cache (kept between batches of the same shape)",
        f"{gpt['n_layer']} x 2 x {2 * bs} rows x {gpt['cls_token_num'] + gpt['block_size'] - 1} x {gpt['dim']} x 2 B",
        kv_cache_bytes(gpt, 2 * bs, 2))
    add(job, "phase:prefill", "caption prefill, one block live (bf16)",
        f"{2 * bs} x {gpt['cls_token_num']} x (4d + 3f) x 2 B", prefill_bytes(gpt, 2 * bs, 2))
    add(job, "phase:T5 encode", f"T5 encode of {bs} captions", t5.formula(bs, "caption"), t5.bytes(bs))

    # -- score job ----------------------------------------------------------------------------
    sb = int(cfg["score"]["batch_size"])
    job = f"score job (batch {sb})"
    add(job, "resident", "VQ-16 fp32", f"4 B x {M(sizes['vq']['params'])}", sizes["vq"]["fp32_bytes"])
    add(job, "resident", "Inception (torch-fidelity) fp32", f"4 B x {M(sizes['inception']['params'])}",
        sizes["inception"]["fp32_bytes"])
    add(job, "resident", "CLIP ViT-B/32 fp32", f"4 B x {M(sizes['clip_b']['params'])}", sizes["clip_b"]["fp32_bytes"])
    add(job, "phase:decode", "VQ decode", vqd.formula(sb), vqd.bytes(sb))
    add(job, "phase:inception", "Inception features", inc.formula(sb), inc.bytes(sb))
    add(job, "phase:clip", "CLIP-score features", cls.formula(sb), cls.bytes(sb))

    # -- host memory --------------------------------------------------------------------------
    base = (baseline_gib or 0.0) * GiB
    bsrc = f"{baseline_gib:.2f} GiB import baseline measured here (CUDA context not included)" if baseline_gib else \
        "no baseline measured"
    two = lambda b: 2 * b  # noqa: E731  (each model is built on the host, then its state dict is loaded next to it)
    host_round = base + two(4 * P) + two(sizes["vq"]["fp32_bytes"]) + two(2 * sizes["t5"]["params"]) + \
        two(sizes["clip_l"]["fp32_bytes"])
    add("host", "host", f"round rank: every model built on the host next to its loaded state dict + {bsrc}",
        "baseline + 2 x (GPT fp32 + VQ fp32 + T5 bf16 + CLIP-L fp32)", host_round)
    host_sample = base + two(4 * P) + two(sizes["vq"]["fp32_bytes"]) + two(2 * sizes["t5"]["params"])
    add("host", "host", f"sample job: the same for GPT, VQ, T5 + {bsrc}", "baseline + 2 x (GPT + VQ + T5)", host_sample)
    n_eval = int(cfg["prompts"]["n"])
    host_score = base + two(sizes["vq"]["fp32_bytes"] + sizes["inception"]["fp32_bytes"] + sizes["clip_b"]["fp32_bytes"]) \
        + n_eval * 2048 * 4
    add("host", "host", f"score job: VQ + Inception + CLIP-B models, {n_eval} x 2048 fp32 FID features + {bsrc}",
        "baseline + 2 x models + N x 2048 x 4 B", host_score)
    return out


def _term_formula(term: str, gpt: dict, b: int, ckpt: bool) -> str:
    s = gpt["cls_token_num"] + gpt["block_size"] - 1
    d, f, h, nl = gpt["dim"], _ffn_hidden(gpt), gpt["n_head"], gpt["n_layer"]
    per = f"(38x{d} + 8x{f} + 4x{h}) B"
    return {
        "blocks": f"{b} seqs x {s} pos x {nl} layers x {per}",
        "block inputs (checkpointed)": f"{b} x {s} x {nl} x 2 x {d} B",
        "one block recomputed": f"{b} x {s} x {per}",
        "caption MLP + final norm": f"{b} x ({gpt['cls_token_num']} x (2x{gpt['caption_dim']} + 4x{d}) + "
                                    f"{gpt['block_size']} x 8x{d}) B",
        "log-softmax output (fp32)": f"{b} x {gpt['block_size']} x {gpt['vocab_size']} x 4 B",
        "attention mask": f"{b} x {s}^2 x 1 B",
        "backward working set": f"one block + 2 x {b} x {gpt['block_size']} x {gpt['vocab_size']} x 4 B",
    }[term]


def job_totals(plan: list[dict]) -> list[dict]:
    """Per GPU job: resident + the largest phase; the round twice (checkpointing on / off)."""
    jobs: dict[str, list[dict]] = {}
    for r in plan:
        if r["job"] != "host":
            jobs.setdefault(r["job"], []).append(r)
    totals = []
    for job, items in jobs.items():
        resident = sum(r["bytes"] or 0 for r in items if r["kind"] == "resident")
        missing = [r["item"] for r in items if r["bytes"] is None]
        phases: dict[str, float] = {}
        for r in items:
            if r["kind"].startswith("phase:"):
                phases[r["kind"][6:]] = phases.get(r["kind"][6:], 0.0) + (r["bytes"] or 0)
        variants = [None]
        if any("checkpointing" in p for p in phases):
            variants = ["checkpointing on (study)", "checkpointing off"]
        for v in variants:
            ph = {k: x for k, x in phases.items() if "checkpointing" not in k or k.endswith(v or "")}
            worst = max(ph, key=ph.get)
            total = resident + ph[worst]
            label = job if v is None else f"{job}, {v}"
            totals.append(dict(job=label, resident=resident, worst_phase=worst, phase_bytes=ph[worst], total=total,
                               incomplete=missing))
    return totals


def print_table2(plan: list[dict], totals: list[dict], cfg: dict, warning: str | None) -> None:
    if warning:
        print(warning + "\n")
    print("| job | resident / phase | item | formula | GiB |")
    print("|---|---|---|---|---:|")
    for r in plan:
        if r["job"] == "host":
            continue
        print(f"| {r['job']} | {r['kind']} | {r['item']} | {r['formula']} | "
              f"{'n/a' if r['bytes'] is None else format(r['bytes'] / GiB, '.2f')} |")
    print("\nGPU peak per job = resident + largest phase (phases run one after another):\n")
    print("| job | resident GiB | largest phase | phase GiB | peak GiB | H200 (139 GiB) | A100/H100 (80 GiB) |")
    print("|---|---:|---|---:|---:|---|---|")
    for t in totals:
        g = t["total"] / GiB
        flag = lambda cap: ("fits" if g <= cap else "**DOES NOT FIT**") + (" (incomplete)" if t["incomplete"] else "")  # noqa: E731
        print(f"| {t['job']} | {t['resident'] / GiB:.1f} | {t['worst_phase']} | {t['phase_bytes'] / GiB:.1f} | "
              f"{g:.1f} | {flag(H200_GIB)} | {flag(A100_GIB)} |")
    slurm, res = cfg["cluster"]["slurm"], cfg["resources"]
    asks = {"round rank": slurm["mem_gb"] * GiB / int(slurm["gpus_per_node"]),
            "sample job": res["sample"]["mem_mb"] * 2**20, "score job": res["score"]["mem_mb"] * 2**20}
    ask_text = {"round rank": f"cluster.slurm.mem_gb {slurm['mem_gb']} / {slurm['gpus_per_node']} GPUs per node",
                "sample job": f"resources.sample.mem_mb {res['sample']['mem_mb']}",
                "score job": f"resources.score.mem_mb {res['score']['mem_mb']}"}
    print("\nHost memory (SLURM units: 1 MB = 2^20 B, 1 GB = 2^30 B):\n")
    print("| job | estimate | formula | GiB | study asks | GiB | |")
    print("|---|---|---|---:|---|---:|---|")
    for r in plan:
        if r["job"] != "host":
            continue
        key = next(k for k in asks if r["item"].startswith(k.split()[0]))
        ok = "fits" if r["bytes"] <= asks[key] else "**DOES NOT FIT**"
        print(f"| {key} | {r['item']} | {r['formula']} | {r['bytes'] / GiB:.1f} | {ask_text[key]} | "
              f"{asks[key] / GiB:.1f} | {ok} |")


# ----------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", default=",".join(DEFAULT_PARTS),
                    help=f"comma-separated, from: {', '.join(PARTS)} (default: all but gpt_logprob_ckpt)")
    ap.add_argument("--batch-sizes", default=None,
                    help="comma-separated, for every part (default 1,2; gpt_sample: 1, see GptSample)")
    # 1 thread: on this shared 2-core machine a 1280x3584 GEMM ran at 72 GFLOP/s on one thread and
    # 52 on two (other agents' processes); pass 2 on an idle machine
    ap.add_argument("--threads", type=int, default=1, help="torch threads per part (default 1)")
    ap.add_argument("--part-timeout", type=float, default=300.0, help="wall-clock seconds per part (default 300)")
    ap.add_argument("--min-free-gib", type=float, default=0.75,
                    help="kill a part when the machine's MemAvailable drops below this (default 0.75)")
    ap.add_argument("--study", default=str(STUDY), help="study config (default: the LlamaGen-XL study)")
    ap.add_argument("--smoke", action="store_true", help="toy sizes for every model (the smoke test)")
    ap.add_argument("--json", default=None, help="also write both tables as JSON")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--spec", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    batches = sorted({int(x) for x in (args.batch_sizes or "1,2").split(",") if x.strip()})

    if args.child:
        return child_main(args.child, json.loads(Path(args.spec).read_text()), batches, args.part_timeout, args.threads)

    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        ap.error(f"unknown parts {unknown}; known: {list(PARTS)}")
    t_start = time.monotonic()
    load_start = os.getloadavg()
    cfg = load_study(Path(args.study))
    spec = study_spec(cfg, smoke=args.smoke)
    warning = study_gpt_mismatch(cfg, study_spec(cfg))
    print(f"# fullscale bench: torch {torch.__version__}, {os.cpu_count()} CPUs, {args.threads} thread(s) per part, "
          f"MemAvailable {mem_available_gib():.1f} GiB, load average {' '.join(f'{x:.2f}' for x in load_start)}, "
          f"part limit {args.part_timeout:.0f} s{', SMOKE sizes' if args.smoke else ''}", flush=True)

    rows, baselines = [], []
    with tempfile.TemporaryDirectory(prefix="ranke-fullscale-") as tmp:
        spec_path = Path(tmp) / "spec.json"
        spec_path.write_text(json.dumps(spec))
        for name in parts:
            part_batches = batches if args.batch_sizes or not PARTS[name].default_batches else \
                list(PARTS[name].default_batches)
            res = run_part(name, spec_path, part_batches, args.part_timeout, args.threads, args.min_free_gib)
            part_rows = table1_rows(res, part_batches)
            rows += part_rows
            baselines += [e["rss_gib"] for e in res["events"] if e["event"] == "start"]
            done = ", ".join(f"b{r['batch']} {_fmt(r['seconds'], '.1f')} s" if r["status"] == "ok" else
                             f"b{r['batch']} {r['status']}" for r in part_rows)
            print(f"# {name}: {done} (wall {res['wall_s']:.0f} s, load {os.getloadavg()[0]:.2f})", flush=True)
            if res["failure"] and res["stderr_tail"]:
                print("#   " + res["stderr_tail"].strip().replace("\n", "\n#   ")[-800:], flush=True)

    print("\n## Table 1: measured on this CPU (fp32, random weights)\n")
    print_table1(rows)
    for r in rows:
        if "saved_gib" in r and r["part"] == "gpt_logprob":
            print(f"\ngpt_logprob b{r['batch']}: autograd kept {r['saved_gib']:.2f} GiB of activations; the fp32 "
                  f"formula of gpt_activation_terms (without its backward working set) gives "
                  f"{r['formula_fp32_gib']:.2f} GiB")

    sizes = model_sizes(spec)
    plan = memory_plan(cfg, spec, sizes, rows, min(baselines) if baselines else None)
    totals = job_totals(plan)
    print(f"\n## Table 2: memory the study's jobs need ({Path(args.study).name}{', SMOKE sizes' if args.smoke else ''})\n")
    print("parameters: " + ", ".join(f"{k} {v['params'] / 1e6:.1f}M" for k, v in sizes.items()) + "\n")
    print_table2(plan, totals, cfg, warning)
    wall = time.monotonic() - t_start
    load_end = os.getloadavg()
    print(f"\n# total {wall / 60:.1f} min; load average at start {load_start[0]:.2f}, at end "
          f"{' '.join(f'{x:.2f}' for x in load_end)}")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "study": str(args.study), "smoke": args.smoke, "threads": args.threads, "torch": torch.__version__,
            "load_average_start": load_start, "load_average_end": load_end, "total_s": wall,
            "table1": rows, "table2": plan, "table2_totals": totals, "params": sizes, "warning": warning,
        }, indent=2, default=str) + "\n")
    return 0



if __name__ == "__main__":
    raise SystemExit(main())
