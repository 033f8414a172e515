"""One RankE training round: N steps of one method, from the previous round's checkpoint.

One step (official order, see the code digest B.4):
  1. rollouts: B prompts x G code maps from the current policy (CFG), per-rollout seeds from (seed, t);
  2. rewards: decode with the EMA decoder, score with the reward model;
  3. policy update (GRPO, PPO-clip + k2 KL to the reference)            [phases "policy", "both"];
  4. discriminator step, then decoder step on the same rollouts, EMA     [phases "decoder", "both"].
Phases: mode `policy` -> "policy", `decoder` -> "decoder", `ranke` -> "both" with schedule `step`
(the official code), or with schedule `round` alternating per round: odd rounds "policy" (decoder
frozen), even rounds "decoder" (policy frozen, rollouts from the fixed policy).

State carried between rounds (out_dir of round r = init_dir of round r+1): policy.pt, decoder.pt
(LlamaGen-loadable), policy_ema.pt, decoder_ema.pt, state.pt (discriminator, optimizers, RNG states,
global step and per-module step counters). Within a round, a resume checkpoint (everything above +
the partial train log + a fingerprint of the inputs) is written to work_dir every
train.checkpoint_every steps; a restarted round resumes from it. Batches and rollout seeds are pure
functions of (seed, global step), so a resumed run equals an uninterrupted one.

Multi-process: train.world_size > 1 runs one process per device (DDP-style: every rank holds the
full models and takes 1/W of the step's prompts with their G rollouts). Policy and discriminator
gradients are averaged across ranks before clipping, so all ranks apply identical updates to them
(official: both go through DDP-wrapped modules, trainer.py:369,621). The decoder follows
train.decoder.grad_sync:
* `local` (official): no all-reduce of decoder gradients. The official trainer calls every decoder
  forward through `accelerator.unwrap_model(vq_model)` (trainer.py:553,618,645,659), which bypasses
  DDP's reducer, so each rank trains its own decoder, EMA decoder and decoder optimizer state on its
  own prompts, and the VQGAN adaptive weight uses that rank's own gradients. Rewards come from each
  rank's own EMA decoder. Rank 0's decoder is what the round writes (official: rank 0 saves,
  post_train.py:453-467). Resume checkpoints then hold every rank's decoder-side state: rank 0's in
  resume.pt, rank r's in `resume.rank<r>.step<s>.pt` next to it (see `save_resume`).
* `global`: decoder gradients and the adaptive weight's gradients are averaged across ranks, so W
  ranks train one decoder on the global batch, as one process would.
Difference from the official single continuous run: a round ends with a checkpoint, and the next
round starts every rank from rank 0's saved decoder, EMA decoder and decoder optimizer state, so
under `local` the ranks' decoders are re-synchronised at each round boundary.
Under SLURM (submitit tasks) the ranks come from the environment; otherwise they are spawned here
(gloo on CPU, nccl on GPU).

LASC codebook rows (train.decoder.lasc_codebook): the official LASC mixes the raw
`embedding.weight` rows (`raw`, trainer.py:719-720). The default `normalized` mixes the
l2-normalised rows instead: hard decoding, and so every input the decoder is trained on, uses
unit-norm rows, and a mix of raw rows lies off that input distribution by the rows' norms. LASC is
off (lambda_lasc 0) in every released run, so no released result depends on the choice.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import random
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from torch.utils.checkpoint import checkpoint as grad_checkpoint
from tqdm import tqdm

from ranke.io import SCHEMAS, atomic_path, read_parquet, save_torch, write_json, write_parquet
from ranke.runtime import autocast, autocast_dtype, resolve_device
from ranke.train import LIVE_LOG, RESUME_FILE, RESUME_INFO
from ranke.train.decoder import (
    consistency_loss,
    lasc_loss,
    rank_gan_loss,
    rank_weights,
    reconstruction_loss,
    reward_loss,
    tau_schedule,
    topk_soft_codes,
)
from ranke.train.discriminator import build_discriminator, discriminator_loss
from ranke.train.policy import ema_update, grpo_advantages, policy_loss
from ranke.train.rollout import TrainData, generate_rollouts, rollout_seeds, score_rollouts

log = logging.getLogger("ranke.train.round")

DECODER_SYNCS = ("local", "global")
LASC_CODEBOOKS = ("normalized", "raw")
LOG_COLUMNS = SCHEMAS["train_log"].names


class NonFiniteLossError(FloatingPointError):
    """A loss term or reward became NaN/inf: the round stops, no output is written."""


def _f(x) -> float:
    return float(x.detach()) if isinstance(x, torch.Tensor) else float(x)


def check_finite(value: torch.Tensor | float, step: int, term: str) -> float:
    v = float(value.detach()) if isinstance(value, torch.Tensor) else float(value)
    if not math.isfinite(v):
        raise NonFiniteLossError(f"non-finite value at step {step}: {term} = {v}; stopping the round "
                                 "(no checkpoint is written, the previous round's checkpoint is untouched)")
    return v


def method_config(cfg: dict, method: str) -> dict:
    """config `methods` is a mapping name -> {mode, schedule} or a list of {name, mode, schedule}."""
    methods = cfg["methods"]
    if isinstance(methods, dict):
        if method in methods:
            return methods[method]
    else:
        for m in methods:
            if m.get("name") == method:
                return m
    raise KeyError(f"method {method!r} is not in config methods")


def phase_of(method_cfg: dict, round_idx: int) -> str:
    mode = method_cfg.get("mode")
    schedule = method_cfg.get("schedule", "step")
    if mode == "policy":
        return "policy"
    if mode == "decoder":
        return "decoder"
    if mode == "ranke":
        if schedule == "step":
            return "both"
        if schedule == "round":
            return "policy" if round_idx % 2 == 1 else "decoder"
        raise ValueError(f"methods.*.schedule must be step | round, got {schedule!r}")
    raise ValueError(f"method mode {mode!r} does not train (expected policy | decoder | ranke)")


def enable_gradient_checkpointing(policy: torch.nn.Module) -> None:
    """Recompute each transformer block in the backward pass (instance-level wrap: the state dict
    and the EMA / reference copies are unaffected)."""
    if hasattr(policy, "enable_gradient_checkpointing"):  # Janus policy (transformers trunk)
        policy.enable_gradient_checkpointing()
        return
    for layer in policy.layers:
        inner = layer.forward

        def fwd(*args, _inner=inner, **kwargs):
            if torch.is_grad_enabled():
                return grad_checkpoint(_inner, *args, use_reentrant=False, **kwargs)
            return _inner(*args, **kwargs)

        layer.forward = fwd


def decode_unclamped(backbone, vq, codes: torch.Tensor) -> torch.Tensor:
    """Differentiable decode without the final clamp (the GT reconstruction is used unclamped, as in
    the official VQ loss). LlamaGen VQ: decode_codes; other backbones: their own hook or decode()."""
    if hasattr(backbone, "decode_unclamped"):
        return backbone.decode_unclamped(vq, codes)
    if hasattr(vq, "decode_codes"):
        return vq.decode_codes(codes, backbone.grid)
    return backbone.decode(vq, codes)


def decoder_last_layer(backbone, vq) -> torch.Tensor:
    """The weight the VQGAN adaptive GAN weight balances gradients at: decoder.conv_out.weight."""
    conv_out = getattr(getattr(vq, "decoder", None), "conv_out", None)
    if conv_out is not None:
        return conv_out.weight
    return [p for p in backbone.decoder_parameters(vq) if p.dim() == 4][-1]


def _rng_state() -> dict:
    st = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def _set_rng_state(st: dict) -> None:
    random.setstate(st["python"])
    np.random.set_state(st["numpy"])
    torch.set_rng_state(st["torch"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def _shard_name(rank: int, step: int) -> str:
    """Resume shard of rank `rank`'s own decoder-side state at global step `step`."""
    return f"resume.rank{rank}.step{step}.pt"


def _fingerprint(cfg: dict, method: str, round_idx: int, init_dir, tokens_path) -> str:
    """Identity of a round's inputs: a resume checkpoint from other inputs is not used. Where the job
    runs (cluster) and how often it checkpoints do not change the result, so they are left out."""
    cfg = {k: v for k, v in cfg.items() if k != "cluster"}
    if "train" in cfg:
        cfg["train"] = {k: v for k, v in cfg["train"].items() if k != "checkpoint_every"}
    blob = json.dumps([cfg, method, round_idx, str(init_dir), str(tokens_path)], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# Gradient all-reduce bucket (Dist.average_grads): DDP's default size.
GRAD_BUCKET_BYTES = 25 * 2**20


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def average_grads(self, params, bucket_bytes: int = GRAD_BUCKET_BYTES) -> None:
        """Each parameter's gradient becomes its mean over the ranks.

        In buckets of about `bucket_bytes` (one all-reduce each, as DDP does): a flat copy of the
        whole gradient would cost another 3 GB for GPT-XL in fp32. Every rank must join every
        collective with the same shapes, so the ranks first agree which parameters have a gradient
        on any rank: where one rank has none (a parameter its batch did not reach) it contributes
        zeros instead of leaving the others waiting; a parameter no rank has a gradient for keeps
        none (the optimizer skips it, as on one rank)."""
        if self.world_size == 1:
            return
        params = list(params)
        has = torch.tensor([p.grad is not None for p in params], dtype=torch.int32, device=self._comm_device())
        dist.all_reduce(has, op=dist.ReduceOp.MAX)
        reduced = [p for p, any_rank in zip(params, has.tolist()) if any_rank]
        for p in reduced:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        bucket, size = [], 0
        for p in reduced:
            nbytes = p.grad.numel() * p.grad.element_size()
            if bucket and (size + nbytes > bucket_bytes or p.grad.dtype != bucket[0].dtype
                           or p.grad.device != bucket[0].device):
                self._reduce_bucket(bucket)
                bucket, size = [], 0
            bucket.append(p.grad)
            size += nbytes
        if bucket:
            self._reduce_bucket(bucket)

    def _reduce_bucket(self, grads: list[torch.Tensor]) -> None:
        flat = torch.cat([g.reshape(-1) for g in grads]) if len(grads) > 1 else grads[0].reshape(-1).clone()
        dist.all_reduce(flat)
        flat /= self.world_size
        i = 0
        for g in grads:
            g.copy_(flat[i : i + g.numel()].view_as(g))
            i += g.numel()

    @staticmethod
    def _comm_device() -> torch.device:
        """Where small host values go for a collective: nccl only reduces CUDA tensors."""
        if dist.get_backend() == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def mean(self, values: list[float]) -> list[float]:
        if self.world_size == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self._comm_device())
        dist.all_reduce(t)
        return (t / self.world_size).tolist()

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        if self.world_size == 1:
            return x
        out = [torch.empty_like(x) for _ in range(self.world_size)]
        dist.all_gather(out, x.contiguous())
        return torch.cat(out)

    def average(self, x: torch.Tensor) -> torch.Tensor:
        if self.world_size == 1:
            return x
        x = x.clone()
        dist.all_reduce(x)
        return x / self.world_size

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def all_true(self, flag: bool) -> bool:
        """True on every rank iff `flag` is True on every rank (a decision all ranks must share)."""
        if self.world_size == 1:
            return bool(flag)
        t = torch.tensor([1 if flag else 0], dtype=torch.int64, device=self._comm_device())
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        return bool(t.item())


@dataclass
class RoundState:
    step: int = 0  # global step (continues across rounds)
    policy_steps: int = 0  # policy optimizer steps (ppo_epochs per step), the GPT-EMA counter
    decoder_steps: int = 0
    round_steps: int = 0  # steps done in this round
    log_rows: list = field(default_factory=list)


class RoundRunner:
    """Holds the models and optimizers of one round; `train_step()` runs one step."""

    def __init__(self, cfg: dict, method: str, round_idx: int, init_dir, tokens_path, work_dir,
                 dist_info: Dist | None = None, device: torch.device | None = None, *,
                 backbone=None, reward=None, perceptual=None, data=None):
        """Components default to what the config names; `backbone`, `reward`, `perceptual` and `data`
        can be given pre-built (bench/round.py runs random-weight presets without files)."""
        from ranke.models.factory import build_backbone
        from ranke.perceptual import build_perceptual
        from ranke.rewards import build_reward

        self.cfg, self.method, self.round_idx = cfg, method, round_idx
        self.tcfg = cfg["train"]
        self.dist = dist_info or Dist()
        self.device = device or resolve_device(cfg.get("device", "auto"))
        self.amp = autocast_dtype(cfg.get("precision", "auto"), self.device)
        self.seed = int(cfg.get("seed", 0))
        self.phase = phase_of(method_config(cfg, method), round_idx)
        self.update_policy = self.phase in ("policy", "both")
        self.update_decoder = self.phase in ("decoder", "both")
        self.n_steps = int(cfg["rounds"]["steps"])
        self.work_dir = Path(work_dir)
        self.init_dir = None if init_dir in (None, "base") else Path(init_dir)
        self.fingerprint = _fingerprint(cfg, method, round_idx, self.init_dir, tokens_path)
        pc, dc = self.tcfg["policy"], self.tcfg["decoder"]
        self.G = int(self.tcfg["group_size"])
        # official behaviours by default, except lasc_codebook (see the module docstring)
        self.decoder_sync = dc.get("grad_sync", "local")
        if self.decoder_sync not in DECODER_SYNCS:
            raise ValueError(f"train.decoder.grad_sync must be one of {DECODER_SYNCS}, got {self.decoder_sync!r}")
        self.lasc_codebook = dc.get("lasc_codebook", "normalized")
        if self.lasc_codebook not in LASC_CODEBOOKS:
            raise ValueError(f"train.decoder.lasc_codebook must be one of {LASC_CODEBOOKS}, got {self.lasc_codebook!r}")
        self.zero_caption_padding = bool(self.tcfg.get("rollout", {}).get("zero_caption_padding", False))

        # models: the base assets first (they also give the fixed KL reference = the run's start)
        self.backbone = backbone if backbone is not None else build_backbone(cfg, self.device)
        bb = self.backbone
        self.policy, self.vq = bb.policy, bb.vq
        need_ref = self.update_policy and float(pc["kl_coef"]) > 0 and pc.get("reference", "fixed") == "fixed"
        self.policy_ref = copy.deepcopy(self.policy).eval().requires_grad_(False) if need_ref else None
        extra = {}
        if self.init_dir is not None:
            self.policy = bb.load_policy(self.init_dir / "policy.pt")
            self.vq = bb.load_vq(self.init_dir / "decoder.pt")
            self.policy_ema = bb.load_policy(self.init_dir / "policy_ema.pt")
            self.vq_ema = bb.load_vq(self.init_dir / "decoder_ema.pt")
            extra = torch.load(self.init_dir / "state.pt", map_location="cpu", weights_only=False)
        else:
            self.policy_ema = copy.deepcopy(self.policy)
            self.vq_ema = copy.deepcopy(self.vq)
        bb.policy, bb.vq = self.policy, self.vq  # no stale base copies held by the backbone
        for m in (self.policy, self.vq, self.policy_ema, self.vq_ema):
            m.to(self.device).eval()
        self.policy_ema.requires_grad_(False)
        self.vq_ema.requires_grad_(False)
        # trainable sets: the whole policy; only post_quant_conv + decoder of the VQ
        self.policy.requires_grad_(self.update_policy)
        self.vq.requires_grad_(False)
        self.dec_params = list(bb.decoder_parameters(self.vq))
        for p in self.dec_params:
            p.requires_grad_(self.update_decoder)
        dec_ids = {id(p) for p in self.dec_params}
        self._dec_names = [n for n, p in self.vq.named_parameters() if id(p) in dec_ids]  # resume shards
        self.policy_params = list(self.policy.parameters())
        if self.tcfg.get("gradient_checkpointing") and self.update_policy:
            enable_gradient_checkpointing(self.policy)

        dcfg = self.tcfg["discriminator"]
        torch.manual_seed(self.seed)  # fresh discriminator init (N(0, 0.02)) is seeded
        self.disc = build_discriminator(int(dcfg["ndf"]), int(dcfg["n_layers"]),
                                        batchnorm=dcfg.get("batchnorm", "local"), device=self.device)
        self.opt_policy = torch.optim.AdamW(self.policy_params, lr=float(pc["lr"]), weight_decay=float(pc["weight_decay"]))
        self.opt_decoder = torch.optim.AdamW(self.dec_params, lr=float(dc["lr"]), weight_decay=float(dc["weight_decay"]))
        self.opt_disc = torch.optim.AdamW(self.disc.parameters(), lr=float(dcfg["lr"]), weight_decay=float(dcfg["weight_decay"]))
        self.state = RoundState()
        self._passthrough = {}  # optimizer states of modules this round does not train
        if extra:
            self._load_carried(extra)

        self.reward = reward if reward is not None else build_reward(cfg["assets"]["reward"], self.device)
        self.perceptual = perceptual
        if self.perceptual is None and self.update_decoder:
            self.perceptual = build_perceptual(cfg["assets"].get("perceptual"), self.device)
        if data is None:
            data = TrainData(read_parquet(tokens_path, "tokens"), cfg["assets"]["coco_root"], int(cfg["image_size"]),
                             int(self.tcfg["prompts_per_step"]), self.seed)
        self.data = data
        self.timings: dict[str, float] = {}  # seconds per part of the last step (bench, logs)
        self.start_step = self.state.step
        self._maybe_resume()

    # -- state ----------------------------------------------------------------------------------

    def _load_carried(self, extra: dict) -> None:
        """Discriminator, optimizers and counters carried over from the previous round."""
        self.state.step = int(extra["step"])
        self.state.policy_steps = int(extra.get("policy_steps", 0))
        self.state.decoder_steps = int(extra.get("decoder_steps", 0))
        if extra.get("disc") is not None:
            self.disc.load_state_dict(extra["disc"])
        for name, opt, used in (("opt_policy", self.opt_policy, self.update_policy),
                                ("opt_decoder", self.opt_decoder, self.update_decoder),
                                ("opt_disc", self.opt_disc, self.update_decoder)):
            sd = extra.get(name)
            if sd is None:
                continue
            if used:
                _load_optimizer(opt, sd)
            else:
                self._passthrough[name] = sd
        if extra.get("rng") is not None:
            _set_rng_state(extra["rng"])

    def _carried(self) -> dict:
        out = {
            "step": self.state.step,
            "policy_steps": self.state.policy_steps,
            "decoder_steps": self.state.decoder_steps,
            "disc": self.disc.state_dict(),
            "rng": _rng_state(),
            "method": self.method,
            "round": self.round_idx,
            "phase": self.phase,
        }
        for name, opt in (("opt_policy", self.opt_policy), ("opt_decoder", self.opt_decoder), ("opt_disc", self.opt_disc)):
            out[name] = self._passthrough.get(name) or opt.state_dict()
        return out

    def resume_payload(self) -> dict:
        return {
            "fingerprint": self.fingerprint,
            "policy": self.policy.state_dict(),
            "policy_ema": self.policy_ema.state_dict(),
            "vq": self.vq.state_dict(),
            "vq_ema": self.vq_ema.state_dict(),
            "carried": self._carried(),
            "round_steps": self.state.round_steps,
            "log_rows": list(self.state.log_rows),
        }

    @property
    def local_decoders(self) -> bool:
        """Whether the ranks' decoders differ (grad_sync local, several ranks, decoder trained):
        then each rank >= 1 keeps its decoder-side state in its own resume shard."""
        return self.update_decoder and self.decoder_sync == "local" and self.dist.world_size > 1

    def decoder_shard(self) -> dict:
        """This rank's decoder-side state: trained decoder tensors, their EMA, the decoder optimizer."""
        vq, vq_ema = self.vq.state_dict(), self.vq_ema.state_dict()
        return {
            "fingerprint": self.fingerprint,
            "step": self.state.step,
            "rank": self.dist.rank,
            "vq": {n: vq[n] for n in self._dec_names},
            "vq_ema": {n: vq_ema[n] for n in self._dec_names},
            "opt_decoder": self.opt_decoder.state_dict(),
        }

    def _load_decoder_shard(self, shard: dict) -> None:
        for model, key in ((self.vq, "vq"), (self.vq_ema, "vq_ema")):
            model.load_state_dict({**model.state_dict(), **shard[key]})
        _load_optimizer(self.opt_decoder, shard["opt_decoder"])

    def remove_shards(self, keep_step: int | None = None) -> None:
        """Delete this rank's resume shards (all, or all but the one of `keep_step`)."""
        keep = None if keep_step is None else _shard_name(self.dist.rank, keep_step)
        for f in self.work_dir.glob(f"resume.rank{self.dist.rank}.step*.pt"):
            if f.name != keep:
                f.unlink(missing_ok=True)

    def _maybe_resume(self) -> None:
        """Resume from work_dir if resume.pt (and, for local decoders, this rank's shard of the same
        step) belongs to this round's inputs. Every rank resumes or none does."""
        path = self.work_dir / RESUME_FILE
        payload = torch.load(path, map_location="cpu", weights_only=False) if path.exists() else None
        ok = payload is not None and payload.get("fingerprint") == self.fingerprint
        if payload is not None and not ok:
            log.warning("ignoring %s: it belongs to other inputs (fingerprint %s != %s); starting the round afresh",
                        path, payload.get("fingerprint"), self.fingerprint)
        shard = None
        if ok and self.local_decoders and not self.dist.main:
            shard_path = self.work_dir / _shard_name(self.dist.rank, int(payload["carried"]["step"]))
            if shard_path.exists():
                shard = torch.load(shard_path, map_location="cpu", weights_only=False)
            ok = shard is not None and shard.get("fingerprint") == self.fingerprint
            if not ok:
                log.warning("rank %d: no resume shard %s for %s; starting the round afresh", self.dist.rank,
                            shard_path, path)
        if not self.dist.all_true(ok):
            return
        self.policy.load_state_dict(payload["policy"])
        self.policy_ema.load_state_dict(payload["policy_ema"])
        self.vq.load_state_dict(payload["vq"])
        self.vq_ema.load_state_dict(payload["vq_ema"])
        self._passthrough = {}
        self._load_carried(payload["carried"])
        if shard is not None:  # this rank's own decoder, EMA decoder and decoder optimizer
            self._load_decoder_shard(shard)
        self.state.round_steps = int(payload["round_steps"])
        self.state.log_rows = list(payload["log_rows"])
        log.info("resumed from %s: %d/%d steps of this round done (global step %d)", path,
                 self.state.round_steps, self.n_steps, self.state.step)

    def save_resume(self) -> None:
        """Rank 0 writes resume.pt; with local decoders each other rank first writes its shard.

        Order, so that a kill at any point leaves a consistent pair: the shards of step s are all on
        disk before resume.pt (atomically) names step s, and a rank deletes its older shards only
        after that, so the shards an older resume.pt names are still there until it is replaced."""
        step = self.state.step
        if self.local_decoders and not self.dist.main:
            save_torch(self.decoder_shard(), self.work_dir / _shard_name(self.dist.rank, step))
        self.dist.barrier()
        if self.dist.main:
            save_torch(self.resume_payload(), self.work_dir / RESUME_FILE)
            # what the round's driver, which never imports torch, says a rerun resumes from
            write_json({"global_step": step, "steps_done": self.state.round_steps, "steps": self.n_steps,
                        "written_at": time.strftime("%Y-%m-%d %H:%M:%S %Z")}, self.work_dir / RESUME_INFO)
            write_parquet(self.log_frame(), self.work_dir / LIVE_LOG, "train_log")
            log.info("checkpoint: %s (global step %d); training log so far: %s", self.work_dir / RESUME_FILE, step,
                     self.work_dir / LIVE_LOG)
        self.dist.barrier()
        if self.local_decoders and not self.dist.main:
            self.remove_shards(keep_step=step)

    # -- one step -------------------------------------------------------------------------------

    def train_step(self) -> dict:
        t0 = time.perf_counter()
        t = self.state.step
        tc, pc, dc, dsc = self.tcfg, self.tcfg["policy"], self.tcfg["decoder"], self.tcfg["discriminator"]
        G = self.G
        row = {c: float("nan") for c in LOG_COLUMNS}
        row.update(method=self.method, replicate=self.seed, round=self.round_idx, step=t, phase=self.phase)
        tau = tau_schedule(t, int(tc["nominal_steps"]), start=float(dc["tau_start"]), end=float(dc["tau_end"]),
                           frac=float(dc["tau_anneal_frac"]))
        row["tau"] = tau
        chunk = int(tc.get("rollout", {}).get("batch_size", 0) or 0)
        self.timings = {}
        mark = self._timer()

        # 1. rollouts
        batch = self.data.batch(t, self.dist.rank, self.dist.world_size, self.device)
        with torch.no_grad():
            # padded T5 rows raw (official training rollouts) unless train.rollout.zero_caption_padding
            cond = self.backbone.encode_prompts(batch.captions, zero_padding=self.zero_caption_padding)
        cond_g = cond.repeat_interleave(G)
        captions_g = [c for c in batch.captions for _ in range(G)]
        seeds = rollout_seeds(self.seed, t, batch.offset, len(batch.captions), G)
        with autocast(self.device, self.amp):
            codes = generate_rollouts(self.backbone, self.policy, cond_g, seeds, tc["rollout"], chunk=chunk)
        mark("rollouts")

        # 2. rewards from the EMA decoder (fp32, outside autocast as the official code)
        rewards, images_ema = score_rollouts(self.backbone, self.vq_ema, self.reward, codes, captions_g, chunk=chunk)
        all_r = self.dist.gather(rewards)
        check_finite(all_r.sum(), t, "reward")
        row["reward_mean"] = float(all_r.mean())
        row["reward_std"] = float(all_r.std()) if all_r.numel() > 1 else 0.0
        row["reward_best_mean"] = float(all_r.view(-1, G).max(dim=1).values.mean())

        sel_idx, weights = rank_weights(rewards, G, int(dc["rank_k"]), tau, weighting=dc.get("rank_weighting", "softmax"))
        soft = None
        if self.update_decoder and float(dc.get("lambda_lasc", 0.0)) > 0:
            # top-k non-CFG logits of the pre-update policy on the selected rollouts (official B.1 step 6)
            with torch.no_grad(), autocast(self.device, self.amp):
                sc = cond_g.index(sel_idx)
                logits = self.policy(sc.emb, sc.mask, codes[sel_idx], mask=pc.get("logprob_mask", "generation"))
            soft = topk_soft_codes(logits, int(dc.get("lasc_topk", 20)))
            del logits
        mark("rewards")

        # 3. policy update
        if self.update_policy:
            self._policy_update(row, t, rewards, cond_g, codes, chunk)
            mark("policy")

        # 4. discriminator + decoder update
        if self.update_decoder:
            self._decoder_update(row, t, batch, codes[sel_idx], [captions_g[i] for i in sel_idx.tolist()],
                                 weights, images_ema[sel_idx], soft)
            mark("decoder")

        row["step_time_s"] = time.perf_counter() - t0
        self._sync_row(row)
        self.state.step += 1
        self.state.round_steps += 1
        self.state.log_rows.append(row)
        return row

    def _timer(self):
        last = [time.perf_counter()]

        def mark(name: str) -> None:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            now = time.perf_counter()
            self.timings[name] = now - last[0]
            last[0] = now

        return mark

    def _sync_row(self, row: dict) -> None:
        keys = [c for c in LOG_COLUMNS if c.startswith(("loss_", "kl", "ratio_", "adaptive_"))]
        vals = self.dist.mean([row[k] for k in keys])
        row.update(zip(keys, vals))

    def _policy_update(self, row, t, rewards, cond_g, codes, chunk) -> None:
        pc = self.tcfg["policy"]
        adv = grpo_advantages(rewards, self.G, clip=float(pc["adv_clip"]), std_eps=float(pc["adv_std_eps"]),
                              uniform=bool(pc.get("uniform_advantages", False)))
        mask = pc.get("logprob_mask", "generation")
        ref_model = self.policy_ref if pc.get("reference", "fixed") == "fixed" else self.policy_ema
        n = codes.shape[0]
        accum = max(1, int(self.tcfg.get("grad_accum", 1)))
        if n % accum:
            raise ValueError(f"{n} rollouts per rank are not divisible by train.grad_accum={accum}")
        parts = [torch.arange(i, n, accum, device=codes.device) for i in range(accum)] if accum > 1 else [torch.arange(n)]
        logp_ref = [None] * len(parts)
        if float(pc["kl_coef"]) > 0:
            with torch.no_grad(), autocast(self.device, self.amp):
                logp_ref = [self.backbone.logprobs(ref_model, cond_g.index(ix), codes[ix], mask=mask).float()
                            for ix in parts]
        logp_old: list = [None] * len(parts)
        self.policy.eval()  # dropout off, as the official log-prob forwards
        for epoch in range(int(pc.get("ppo_epochs", 1))):
            self.opt_policy.zero_grad(set_to_none=True)
            tot = {"loss": 0.0, "pg": 0.0, "kl": 0.0, "ratio": 0.0}
            for k, ix in enumerate(parts):
                with autocast(self.device, self.amp):
                    logp = self.backbone.logprobs(self.policy, cond_g.index(ix), codes[ix], mask=mask).float()
                if logp_old[k] is None:  # "old" = the policy that sampled = the current one before any update
                    logp_old[k] = logp.detach()
                terms = policy_loss(logp, logp_old[k], logp_ref[k], adv[ix.to(adv.device)], clip_eps=float(pc["clip_eps"]),
                                    kl_coef=float(pc["kl_coef"]))
                check_finite(terms.loss, t, "loss_policy")
                (terms.loss / len(parts)).backward()
                tot["loss"] += float(terms.loss.detach()) / len(parts)
                tot["pg"] += float(terms.loss_pg.detach()) / len(parts)
                tot["kl"] += float(terms.kl.detach()) / len(parts)
                tot["ratio"] += float(terms.ratio_mean) / len(parts)
            self.dist.average_grads(self.policy_params)
            gn = torch.nn.utils.clip_grad_norm_(self.policy_params, float(pc["grad_clip"]))
            check_finite(gn, t, "grad_norm_policy")
            self.opt_policy.step()
            # the EMA counts optimizer steps, ppo_epochs per step, as the official (trainer.py:512-516)
            self.state.policy_steps += 1
            if self.state.policy_steps % int(pc["ema_every"]) == 0:
                ema_update(self.policy_ema, self.policy, float(pc["ema_decay"]))
        row.update(loss_policy=tot["loss"], loss_pg=tot["pg"], kl=tot["kl"], ratio_mean=tot["ratio"],
                   grad_norm_policy=float(gn))

    def _decoder_update(self, row, t, batch, sel_codes, sel_caps, weights, sel_ema, soft) -> None:
        dc, dsc = self.tcfg["decoder"], self.tcfg["discriminator"]
        disc_on = t >= int(dsc["start_step"])
        disc_w = float(dsc["weight"])
        bb, vq = self.backbone, self.vq
        sync_decoder = self.decoder_sync == "global" and self.dist.world_size > 1

        with autocast(self.device, self.amp):
            x_rec = decode_unclamped(bb, vq, batch.gt_codes).float()
        # discriminator step: real x vs the detached reconstruction of x's own codes
        self.disc.train()
        d_loss = discriminator_loss(self.disc, batch.images, x_rec, step=t, start_step=int(dsc["start_step"]), weight=disc_w)
        if d_loss is not None:
            check_finite(d_loss, t, "loss_disc")
            self.opt_disc.zero_grad(set_to_none=True)
            d_loss.backward()
            self.dist.average_grads(list(self.disc.parameters()))  # synchronised in both grad_sync modes
            gd = torch.nn.utils.clip_grad_norm_(self.disc.parameters(), float("inf"))
            self.opt_disc.step()
            row.update(loss_disc=_f(d_loss), grad_norm_disc=_f(gd))
        else:
            row["loss_disc"] = 0.0

        # decoder step (discriminator frozen)
        self.disc.requires_grad_(False)
        try:
            terms = {}
            rec = reconstruction_loss(batch.images, x_rec, self.perceptual, disc=self.disc, gan_on=disc_on,
                                      last_layer=decoder_last_layer(bb, vq), disc_weight=disc_w,
                                      lambda_rec=float(dc["lambda_rec"]),
                                      grad_reduce=self.dist.average if sync_decoder else None)
            terms["loss_rec"] = rec["loss"]
            row.update(loss_rec_l1=_f(rec["l1"]), loss_rec_perceptual=_f(rec["perceptual"]))
            if disc_on:
                row.update(loss_rec_gan=_f(rec["gan"]), adaptive_weight=_f(rec["adaptive_weight"]))
            with autocast(self.device, self.amp):
                x_hat = decode_unclamped(bb, vq, sel_codes).float().clamp(-1, 1)
            if disc_on and float(dc["lambda_gan"]) > 0:
                terms["loss_rank_gan"] = rank_gan_loss(self.disc, x_hat, weights, lambda_gan=float(dc["lambda_gan"]),
                                                       disc_weight=disc_w)
            if float(dc["lambda_consistency"]) > 0:
                terms["loss_consistency"] = consistency_loss(x_hat, sel_ema, self.perceptual,
                                                             lambda_c=float(dc["lambda_consistency"]))
            if float(dc["lambda_reward"]) > 0:
                r_hat = self.reward(x_hat, sel_caps)
                terms["loss_reward"] = reward_loss(r_hat, weights, lambda_d=float(dc["lambda_reward"]))
            if soft is not None:
                with autocast(self.device, self.amp):
                    x_soft = bb.decode_soft(vq, soft[0], soft[1],
                                            normalize_rows=self.lasc_codebook == "normalized").float()
                terms["loss_lasc"] = lasc_loss(x_soft, x_hat, lambda_lasc=float(dc["lambda_lasc"]))
            total = sum(terms.values())
            for name, v in terms.items():
                row[name] = check_finite(v, t, name)
            row["loss_decoder"] = check_finite(total, t, "loss_decoder")
            self.opt_decoder.zero_grad(set_to_none=True)
            total.backward()
        finally:
            self.disc.requires_grad_(True)
        if sync_decoder:
            self.dist.average_grads(self.dec_params)
        gn = torch.nn.utils.clip_grad_norm_(self.dec_params, float(dc["grad_clip"]))
        check_finite(gn, t, "grad_norm_decoder")
        self.opt_decoder.step()
        self.state.decoder_steps += 1
        ema_update(self.vq_ema, self.vq, float(dc["ema_decay"]))
        row["grad_norm_decoder"] = float(gn)

    # -- outputs --------------------------------------------------------------------------------

    def log_frame(self) -> pd.DataFrame:
        df = pd.DataFrame(self.state.log_rows, columns=LOG_COLUMNS)
        return df.astype({"replicate": "int32", "round": "int32", "step": "int64"})

    def write_outputs(self, out_dir, log_path) -> None:
        """Rank 0 writes the round's checkpoint (with grad_sync local: rank 0's decoder)."""
        if not self.dist.main:
            return
        bb = self.backbone
        write_parquet(self.log_frame(), log_path, "train_log")
        with atomic_path(out_dir, is_dir=True) as tmp:
            bb.save_policy(self.policy, tmp / "policy.pt")
            bb.save_vq(self.vq, tmp / "decoder.pt")
            bb.save_policy(self.policy_ema, tmp / "policy_ema.pt")
            bb.save_vq(self.vq_ema, tmp / "decoder_ema.pt")
            torch.save(self._carried(), tmp / "state.pt")
            write_json({"method": self.method, "round": self.round_idx, "phase": self.phase,
                        "global_step": self.state.step, "steps_this_round": self.state.round_steps,
                        "init": str(self.init_dir or "base"), "world_size": self.dist.world_size,
                        # which production models trained this round (read by tests and reports)
                        "reward": self.cfg["assets"]["reward"].get("kind", "open_clip"),
                        "perceptual": (self.cfg["assets"].get("perceptual") or {}).get("kind", "demo")},
                       tmp / "DONE")


def _summary(cfg: dict, runner: RoundRunner) -> str:
    t = cfg["train"]
    return json.dumps({
        "method": runner.method, "round": runner.round_idx, "phase": runner.phase, "device": str(runner.device),
        "precision": str(runner.amp or "fp32"), "world_size": runner.dist.world_size, "steps": runner.n_steps,
        "start_global_step": runner.state.step, "init": str(runner.init_dir or "base"),
        "prompts_per_step": t["prompts_per_step"], "group_size": t["group_size"], "train_images": len(runner.data),
        "policy": t["policy"], "decoder": t["decoder"], "discriminator": t["discriminator"], "rollout": t["rollout"],
        "reward": cfg["assets"]["reward"].get("kind"), "perceptual": (cfg["assets"].get("perceptual") or {}).get("kind"),
    }, default=str)


def _run_rank(cfg, method, round_idx, init_dir, tokens_path, work_dir, out_dir, log_path, d: Dist, device) -> None:
    runner = RoundRunner(cfg, method, round_idx, init_dir, tokens_path, work_dir, d, device)
    if d.main:
        log.info("round config: %s", _summary(cfg, runner))
    every = int(cfg["train"].get("checkpoint_every", 0) or 0)
    board = _tensorboard(runner.work_dir) if d.main and cfg["train"].get("tensorboard") else None
    bar = tqdm(total=runner.n_steps, initial=runner.state.round_steps, desc=f"{method} round {round_idx}",
               disable=not d.main, mininterval=5)
    while runner.state.round_steps < runner.n_steps:
        row = runner.train_step()
        bar.update(1)
        if d.main:
            log.info("step %d [%s] reward %.3f±%.3f best %.3f | pol %.4f kl %.4f | disc %.4f dec %.4f "
                     "(rec %.4f gan %.4f cons %.4f rew %.4f) | tau %.2f | gn pol %.3f dec %.3f | %.2fs %s",
                     row["step"], row["phase"], row["reward_mean"], row["reward_std"], row["reward_best_mean"],
                     row["loss_policy"], row["kl"], row["loss_disc"], row["loss_decoder"], row["loss_rec"],
                     row["loss_rank_gan"], row["loss_consistency"], row["loss_reward"], row["tau"],
                     row["grad_norm_policy"], row["grad_norm_decoder"], row["step_time_s"],
                     " ".join(f"{k} {v:.2f}s" for k, v in runner.timings.items()))
            if board is not None:
                _add_scalars(board, method, row)
        if every and runner.state.round_steps % every == 0 and runner.state.round_steps < runner.n_steps:
            runner.save_resume()
            if board is not None:
                board.flush()
    bar.close()
    if board is not None:
        board.close()
    runner.write_outputs(out_dir, log_path)
    d.barrier()
    runner.remove_shards()
    if d.main:
        (Path(work_dir) / RESUME_FILE).unlink(missing_ok=True)
        (Path(work_dir) / RESUME_INFO).unlink(missing_ok=True)
        (Path(work_dir) / LIVE_LOG).unlink(missing_ok=True)  # superseded by log_path
        log.info("round done: %s (global step %d)", out_dir, runner.state.step)


def _tensorboard(work_dir):
    """TensorBoard events of this round under work_dir/tensorboard (train.tensorboard)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:
        raise RuntimeError("train.tensorboard: true needs the tensorboard package "
                           "(pip install tensorboard, or pip install '.[tensorboard]')") from e
    path = Path(work_dir) / "tensorboard"
    log.info("TensorBoard events: %s", path)
    return SummaryWriter(log_dir=str(path))


def _add_scalars(board, method: str, row: dict) -> None:
    """One training-log row as TensorBoard scalars (its numbers, not its bookkeeping)."""
    for key, value in row.items():
        if key in ("step", "round", "replicate") or not isinstance(value, (int, float)) or not math.isfinite(value):
            continue
        board.add_scalar(f"{method}/{key}", float(value), global_step=int(row["step"]))


def _load_optimizer(opt: torch.optim.Optimizer, sd: dict) -> None:
    """Load a saved optimizer state; this round's lr and weight decay win over the saved ones."""
    hyper = [(g["lr"], g["weight_decay"]) for g in opt.param_groups]
    opt.load_state_dict(sd)
    for g, (lr, wd) in zip(opt.param_groups, hyper):
        g["lr"], g["weight_decay"] = lr, wd


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawned(rank, world_size, port, device_type, args) -> None:
    from ranke.runtime import require_cuda, setup_logging

    if rank == 0:
        setup_logging()
    torch.set_num_threads(max(1, torch.get_num_threads() // world_size))
    # The backend follows the device run_round resolved, never torch.cuda.is_available() alone: a
    # rank of a CUDA round that finds no GPU fails instead of joining a gloo group on the CPU.
    use_cuda = device_type == "cuda"
    if use_cuda:
        require_cuda(f"rank {rank}/{world_size} of a CUDA round needs device cuda:{rank}", index=rank)
    backend = "nccl" if use_cuda else "gloo"
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        device = torch.device("cuda", rank) if use_cuda else torch.device("cpu")
        if use_cuda:
            torch.cuda.set_device(device)
        _run_rank(*args, Dist(rank, world_size), device)
    finally:
        dist.destroy_process_group()


def run_round(cfg: dict, method: str, round_idx: int, init_dir: str | None, tokens_path, work_dir, out_dir,
              log_path) -> None:
    """Train one round and write `out_dir` (checkpoint directory) and `log_path` (train_log.parquet).

    cfg needs: seed, device, precision, image_size, assets (gpt, vq, text_encoder, reward,
    perceptual, coco_root), methods, rounds.steps, train. init_dir None/"base" = the base assets.
    """
    args = (cfg, method, round_idx, init_dir, str(tokens_path), str(work_dir), str(out_dir), str(log_path))
    world_size = int(cfg["train"].get("world_size", 1))
    # One device decision, before any rank exists: `device: cuda` without a usable GPU fails here
    # (naming the host, CUDA_VISIBLE_DEVICES, the build's CUDA and torch's reason), and the process
    # group's backend follows from it (nccl for CUDA, gloo for the CPU).
    device = resolve_device(cfg.get("device", "auto"))
    Path(work_dir).mkdir(parents=True, exist_ok=True)
    if world_size == 1:
        _run_rank(*args, Dist(), device)
        return
    if dist.is_available() and dist.is_initialized():  # ranks given from outside (submitit tasks)
        rank = dist.get_rank()
        backend = dist.get_backend()
        if (device.type == "cuda") != (backend == "nccl"):
            raise RuntimeError(f"round on device {device} but the process group uses {backend}")
        if device.type == "cuda":
            device = torch.device("cuda", torch.cuda.current_device())
        _run_rank(*args, Dist(rank, dist.get_world_size()), device)
        return
    import torch.multiprocessing as mp

    from ranke.runtime import require_cuda

    if device.type == "cuda":
        require_cuda(f"train.world_size={world_size} on device {cfg.get('device', 'auto')!r} needs one GPU per rank",
                     count=world_size)
    # CPU ranks are forked (no re-import of torch & co. per rank); CUDA needs fresh processes.
    mp.start_processes(_spawned, args=(world_size, _free_port(), device.type, args), nprocs=world_size, join=True,
                       start_method="spawn" if device.type == "cuda" else "fork")
