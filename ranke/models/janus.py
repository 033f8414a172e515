"""Janus-Pro backbone from a local directory, in either of the two published layouts.

Layouts of `assets.janus.path` (told apart by config.json, see `janus_layout`):
  * "transformers": a `JanusForConditionalGeneration` directory (e.g. the converted
    deepseek-community/Janus-Pro-1B), loaded with transformers' `from_pretrained`.
  * "original": DeepSeek's own layout (deepseek-ai/Janus-Pro-1B, `janus.models.MultiModalityCausalLM`,
    what the official RankE code loads): config.json with model_type "multi_modality" and the
    sub-configs language_config / vision_config / aligner_config / gen_vision_config /
    gen_aligner_config / gen_head_config, weights with the original key names, VLChatProcessor
    files. The generation path is built from transformers' Janus/Llama modules and the original
    weights are mapped onto them with ORIGINAL_KEY_TABLE (strict: every needed key, shapes
    checked), so both layouts run the very same modules and code below.

The same interface as `LlamaGenBackbone` (ranke/models/backbone.py), so sampling, the training
rounds and scoring do not know which backbone they run:

    text    the prompt encoder, None if not loaded: JanusPromptEncoder (transformers'
            JanusProcessor: chat template + tokenizer) or DeepSeekPromptEncoder (the original
            VLChatProcessor's "deepseek" SFT format on the directory's tokenizer files); both
            give the same token ids for the same tokenizer.
    policy  JanusPolicy: the generation path only -- the Llama trunk (with its text embedding
            table), `generation_embeddings`, `generation_aligner`, `generation_head`.
    vq      the JanusVQVAE (generation VQ).

What is left out of `policy` and why: the understanding tower (`vision_model`, `aligner`) never
sees an input during text-to-image generation, so it gets no gradient (the official RankE Janus
trainer optimises "all non-VQ parameters" and those two get no grads); the text `lm_head` is tied
to the text embedding table and never used for image tokens. Dropping them keeps deep copies of
the policy (KL reference, EMA) and its optimiser state to what is trained. For the original layout
they are not even built (their keys are recognised and skipped, see ORIGINAL_UNUSED_KEYS). The VQ
is a separate module so that copying/optimising the policy never touches it, and the decoder
co-evolution (`decoder_parameters`) sees only `post_quant_conv` + `decoder`.

Prompt formatting follows the official Janus sampler: one user turn, empty system prompt, the
SFT template's assistant prefix, then the image-start tag; batches are left-padded. The CFG
unconditional row is the same sequence with every token strictly between the first valid token
(BOS) and the final image-start tag replaced by the pad token (attended, as in the original).

Two upstream behaviours are replaced here on purpose:
  * `JanusVQVAE.encode` does a plain Euclidean nearest neighbour on raw latents; the original
    Janus (and LlamaGen) tokenizer l2-normalises both the `quant_conv` output and the codebook
    rows (cosine lookup). `tokenize` implements the original behaviour.
  * `JanusForConditionalGeneration.forward` returns text logits only; image-token logits come
    from `generation_head` on the trunk's hidden states, in our own KV-cached sampling loop
    (per-row seeded generators, which HF's `generate` cannot do).
"""

from __future__ import annotations

import copy
import inspect
import json
import logging
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ranke.io import atomic_path, save_torch
from ranke.sampling import sample_from_uniform, sampling_logprobs, per_row_uniforms

log = logging.getLogger("ranke.models.janus")

DTYPES = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float32": torch.float32,
          "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16}
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


# ----------------------------------------------------------------------------------------------
# Conditioning


@dataclass
class JanusCond:
    """Left-padded prompt token ids (each row ends with the image-start tag) + validity mask."""

    ids: torch.Tensor   # (B, T) long
    mask: torch.Tensor  # (B, T) bool, False on left padding

    def __len__(self) -> int:
        return self.ids.shape[0]

    @property
    def emb(self) -> torch.Tensor:
        """The conditioning tensor under Cond's name, so generic `policy(cond.emb, cond.mask, codes)`
        calls work with either backbone (for Janus it holds token ids, not features)."""
        return self.ids

    def repeat_interleave(self, g: int) -> "JanusCond":
        return JanusCond(self.ids.repeat_interleave(g, dim=0), self.mask.repeat_interleave(g, dim=0))

    def index(self, idx) -> "JanusCond":
        return JanusCond(self.ids[idx], self.mask[idx])

    def to(self, device) -> "JanusCond":
        return JanusCond(self.ids.to(device), self.mask.to(device))

    @staticmethod
    def cat(conds: Sequence["JanusCond"]) -> "JanusCond":
        """Concatenate batches, re-padding on the left to the longest (masked pads are never read)."""
        T = max(c.ids.shape[1] for c in conds)
        ids = [F.pad(c.ids, (T - c.ids.shape[1], 0), value=0) for c in conds]
        mask = [F.pad(c.mask, (T - c.mask.shape[1], 0), value=False) for c in conds]
        return JanusCond(torch.cat(ids), torch.cat(mask))


def unconditional_ids(ids: torch.Tensor, mask: torch.Tensor, pad_id: int) -> torch.Tensor:
    """The CFG null prompt: keep the first valid token and the final image-start tag, pad the rest.

    Same construction as the official sampler (`tokens[1:-1] = pad_id`), applied per row after
    left padding.
    """
    T = ids.shape[1]
    first = mask.long().argmax(dim=1, keepdim=True)  # first valid position per row
    pos = torch.arange(T, device=ids.device).unsqueeze(0)
    replace = (pos > first) & (pos < T - 1)
    return ids.masked_fill(replace, pad_id)


class JanusPromptEncoder:
    """Caption -> Janus image-generation prompt ids, with the model's own processor."""

    def __init__(self, processor, device):
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.device = torch.device(device)
        self.pad_id = self.tokenizer.pad_token_id
        self.boi_id = self.tokenizer.convert_tokens_to_ids(processor.image_start_token)
        if self.pad_id is None:
            raise ValueError("the Janus tokenizer has no pad token (needed for left padding and CFG)")

    def format(self, caption: str) -> str:
        messages = [{"role": "user", "content": [{"type": "text", "text": caption}]}]
        # The template's generation prompt is the empty assistant turn "<|Assistant|>:", exactly
        # the official sft format with an empty system prompt.
        return self.processor.apply_chat_template(messages, add_generation_prompt=True)

    def encode(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        prompts = [self.format(c) for c in captions]
        # generation_mode="image" appends the image-start tag; the tokenizer adds BOS.
        enc = self.processor(text=prompts, generation_mode="image", padding=True,
                             padding_side="left", return_tensors="pt")
        ids = enc["input_ids"].to(self.device)
        mask = enc["attention_mask"].to(self.device).bool()
        if not bool((ids[:, -1] == self.boi_id).all()):
            raise ValueError("Janus prompts must end with the image-start tag (left padding expected)")
        return ids, mask


# VLChatProcessor.__init__ defaults (janus/models/processing_vlm.py); processor_config.json may override them.
ORIGINAL_IMAGE_START_TAG = "<begin_of_image>"
ORIGINAL_PAD_TAG = "<｜▁pad▁｜>"


def deepseek_sft_prompt(caption: str) -> str:
    """The official text-to-image prompt before the image-start tag.

    VLChatProcessor.apply_sft_template_for_multi_turn_prompts (janus/models/processing_vlm.py) on
    [User: caption, Assistant: ""] with system_prompt="": each message is strip()ped, and
    Conversation.get_prompt for the "deepseek" template (janus/utils/conversation.py, SeparatorStyle
    .DeepSeek, sep "\\n\\n") emits nothing for the empty system prompt, then `role + ": " + message + sep`
    for a non-empty message and `role + ":"` for an empty one. The separator after an assistant
    message (sep2) never appears: the assistant turn is empty.

    For a non-empty caption this equals JANUS_CHAT_TEMPLATE (transformers' Janus template); for an
    empty caption the official format is "<|User|>:<|Assistant|>:" while the transformers template
    gives "<|User|>: \\n\\n<|Assistant|>:".
    """
    parts = []
    for role, message in (("<|User|>", caption.strip()), ("<|Assistant|>", "")):
        parts.append(f"{role}: {message}\n\n" if message else f"{role}:")
    return "".join(parts).strip()


class DeepSeekPromptEncoder:
    """Caption -> Janus image-generation prompt ids for an original-layout (VLChatProcessor) directory.

    Same interface and output as JanusPromptEncoder: `deepseek_sft_prompt(caption)` + the image-start
    tag, tokenised with BOS (the official sampler calls `processor.tokenizer.encode(full_prompt)`),
    left-padded with the VLChatProcessor pad id (`tokenizer.vocab.get(pad_tag)`, not the tokenizer's
    pad_token) -- janus/sample/sample_t2i_ddp_coco.py:janus_generate in the RankE release.
    """

    def __init__(self, tokenizer, device, *, image_start_tag: str = ORIGINAL_IMAGE_START_TAG,
                 pad_tag: str = ORIGINAL_PAD_TAG):
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        self.image_start_token = image_start_tag
        vocab = tokenizer.get_vocab()
        for what, tag in (("image-start tag", image_start_tag), ("pad tag", pad_tag)):
            if tag not in vocab:
                raise ValueError(f"the Janus tokenizer has no {what} {tag!r} (VLChatProcessor needs it)")
        self.boi_id = vocab[image_start_tag]
        self.pad_id = vocab[pad_tag]

    @classmethod
    def from_dir(cls, path, device) -> "DeepSeekPromptEncoder":
        """Tokenizer files + processor_config.json of an original-layout directory (offline)."""
        path = Path(path)
        pcfg = _read_json(path / "processor_config.json") if (path / "processor_config.json").exists() else {}
        fmt = pcfg.get("sft_format", "deepseek")
        if fmt != "deepseek":
            raise ValueError(f"{path / 'processor_config.json'}: sft_format {fmt!r}; only the 'deepseek' "
                             "template (the one every Janus-Pro release uses) is implemented")
        return cls(load_original_tokenizer(path), device,
                   image_start_tag=pcfg.get("image_start_tag", ORIGINAL_IMAGE_START_TAG),
                   pad_tag=pcfg.get("pad_tag", ORIGINAL_PAD_TAG))

    def format(self, caption: str) -> str:
        return deepseek_sft_prompt(caption)

    def encode(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        rows = [self.tokenizer.encode(self.format(c) + self.image_start_token) for c in captions]
        T = max(len(r) for r in rows)
        ids = torch.full((len(rows), T), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), T), dtype=torch.bool)
        for i, r in enumerate(rows):
            ids[i, T - len(r):] = torch.tensor(r, dtype=torch.long)
            mask[i, T - len(r):] = True
        if not bool((ids[:, -1] == self.boi_id).all()):
            raise ValueError("Janus prompts must end with the image-start tag (the tokenizer added a suffix?)")
        return ids.to(self.device), mask.to(self.device)


def load_original_tokenizer(path):
    """The tokenizer VLChatProcessor.from_pretrained builds from an original-layout directory, offline.

    VLChatProcessor.tokenizer_class = ("LlamaTokenizer", "LlamaTokenizerFast"), so transformers 4.x
    loads tokenizer.json into LlamaTokenizerFast whatever tokenizer_config.json names, and
    LlamaTokenizerFast.update_post_processor then replaces tokenizer.json's post-processor by
    "[BOS] $A [EOS]" with BOS iff add_bos_token (default True) and EOS iff add_eos_token (default
    False). The same is done here explicitly on the `tokenizers` object (transformers 5 has no
    separate Llama fast class with that behaviour).
    """
    from tokenizers import Tokenizer, processors
    from transformers import PreTrainedTokenizerFast

    path = Path(path)
    if not (path / "tokenizer.json").exists():
        raise FileNotFoundError(f"assets.janus: no tokenizer.json in {path} (original-layout prompt processor)")
    tcfg = _read_json(path / "tokenizer_config.json") if (path / "tokenizer_config.json").exists() else {}
    smap = _read_json(path / "special_tokens_map.json") if (path / "special_tokens_map.json").exists() else {}

    def special(name):
        v = smap.get(name, tcfg.get(name))
        return v.get("content") if isinstance(v, dict) else v

    bos, eos, pad = special("bos_token"), special("eos_token"), special("pad_token")
    tok = Tokenizer.from_file(str(path / "tokenizer.json"))
    add_bos, add_eos = bool(tcfg.get("add_bos_token", True)), bool(tcfg.get("add_eos_token", False))
    for flag, name, value in ((add_bos, "bos_token", bos), (add_eos, "eos_token", eos)):
        if flag and (value is None or tok.token_to_id(value) is None):
            raise ValueError(f"{path}: add_{name} is set but {name} {value!r} is not in tokenizer.json")
    single = ([f"{bos}:0"] if add_bos else []) + ["$A:0"] + ([f"{eos}:0"] if add_eos else [])
    pair = single + ([f"{bos}:1"] if add_bos else []) + ["$B:1"] + ([f"{eos}:1"] if add_eos else [])
    used = [t for flag, t in ((add_bos, bos), (add_eos, eos)) if flag]
    tok.post_processor = processors.TemplateProcessing(single=" ".join(single), pair=" ".join(pair),
                                                       special_tokens=[(t, tok.token_to_id(t)) for t in used])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos, pad_token=pad,
                                   padding_side="left")


def _read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None


# ----------------------------------------------------------------------------------------------
# The policy: Janus's image-generation path


def _cache_kwarg(model: nn.Module) -> str:
    # transformers >= 5 renamed `past_key_values` to `cache` (the old name is deprecated).
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _new_cache(config):
    from transformers import DynamicCache

    try:
        return DynamicCache(config=config)
    except TypeError:  # transformers 4.x
        return DynamicCache()


class JanusPolicy(nn.Module):
    """Llama trunk + image-token embedding/aligner/head. Submodule names = HF `model.*` names."""

    def __init__(self, language_model: nn.Module, generation_embeddings: nn.Module,
                 generation_aligner: nn.Module, generation_head: nn.Module):
        super().__init__()
        self.language_model = language_model
        self.generation_embeddings = generation_embeddings
        self.generation_aligner = generation_aligner
        self.generation_head = generation_head
        self._cache_kw = _cache_kwarg(language_model)
        self._grad_ckpt = False

    @property
    def dtype(self) -> torch.dtype:
        return self.generation_embeddings.weight.dtype

    def embed_text(self, ids: torch.Tensor) -> torch.Tensor:
        return self.language_model.get_input_embeddings()(ids)

    def embed_image(self, codes: torch.Tensor) -> torch.Tensor:
        return self.generation_aligner(self.generation_embeddings(codes))

    def image_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.generation_head(hidden)

    def trunk(self, inputs_embeds, attention_mask, position_ids, cache=None) -> torch.Tensor:
        """Final-norm hidden states of the Llama trunk; `cache` (if given) is updated in place."""
        kwargs = {self._cache_kw: cache, "use_cache": cache is not None}
        # transformers only checkpoints layers in train mode, while the rounds score log-probs in
        # eval mode (dropout off): switch the trunk to train mode for that forward. Numerically
        # the same, since Janus's Llama has attention dropout 0 (checked when enabling).
        ckpt = self._grad_ckpt and cache is None and torch.is_grad_enabled() and not self.language_model.training
        if ckpt:
            self.language_model.train()
        try:
            out = self.language_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask.long(),
                                      position_ids=position_ids, **kwargs)
        finally:
            if ckpt:
                self.language_model.train(False)
        return out.last_hidden_state

    def forward(self, ids: torch.Tensor, prompt_mask: torch.Tensor, codes: torch.Tensor, *,
                mask: str = "generation") -> torch.Tensor:
        """Teacher-forced image-token logits (B, L, V): position i predicts codes[:, i].

        Trunk on [prompt embeddings ; aligner(gen_embed(codes[:, :-1]))] with the prompt's padding
        mask and position ids = cumsum(mask) - 1, exactly as in sampling. The official Janus
        scorer uses this same causal mask, so "generation" and "ranke" coincide here.
        """
        if mask not in ("generation", "ranke"):
            raise ValueError(f"mask must be 'generation' or 'ranke', got {mask!r}")
        B, T = ids.shape
        L = codes.shape[1]
        x = torch.cat([self.embed_text(ids), self.embed_image(codes[:, :-1])], dim=1)
        attn = torch.cat([prompt_mask.long(), prompt_mask.new_ones(B, L - 1, dtype=torch.long)], dim=1)
        pos = (attn.cumsum(1) - 1).clamp(min=0)
        return self.image_logits(self.trunk(x, attn, pos)[:, T - 1:])

    def new_cache(self):
        return _new_cache(self.language_model.config)

    def enable_gradient_checkpointing(self) -> None:
        """Recompute each Llama layer in the backward pass of teacher-forced forwards."""
        if float(getattr(self.language_model.config, "attention_dropout", 0.0) or 0.0) != 0.0:
            raise ValueError("gradient checkpointing here runs the trunk in train mode: needs attention_dropout 0")
        lm = self.language_model
        if hasattr(lm, "activation_checkpointing_enable"):  # transformers >= 5 (the old name warns)
            lm.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self._grad_ckpt = True


# ----------------------------------------------------------------------------------------------
# The VQ: original (l2-normalised) lookup, differentiable decoding


def nearest_codes_cosine(z: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Original Janus/LlamaGen lookup: l2-normalise latents and codebook rows, nearest = max cosine.

    z (B, C, h, w), codebook (K, C) -> LongTensor (B, h*w), row-major (the AR order).
    """
    zf = F.normalize(z.float().flatten(2).transpose(1, 2), dim=-1)  # (B, h*w, C)
    cb = F.normalize(codebook.float(), dim=-1)
    return torch.einsum("bnc,kc->bnk", zf, cb).argmax(dim=-1)


def codes_to_latents(vq: nn.Module, codes: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(B, h*w) codes -> (B, C, h, w) l2-normalised codebook rows (as upstream decoding)."""
    cb = F.normalize(vq.quantize.embedding.weight, dim=-1)
    z = cb[codes.reshape(codes.shape[0], -1)]
    return z.view(codes.shape[0], grid[0], grid[1], -1).permute(0, 3, 1, 2).contiguous()


def decode_latents(vq: nn.Module, z: torch.Tensor) -> torch.Tensor:
    """post_quant_conv + decoder; differentiable w.r.t. both (output not clamped)."""
    return vq.decoder(vq.post_quant_conv(z))


# ----------------------------------------------------------------------------------------------
# Layouts on disk, and the original DeepSeek layout mapped onto transformers' modules

LAYOUTS = ("transformers", "original")
# The policy's submodules (JanusPolicy.__init__ order); with "vq" the parts ORIGINAL_KEY_TABLE fills.
POLICY_PARTS = ("language_model", "generation_embeddings", "generation_aligner", "generation_head")
# The codebook's key in each layout's weight files: it locates the file that identifies the VQ.
CODEBOOK_KEYS = {"transformers": "model.vqmodel.quantize.embedding.weight",
                 "original": "gen_vision_model.quantize.embedding.weight"}
VQ_KEY_PREFIXES = {"transformers": "model.vqmodel.", "original": "gen_vision_model."}


def janus_layout(path) -> str:
    """"transformers" or "original", from the directory's config.json.

    The original layout is what `MultiModalityConfig` (janus/models/modeling_vlm.py) reads:
    model_type "multi_modality", architectures ["MultiModalityCausalLM"]; the transformers layout
    is `JanusConfig` (model_type "janus", architectures ["JanusForConditionalGeneration"]).
    """
    cfg_file = Path(path) / "config.json"
    config = _read_json(cfg_file)
    archs = config.get("architectures") or []
    if config.get("model_type") == "multi_modality" or "MultiModalityCausalLM" in archs:
        return "original"
    if config.get("model_type") == "janus" or "JanusForConditionalGeneration" in archs:
        return "transformers"
    raise ValueError(f"{cfg_file}: not a Janus config (model_type {config.get('model_type')!r}, architectures "
                     f"{archs}); expected 'janus' (transformers JanusForConditionalGeneration) or "
                     "'multi_modality' (DeepSeek MultiModalityCausalLM)")


# One row per family of generation-path weights: (part, name inside that transformers module,
# the original key). Facts it encodes, all read upstream:
#  * janus/models/modeling_vlm.py MultiModalityCausalLM.__init__: `language_model` is a
#    LlamaForCausalLM (its LlamaModel under `.model`), `gen_vision_model` = VQ_16(), `gen_embed`
#    an nn.Embedding, `gen_aligner` an MlpProjector, `gen_head` a `vision_head`
#    (output_mlp_projector -> GELU -> vision_head).
#  * janus/models/projector.py MlpProjector("mlp_gelu"): nn.Sequential(Linear, GELU, Linear, GELU, ...),
#    so its Linear layers sit at indices 0, 2, 4, ... (transformers: fc1, hidden_layers.0, .1, ...).
#  * janus/models/vq_model.py Encoder/Decoder: `conv_blocks[i]` holds `res` / `attn` / `downsample`
#    (`upsample`), `mid` = [ResnetBlock, AttnBlock, ResnetBlock]; the decoder's conv_blocks are built
#    in reversed level order exactly like transformers' `up`, so indices map one to one.
#  * transformers src/transformers/models/janus/convert_janus_weights_to_hf.py MAPPINGS states the same
#    correspondences as regexes (and drops `quantize.codebook_used`).
_Repl = str | Callable[[re.Match], str]
ORIGINAL_KEY_TABLE: tuple[tuple[str, str, _Repl], ...] = (
    ("language_model", r"(.+)", r"language_model.model.\1"),
    ("generation_embeddings", r"weight", "gen_embed.weight"),
    ("generation_aligner", r"fc1\.(weight|bias)", r"gen_aligner.layers.0.\1"),
    ("generation_aligner", r"hidden_layers\.(\d+)\.(weight|bias)",
     lambda m: f"gen_aligner.layers.{2 * int(m[1]) + 2}.{m[2]}"),
    ("generation_head", r"proj_out\.(weight|bias)", r"gen_head.output_mlp_projector.\1"),
    ("generation_head", r"vision_head\.(weight|bias)", r"gen_head.vision_head.\1"),
    ("vq", r"(encoder|decoder)\.mid\.block_1\.(.+)", r"gen_vision_model.\1.mid.0.\2"),
    ("vq", r"(encoder|decoder)\.mid\.attn_1\.(.+)", r"gen_vision_model.\1.mid.1.\2"),
    ("vq", r"(encoder|decoder)\.mid\.block_2\.(.+)", r"gen_vision_model.\1.mid.2.\2"),
    ("vq", r"encoder\.down\.(\d+)\.block\.(\d+)\.(.+)", r"gen_vision_model.encoder.conv_blocks.\1.res.\2.\3"),
    ("vq", r"encoder\.down\.(\d+)\.attn\.(\d+)\.(.+)", r"gen_vision_model.encoder.conv_blocks.\1.attn.\2.\3"),
    ("vq", r"encoder\.down\.(\d+)\.downsample\.(.+)", r"gen_vision_model.encoder.conv_blocks.\1.downsample.\2"),
    ("vq", r"decoder\.up\.(\d+)\.block\.(\d+)\.(.+)", r"gen_vision_model.decoder.conv_blocks.\1.res.\2.\3"),
    ("vq", r"decoder\.up\.(\d+)\.attn\.(\d+)\.(.+)", r"gen_vision_model.decoder.conv_blocks.\1.attn.\2.\3"),
    ("vq", r"decoder\.up\.(\d+)\.upsample\.(.+)", r"gen_vision_model.decoder.conv_blocks.\1.upsample.\2"),
    ("vq", r"((?:encoder|decoder)\.(?:conv_in|norm_out|conv_out)\.(?:weight|bias))", r"gen_vision_model.\1"),
    ("vq", r"((?:quant_conv|post_quant_conv)\.(?:weight|bias))", r"gen_vision_model.\1"),
    ("vq", r"quantize\.embedding\.weight", "gen_vision_model.quantize.embedding.weight"),
)

# Original keys that are present in the released file and deliberately not loaded.
ORIGINAL_UNUSED_KEYS: tuple[tuple[str, str], ...] = (
    (r"vision_model\..+", "understanding tower (SigLIP ViT): never sees an input in text-to-image generation"),
    (r"aligner\..+", "understanding aligner (feeds the understanding tower's features to the LLM)"),
    (r"language_model\.lm_head\.weight", "text head: never used for image tokens"),
    (r"gen_vision_model\.quantize\.codebook_used", "VectorQuantizer(show_usage) usage counter buffer"),
    (r"language_model\.model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq",
     "RoPE frequencies saved by old transformers versions; recomputed from the config"),
)


def original_key(part: str, name: str) -> str:
    """The original-layout key of weight `name` of generation part `part` (ORIGINAL_KEY_TABLE)."""
    for p, pattern, repl in ORIGINAL_KEY_TABLE:
        if p == part and (m := re.fullmatch(pattern, name)):
            return repl(m) if callable(repl) else m.expand(repl)
    raise KeyError(f"ORIGINAL_KEY_TABLE has no row for {part}.{name}")


def _is_unused_original_key(key: str) -> bool:
    return any(re.fullmatch(pattern, key) for pattern, _ in ORIGINAL_UNUSED_KEYS)


def weight_files(path) -> tuple[Path, list[Path]]:
    """(the file that names the weights, the files holding them): a single file, or an index + its shards."""
    path = Path(path)
    for name in WEIGHT_FILES:
        f = path / name
        if f.exists():
            if name.endswith(".index.json"):
                shards = sorted(set(_read_json(f)["weight_map"].values()))
                return f, [path / s for s in shards]
            return f, [f]
    raise FileNotFoundError(f"assets.janus.path: no weights ({', '.join(WEIGHT_FILES)}) in {path}")


def read_weight_tensors(files: Sequence[Path]) -> dict[str, torch.Tensor]:
    """All tensors of safetensors / torch.save files, on CPU (torch files memory-mapped when possible)."""
    tensors: dict[str, torch.Tensor] = {}
    for f in files:
        if not f.exists():
            raise FileNotFoundError(f"Janus weights shard not found: {f}")
        if f.name.endswith(".safetensors"):
            from safetensors.torch import load_file

            part = load_file(str(f))
        else:
            try:  # mmap: the understanding tower we skip is never read into memory
                part = torch.load(f, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError:  # legacy (non-zip) torch.save format cannot be memory-mapped
                part = torch.load(f, map_location="cpu", weights_only=True)
        if not isinstance(part, dict) or not all(isinstance(v, torch.Tensor) for v in part.values()):
            raise ValueError(f"{f}: expected a flat state dict of tensors")
        tensors.update(part)
    return tensors


def vq_weights_file(index_or_file: Path, layout: str) -> Path:
    """The file whose sha256 identifies the VQ weights the codes depend on.

    A single weights file is that file. For a sharded directory it is the shard that holds the
    codebook (the index file itself would not change when the weights do); the encoder and
    quant_conv, which tokenize also uses, are expected in the same shard (warned about otherwise).
    """
    if not index_or_file.name.endswith(".index.json"):
        return index_or_file
    weight_map = _read_json(index_or_file)["weight_map"]
    codebook = CODEBOOK_KEYS[layout]
    if codebook not in weight_map:
        raise ValueError(f"{index_or_file}: weight_map has no {codebook!r} (the VQ codebook)")
    prefix = VQ_KEY_PREFIXES[layout]
    tokenize_keys = tuple(prefix + p for p in ("encoder.", "quant_conv.", "quantize."))
    shards = sorted({s for k, s in weight_map.items() if k.startswith(tokenize_keys)})
    if len(shards) > 1:
        log.warning("%s: the VQ encoder/codebook span shards %s; the tokens record the codebook's shard only",
                    index_or_file, shards)
    return index_or_file.parent / weight_map[codebook]


def _original_vq_config(config: dict, tensors: dict, weights_file: Path, hidden: int):
    """JanusVQVAEConfig equivalent to the original VQ + generation adapters.

    The original builds its VQ as `VQ_16()` with no arguments (modeling_vlm.py
    MultiModalityCausalLM.__init__ calls `gen_vision_cls()`), so config.json does not describe
    it: the geometry is read off the weights, which for the released file gives exactly
    vq_model.py's ModelArgs/Encoder defaults (ch 128, ch_mult [1, 1, 2, 2, 4], 2 res blocks,
    z_channels 256, codebook 16384 x 8) = JanusVQVAEConfig's defaults. The grid follows
    convert_janus_weights_to_hf.py: num_patches = vision_config.params.image_size / 16.
    """
    from transformers import JanusVQVAEConfig

    def sub(name):
        if not isinstance(config.get(name), dict):
            raise ValueError(f"original Janus config.json has no {name}")
        return config[name]

    gen_vision, gen_aligner, gen_head = sub("gen_vision_config"), sub("gen_aligner_config"), sub("gen_head_config")
    if gen_vision.get("cls") != "VQ-16":
        raise ValueError(f"gen_vision_config.cls {gen_vision.get('cls')!r}: only 'VQ-16' exists in "
                         "janus/models/vq_model.py")
    ga = gen_aligner.get("params", {})
    if gen_aligner.get("cls") != "MlpProjector" or ga.get("projector_type") != "mlp_gelu":
        raise ValueError(f"gen_aligner_config {gen_aligner.get('cls')!r}/{ga.get('projector_type')!r}: only an "
                         "'mlp_gelu' MlpProjector maps onto transformers' JanusVQVAEAlignerMLP")
    gh = gen_head.get("params", {})
    if gen_head.get("cls") != "vision_head":
        raise ValueError(f"gen_head_config.cls {gen_head.get('cls')!r}: expected 'vision_head'")
    # transformers' aligner output, head input and head width are all one `projection_dim`
    widths = {"gen_aligner n_embed": ga.get("n_embed"), "gen_head n_embed": gh.get("n_embed"),
              "gen_head image_token_embed": gh.get("image_token_embed")}
    if any(w != hidden for w in widths.values()):
        raise ValueError(f"original Janus config: {widths} must all equal the LLM hidden size {hidden} "
                         "(transformers' generation aligner/head have a single width)")

    p = "gen_vision_model."

    def tensor(key):
        if key not in tensors:
            raise ValueError(f"{weights_file}: missing key {key!r} (needed to read the VQ geometry)")
        return tensors[key]

    base = tensor(p + "encoder.conv_in.weight").shape[0]
    level_re = re.compile(re.escape(p) + r"encoder\.conv_blocks\.(\d+)\.")
    levels = sorted({int(m[1]) for k in tensors if (m := level_re.match(k))})
    if levels != list(range(len(levels))) or not levels:
        raise ValueError(f"{weights_file}: VQ encoder levels {levels} are not 0..n-1")
    res_re = re.compile(re.escape(p) + r"encoder\.conv_blocks\.0\.res\.(\d+)\.")
    num_res_blocks = len({int(m[1]) for k in tensors if (m := res_re.match(k))})
    channels = [tensor(f"{p}encoder.conv_blocks.{i}.res.0.conv1.weight").shape[0] for i in levels]
    if any(c % base for c in channels):
        raise ValueError(f"{weights_file}: VQ level widths {channels} are not multiples of conv_in's {base}")
    num_embeddings, embed_dim = tensor(p + "quantize.embedding.weight").shape
    gv = gen_vision.get("params", {})
    if (gv.get("image_token_size"), gv.get("n_embed")) != (num_embeddings, embed_dim):
        raise ValueError(f"gen_vision_config.params {gv} does not match the codebook {num_embeddings} x {embed_dim}")
    if ga.get("input_dim") != embed_dim:
        raise ValueError(f"gen_aligner_config input_dim {ga.get('input_dim')} != codebook dim {embed_dim}")
    image_size = (config.get("vision_config") or {}).get("params", {}).get("image_size")
    downsample = 2 ** (len(levels) - 1)
    if not isinstance(image_size, int) or image_size % downsample:
        raise ValueError(f"vision_config.params.image_size {image_size!r} must be a multiple of the VQ "
                         f"downsampling {downsample}")
    return JanusVQVAEConfig(
        embed_dim=embed_dim, num_embeddings=num_embeddings,
        latent_channels=tensor(p + "encoder.conv_out.weight").shape[0], base_channels=base,
        channel_multiplier=[c // base for c in channels], num_res_blocks=num_res_blocks,
        num_patches=image_size // downsample, projection_dim=hidden, image_token_embed_dim=hidden,
        num_hidden_layers=int(ga.get("depth", 1)), hidden_act="gelu")  # MlpProjector / vision_head: nn.GELU()


def _original_text_config(config: dict, attn_implementation: str):
    """LlamaConfig(**language_config), as MultiModalityConfig.__init__ builds it (modeling_vlm.py).

    Fields absent from language_config take LlamaConfig's defaults in both (rms_norm_eps 1e-6,
    rope_theta 1e4, silu). pad_token_id stays as language_config has it (normally absent, so the
    embedding has no padding_idx -- as in the original; the converted transformers config sets it).
    """
    from transformers import LlamaConfig

    lang = config.get("language_config")
    if not isinstance(lang, dict):
        raise ValueError("original Janus config.json has no language_config")
    kwargs = {k: v for k, v in lang.items() if k not in ("model_type", "torch_dtype", "dtype", "architectures")}
    return LlamaConfig(**kwargs, attn_implementation=attn_implementation)


def build_original_parts(config: dict, tensors: dict, weights_file: Path, *, dtype: torch.dtype,
                         attn_implementation: str = "sdpa") -> dict[str, nn.Module]:
    """The generation path of an original-layout checkpoint as transformers modules (POLICY_PARTS + "vq").

    Modules are built on the meta device (no random init, no second copy of the weights) and
    receive the original tensors through ORIGINAL_KEY_TABLE with `load_state_dict(strict, assign)`.
    Strict: every key the modules need must be in `tensors` with the module's shape, and every
    other key must be one of ORIGINAL_UNUSED_KEYS; errors name `weights_file` and the first keys.
    """
    from transformers import LlamaModel
    from transformers.models.janus.modeling_janus import JanusVQVAE, JanusVQVAEAlignerMLP, JanusVQVAEHead

    text_config = _original_text_config(config, attn_implementation)
    vq_config = _original_vq_config(config, tensors, weights_file, text_config.hidden_size)
    with torch.device("meta"):
        parts: dict[str, nn.Module] = {
            "language_model": LlamaModel(text_config),
            "generation_embeddings": nn.Embedding(vq_config.num_embeddings, vq_config.embed_dim),
            "generation_aligner": JanusVQVAEAlignerMLP(vq_config),
            "generation_head": JanusVQVAEHead(vq_config),
            "vq": JanusVQVAE(vq_config),
        }
    wanted = {(part, name): (original_key(part, name), t.shape)
              for part, module in parts.items() for name, t in module.state_dict().items()}
    needed = {key for key, _ in wanted.values()}

    def first(keys, n=5):
        keys = sorted(keys)
        return ", ".join(keys[:n]) + (f" (+{len(keys) - n} more)" if len(keys) > n else "")

    missing = [key for key, _ in wanted.values() if key not in tensors]
    unexpected = [k for k in tensors if k not in needed and not _is_unused_original_key(k)]
    if missing or unexpected:
        msg = [f"{weights_file}: does not match the original Janus layout (MultiModalityCausalLM)"]
        if missing:
            msg.append(f"missing {len(missing)} of the {len(needed)} keys the generation path needs: {first(missing)}")
        if unexpected:
            msg.append(f"{len(unexpected)} unexpected keys: {first(unexpected)}")
        raise ValueError("; ".join(msg))
    bad = [f"{key} {tuple(tensors[key].shape)} (expected {tuple(shape)})"
           for key, shape in wanted.values() if tensors[key].shape != shape]
    if bad:
        raise ValueError(f"{weights_file}: {len(bad)} tensors have the wrong shape for config.json: {first(bad, 3)}")

    for part, module in parts.items():
        state = {name: tensors[original_key(part, name)] for name in module.state_dict()}
        # copy: own the memory (not the file's mmap) and take the requested dtype
        state = {k: v.to(dtype=dtype if v.is_floating_point() else v.dtype, copy=True) for k, v in state.items()}
        module.load_state_dict(state, strict=True, assign=True)
    # The one non-persistent buffer (RoPE inverse frequencies) is computed in __init__: rebuild it on CPU.
    trunk = parts["language_model"]
    trunk.rotary_emb = type(trunk.rotary_emb)(config=text_config)
    left = [f"{part}.{n}" for part, m in parts.items() for n, t in (*m.named_parameters(), *m.named_buffers())
            if t.is_meta]
    if left:
        raise RuntimeError(f"original Janus loading left tensors uninitialised: {left[:5]}")
    return parts


def original_state_dict(parts: dict[str, nn.Module]) -> dict[str, torch.Tensor]:
    """The inverse of build_original_parts: generation-path weights under their original keys."""
    return {original_key(part, name): t for part, module in parts.items() for name, t in module.state_dict().items()}


def _original_pad_id(path: Path) -> int | None:
    """VLChatProcessor.pad_id (the pad tag's id) from the directory's tokenizer.json, if it has one."""
    if not (path / "tokenizer.json").exists():
        return None
    from tokenizers import Tokenizer

    pcfg = _read_json(path / "processor_config.json") if (path / "processor_config.json").exists() else {}
    return Tokenizer.from_file(str(path / "tokenizer.json")).token_to_id(pcfg.get("pad_tag", ORIGINAL_PAD_TAG))


def _processor_layout(path: Path, default: str) -> str:
    """Which prompt processor a directory holds: processor_config.json's processor_class decides."""
    cls_name = None
    if (path / "processor_config.json").exists():
        cls_name = _read_json(path / "processor_config.json").get("processor_class")
    return {"VLChatProcessor": "original", "JanusProcessor": "transformers"}.get(cls_name, default)


# ----------------------------------------------------------------------------------------------
# The backbone


class JanusBackbone:
    """Janus-Pro behind the backbone interface used by generate / train / score."""

    name = "janus"

    def __init__(self, policy: JanusPolicy, vq: nn.Module, text: JanusPromptEncoder | DeepSeekPromptEncoder | None,
                 *, grid: tuple[int, int], image_size: int, pad_id: int | None, source: str, device,
                 layout: str = "transformers"):
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        self.policy = policy
        self.vq = vq
        self.text = text
        self.grid = grid
        self.image_size = image_size
        self.codebook_size = vq.quantize.embedding.weight.shape[0]
        self.pad_id = pad_id
        self.source = source
        self.layout = layout
        self.vq_file: str | None = None
        self.device = torch.device(device)

    @property
    def seq_len(self) -> int:
        return self.grid[0] * self.grid[1]

    # ---- loading ------------------------------------------------------------------------------

    @classmethod
    def from_config(cls, assets: dict, image_size: int, device, *, load_text: bool = True) -> "JanusBackbone":
        """Load `assets.janus.path` with local files only, in either layout (see `janus_layout`).

        transformers layout: `JanusForConditionalGeneration.from_pretrained`. Original DeepSeek
        layout: `build_original_parts` (the understanding tower is not loaded). The prompt
        processor comes from `assets.janus.processor` (default: the model directory); its
        processor_config.json decides JanusProcessor vs. the original VLChatProcessor format.
        """
        jcfg = assets.get("janus")
        if not jcfg or not jcfg.get("path"):
            raise KeyError("backbone 'janus' needs config key assets.janus.path")
        path = Path(jcfg["path"])
        if not path.is_dir():
            raise FileNotFoundError(f"assets.janus.path: Janus model directory not found: {path}")
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"assets.janus.path: no config.json in {path}")
        weights_index, weights = weight_files(path)
        dtype_name = jcfg.get("dtype", "bfloat16")
        if dtype_name not in DTYPES:
            raise ValueError(f"assets.janus.dtype must be one of {sorted(DTYPES)}, got {dtype_name!r}")
        dtype = DTYPES[dtype_name]
        attn = jcfg.get("attn_implementation", "sdpa")
        device = torch.device(device)
        layout = janus_layout(path)

        if layout == "transformers":
            from transformers import JanusForConditionalGeneration

            kwargs = {"local_files_only": True, "attn_implementation": attn}
            kwargs["dtype" if _transformers_major() >= 5 else "torch_dtype"] = dtype
            model = JanusForConditionalGeneration.from_pretrained(path, **kwargs)
            backbone = cls.from_model(model, image_size, device, source=str(path))
        else:
            parts = build_original_parts(_read_json(path / "config.json"), read_weight_tensors(weights),
                                         weights_index, dtype=dtype, attn_implementation=attn)
            policy = JanusPolicy(*(parts[p] for p in POLICY_PARTS))
            pad_id = parts["language_model"].config.pad_token_id
            backbone = cls._assemble(policy, parts["vq"], image_size, device, source=str(path), layout=layout,
                                     pad_id=pad_id if pad_id is not None else _original_pad_id(path))
        # the file that identifies the VQ weights (tokens record its sha256)
        backbone.vq_file = str(vq_weights_file(weights_index, layout))

        if load_text:
            proc_path = Path(jcfg.get("processor") or path)
            if _processor_layout(proc_path, layout) == "original":
                backbone.text = DeepSeekPromptEncoder.from_dir(proc_path, device)
            else:
                from transformers import JanusProcessor

                if not any((proc_path / f).exists() for f in ("processor_config.json", "tokenizer_config.json")):
                    raise FileNotFoundError(f"assets.janus.processor: no processor/tokenizer files in {proc_path}")
                processor = JanusProcessor.from_pretrained(proc_path, local_files_only=True)
                backbone.text = JanusPromptEncoder(processor, device)
            if backbone.pad_id is not None and backbone.text.pad_id != backbone.pad_id:
                log.warning("tokenizer pad id %s != model pad id %s; using the tokenizer's (CFG null prompt)",
                            backbone.text.pad_id, backbone.pad_id)
            backbone.pad_id = backbone.text.pad_id
        log.info("Janus backbone from %s (%s layout): %s, grid %s, codebook %d, policy %.1fM params, VQ %.1fM params",
                 path, layout, dtype, backbone.grid, backbone.codebook_size,
                 sum(p.numel() for p in backbone.policy.parameters()) / 1e6,
                 sum(p.numel() for p in backbone.vq.parameters()) / 1e6)
        return backbone

    @classmethod
    def from_model(cls, model, image_size: int, device, *, source: str = "<in-memory>") -> "JanusBackbone":
        """Split a JanusForConditionalGeneration into policy + VQ (the rest is dropped)."""
        m = model.model
        n_tokens = m.vision_model.config.num_image_tokens
        grid = tuple(m.vqmodel.quantize.quant_state_dims)
        if n_tokens != grid[0] * grid[1]:
            raise ValueError(f"Janus config: num_image_tokens {n_tokens} != grid {grid}")
        policy = JanusPolicy(m.language_model, m.generation_embeddings, m.generation_aligner, m.generation_head)
        return cls._assemble(policy, m.vqmodel, image_size, device, pad_id=model.config.text_config.pad_token_id,
                             source=source, layout="transformers")

    @classmethod
    def _assemble(cls, policy: JanusPolicy, vq: nn.Module, image_size: int, device, *, pad_id, source: str,
                  layout: str) -> "JanusBackbone":
        grid = tuple(vq.quantize.quant_state_dims)
        downsample = 2 ** (len(vq.config.channel_multiplier) - 1)
        if grid[0] * downsample != image_size or grid[1] * downsample != image_size:
            raise ValueError(f"image_size {image_size} does not match the Janus VQ: grid {grid} x "
                             f"downsample {downsample} = {grid[0] * downsample} px")
        policy = policy.to(device)
        policy.requires_grad_(True)
        vq = vq.to(device)
        freeze_vq_except_decoder(vq)
        return cls(policy, vq, None, grid=grid, image_size=image_size, pad_id=pad_id, source=source,
                   device=device, layout=layout)

    # ---- prompts / sampling / log-probs --------------------------------------------------------

    def encode_prompts(self, captions: list[str], *, zero_padding: bool = True) -> JanusCond:
        """Left-padded prompt ids + mask of the captions.

        `zero_padding` is accepted for the backbone interface (LlamaGenBackbone.encode_prompts zeroes
        the T5 features of padded caption positions) and ignored: Janus prompts are token ids, and
        padded positions are masked out (or, in the CFG null prompt, are the pad token itself).
        """
        if self.text is None:
            raise RuntimeError("backbone loaded with load_text=False: no prompt processor")
        return JanusCond(*self.text.encode(list(captions)))

    @torch.no_grad()
    def sample(self, policy: JanusPolicy, cond: JanusCond, *, seeds, cfg_scale: float = 1.0,
               temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
               return_logprobs: bool = False):
        """KV-cached image-token sampling -> codes (B, h*w) [, log-probs (B, h*w)].

        CFG doubles the batch (conditional rows, then unconditional rows) and mixes logits as
        l_u + s (l_c - l_u) before temperature / top-k / top-p (temperature 0 = greedy). Row i
        draws from its own generator seeded with seeds[i], so a sample does not depend on the batch.
        `return_logprobs` gives log-probs of the drawn tokens under the distribution actually
        sampled from (equal to `logprobs` when cfg_scale=1, temperature=1, no filtering).
        """
        device = self.device
        ids, mask = cond.ids.to(device), cond.mask.to(device)
        B, L = ids.shape[0], self.seq_len
        if isinstance(seeds, torch.Tensor):
            seeds = seeds.tolist()
        if len(seeds) != B:
            raise ValueError(f"got {len(seeds)} seeds for {B} prompts (one seed per row)")
        if temperature < 0 or top_k < 0 or not (0.0 < top_p <= 1.0):
            raise ValueError(f"need temperature >= 0, top_k >= 0, 0 < top_p <= 1; got "
                             f"{temperature}, {top_k}, {top_p}")
        # Same seeding as ranke.sampling: row i's L uniforms come from its own CPU generator and
        # pick tokens by inverse CDF, so a row never depends on the rest of the batch.
        u = per_row_uniforms(seeds, L).to(device)
        greedy = temperature == 0
        temp = temperature if temperature > 0 else 1.0
        use_cfg = cfg_scale != 1.0
        if use_cfg:
            ids = torch.cat([ids, unconditional_ids(ids, mask, self.pad_id)])
            mask = torch.cat([mask, mask])

        attn = mask.long()
        pos = (attn.cumsum(1) - 1).clamp(min=0)
        next_pos = attn.sum(1, keepdim=True)  # position of the first image token
        cache = policy.new_cache()
        hidden = policy.trunk(policy.embed_text(ids), attn, pos, cache)[:, -1]

        codes = torch.empty(B, L, dtype=torch.long, device=device)
        logps = torch.empty(B, L, dtype=torch.float32, device=device) if return_logprobs else None
        for t in range(L):
            lp = sampling_logprobs(policy.image_logits(hidden), B, cfg_scale, temp, top_k, top_p)
            nxt = lp.argmax(-1) if greedy else sample_from_uniform(lp, u[:, t])
            codes[:, t] = nxt
            if logps is not None:
                logps[:, t] = lp.gather(1, nxt[:, None]).squeeze(1)
            if t == L - 1:
                break
            step_in = torch.cat([nxt, nxt]) if use_cfg else nxt
            attn = torch.cat([attn, attn.new_ones(attn.shape[0], 1)], dim=1)
            hidden = policy.trunk(policy.embed_image(step_in[:, None]), attn, next_pos, cache)[:, -1]
            next_pos = next_pos + 1
        return (codes, logps) if return_logprobs else codes

    def logprobs(self, policy: JanusPolicy, cond: JanusCond, codes: torch.Tensor, *,
                 mask: str = "generation") -> torch.Tensor:
        """Teacher-forced log p(codes | prompt) per token, (B, h*w), differentiable (no CFG).

        See JanusPolicy.forward for the inputs, mask and positions (identical to sampling).
        """
        device = self.device
        ids, pmask = cond.ids.to(device), cond.mask.to(device)
        codes = codes.to(device).long()
        if codes.shape != (ids.shape[0], self.seq_len):
            raise ValueError(f"codes must be (B, {self.seq_len}), got {tuple(codes.shape)}")
        logits = policy(ids, pmask, codes, mask=mask).float()
        return logits.log_softmax(-1).gather(-1, codes[..., None]).squeeze(-1)

    # ---- VQ --------------------------------------------------------------------------------------

    @torch.no_grad()
    def tokenize(self, vq: nn.Module, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] (B, 3, H, W) at `image_size` -> codes (B, h*w), original cosine lookup."""
        if images.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(f"tokenize expects {self.image_size}px images, got {tuple(images.shape[-2:])}")
        dtype = vq.quant_conv.weight.dtype
        z = vq.quant_conv(vq.encoder(images.to(self.device, dtype)))
        return nearest_codes_cosine(z, vq.quantize.embedding.weight)

    def decode(self, vq: nn.Module, codes: torch.Tensor) -> torch.Tensor:
        """Codes (B, h*w) -> images (B, 3, H, W) in [-1, 1], clamped; differentiable w.r.t. the decoder."""
        return self.decode_unclamped(vq, codes).clamp(-1, 1)

    def decode_unclamped(self, vq: nn.Module, codes: torch.Tensor) -> torch.Tensor:
        """As `decode` without the clamp (the GT-reconstruction loss uses raw decoder output)."""
        z = codes_to_latents(vq, codes.to(self.device), self.grid)
        return decode_latents(vq, z).float()

    def decode_soft(self, vq: nn.Module, topk_probs: torch.Tensor, topk_idx: torch.Tensor, *,
                    normalize_rows: bool = True) -> torch.Tensor:
        """LASC: decode the probability-weighted mix of the top-k codebook rows.

        topk_probs, topk_idx (B, h*w, k); probabilities renormalised over the k entries, as in
        LlamaGenBackbone.decode_soft. normalize_rows=True mixes the l2-normalised rows that hard
        decoding uses; False mixes the raw `quantize.embedding.weight` rows, as the official RankE
        LASC term does (autoregressive/post_train/trainer.py:719-720: F.embedding on the raw
        codebook, einsum with the softmaxed top-k logits). Returns images (B, 3, H, W) clamped to [-1, 1].
        """
        if topk_probs.shape != topk_idx.shape or topk_idx.dim() != 3:
            raise ValueError(f"topk_probs and topk_idx must both be (B, L, k), got {tuple(topk_probs.shape)} "
                             f"and {tuple(topk_idx.shape)}")
        rows = vq.quantize.embedding.weight
        cb = F.normalize(rows, dim=-1) if normalize_rows else rows
        w = topk_probs.float() / topk_probs.float().sum(-1, keepdim=True).clamp_min(1e-12)
        z = (w.to(cb.dtype).unsqueeze(-1) * cb[topk_idx.long().to(cb.device)]).sum(-2)  # (B, L, C)
        B = z.shape[0]
        z = z.view(B, self.grid[0], self.grid[1], -1).permute(0, 3, 1, 2).contiguous()
        return decode_latents(vq, z).float().clamp(-1, 1)

    def decoder_parameters(self, vq: nn.Module) -> list[nn.Parameter]:
        """post_quant_conv + decoder; puts the VQ in train mode (JanusVQVAE.__init__ calls eval())."""
        vq.train()
        params = [*vq.post_quant_conv.parameters(), *vq.decoder.parameters()]
        for p in params:
            p.requires_grad_(True)
        return params

    # ---- checkpoints -----------------------------------------------------------------------------

    def save_policy(self, policy: JanusPolicy, path) -> None:
        # policy/VQ key names are transformers' in both layouts, so these files load into either
        save_torch({"model": policy.state_dict(), "config": {"backbone": "janus", "source": self.source,
                                                          "layout": self.layout, "part": "policy"}}, path)

    def save_vq(self, vq: nn.Module, path) -> None:
        save_torch({"model": vq.state_dict(), "config": {"backbone": "janus", "source": self.source,
                                                      "layout": self.layout, "part": "vq"}}, path)

    def load_policy(self, path) -> JanusPolicy:
        """A copy of the base policy with weights from `path` (strict)."""
        policy = copy.deepcopy(self.policy)
        policy.load_state_dict(_read_state_dict(path, "policy"), strict=True)
        return policy

    def load_vq(self, path) -> nn.Module:
        vq = copy.deepcopy(self.vq)
        vq.load_state_dict(_read_state_dict(path, "vq"), strict=True)
        freeze_vq_except_decoder(vq)
        return vq

    def export_pretrained(self, policy: JanusPolicy, vq: nn.Module, out_dir) -> None:
        """Write a full model directory in the source's layout, with `policy`/`vq` weights swapped in.

        For use outside this workflow (HF / official samplers). transformers layout: reloads the
        base from `source` and saves it with save_pretrained (+ its processor). Original layout:
        the source's weights with the generation path replaced through ORIGINAL_KEY_TABLE (the
        understanding tower, text head etc. kept as they are), written as pytorch_model.bin next to
        copies of the source's other files (config, tokenizer, processor), which is what
        `MultiModalityCausalLM.from_pretrained` / VLChatProcessor read.
        """
        if self.layout == "original":
            self._export_original(policy, vq, Path(out_dir))
            return
        from transformers import JanusForConditionalGeneration, JanusProcessor

        kwargs = {"dtype" if _transformers_major() >= 5 else "torch_dtype": policy.dtype}
        model = JanusForConditionalGeneration.from_pretrained(self.source, local_files_only=True, **kwargs)
        # policy keys are JanusModel's own names; the understanding tower keeps its base weights
        model.model.load_state_dict({**model.model.state_dict(), **policy.state_dict(),
                                     **{f"vqmodel.{k}": v for k, v in vq.state_dict().items()}})
        with atomic_path(out_dir, is_dir=True) as tmp:
            model.save_pretrained(tmp)
            JanusProcessor.from_pretrained(self.source, local_files_only=True).save_pretrained(tmp)

    def _export_original(self, policy: JanusPolicy, vq: nn.Module, out_dir: Path) -> None:
        source = Path(self.source)
        index, files = weight_files(source)
        tensors = read_weight_tensors(files)
        parts = {**{name: getattr(policy, name) for name in POLICY_PARTS}, "vq": vq}
        for key, t in original_state_dict(parts).items():
            if key not in tensors:
                raise ValueError(f"{index}: has no {key!r} to replace (was the source directory changed?)")
            # trained parts keep their own dtype: casting back to the base file's dtype would lose precision
            tensors[key] = t.detach().to("cpu").contiguous().clone()
        skip = {index.name, *(f.name for f in files)}
        with atomic_path(out_dir, is_dir=True) as tmp:
            torch.save(tensors, tmp / "pytorch_model.bin")
            for f in sorted(source.iterdir()):
                if f.is_file() and f.name not in skip and f.name not in WEIGHT_FILES:
                    shutil.copy2(f, tmp / f.name)


def freeze_vq_except_decoder(vq: nn.Module) -> None:
    """Encoder, quant_conv and codebook never train; post_quant_conv + decoder may."""
    vq.requires_grad_(False)
    vq.post_quant_conv.requires_grad_(True)
    vq.decoder.requires_grad_(True)


def _read_state_dict(path, what: str) -> dict:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"Janus {what} checkpoint not found: {path}")
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        obj = obj["model"]
    return obj


def _transformers_major() -> int:
    import transformers

    return int(transformers.__version__.split(".")[0])


# ----------------------------------------------------------------------------------------------
# A tiny random-init Janus directory (tests and smoke runs; nothing is downloaded)

TINY_SPECIAL_TOKENS = ["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜▁pad▁｜>", "<|User|>",
                       "<|Assistant|>", "<image_placeholder>", "<begin_of_image>", "<end_of_image>"]

# The chat template transformers' Janus conversion script installs (DeepSeek "deepseek" sft format).
JANUS_CHAT_TEMPLATE = (
    "{%set seps=['\n\n','<\uff5cend\u2581of\u2581sentence\uff5c>']%}{%set i=0%}"
    "{%for message in messages%}{%if message['role']|lower=='user'%}<|User|>: "
    "{%elif message['role']|lower=='assistant'%}<|Assistant|>:{%if not (loop.last and not "
    "add_generation_prompt and message['content'][0]['type']=='text' and message['content'][0]['text']=='')%} "
    "{%endif%}{%else%}{{message['role'].capitalize()}}: {%endif%}{%for content in message['content']%}"
    "{%if content['type']=='image'%}{%if not loop.first%}{{'\n'}}{%endif%}<image_placeholder>"
    "{%if not loop.last%}{{'\n'}}{%endif%}{%elif content['type']=='text'%}{%set text=content['text']%}"
    "{%if loop.first%}{%set text=text.lstrip()%}{%endif%}{%if loop.last%}{%set text=text.rstrip()%}{%endif%}"
    "{%if not loop.first and message['content'][loop.index0-1]['type']=='text'%}{{' '+text}}{%else%}"
    "{{text}}{%endif%}{%endif%}{%endfor%}{%if not loop.last or add_generation_prompt%}"
    "{%if message['role']|lower=='user'%}{{seps[0]}}{%else%}{{seps[1]}}{%endif%}{%endif%}{%endfor%}"
    "{%if add_generation_prompt%}<|Assistant|>:{%endif%}"
)


def _tiny_janus(image_size: int, codebook_size: int, hidden: int, corpus: list[str] | None, seed: int):
    """(tokenizers.Tokenizer, JanusProcessor, JanusForConditionalGeneration): the tiny random model.

    Sizes obey the Janus constraints: GroupNorm(32) channels, decoder upsampling 2^4 = patch 16,
    num_image_tokens = (image_size / 16)^2, VQ projection/embed dims = text hidden size. The same
    arguments give the same tokenizer and weights, whichever layout they are then written in.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import (JanusConfig, JanusForConditionalGeneration, JanusImageProcessor,
                              JanusProcessor, JanusVisionConfig, JanusVQVAEConfig, LlamaConfig,
                              PreTrainedTokenizerFast)

    corpus = corpus or ["a red circle on the left", "a blue square at the top", "a green triangle",
                        "a photo of a cat on a sofa", "two dogs playing in the park"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=TINY_SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer)
    bos = TINY_SPECIAL_TOKENS[0]
    tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A $B",
                                                       special_tokens=[(bos, tok.token_to_id(bos))])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=bos, eos_token=TINY_SPECIAL_TOKENS[1], pad_token=TINY_SPECIAL_TOKENS[2],
        padding_side="left",
        extra_special_tokens={"image_token": "<image_placeholder>", "boi_token": "<begin_of_image>",
                              "eoi_token": "<end_of_image>"})
    grid = image_size // 16
    processor = JanusProcessor(image_processor=JanusImageProcessor(size={"height": image_size, "width": image_size}),
                               tokenizer=tokenizer, chat_template=JANUS_CHAT_TEMPLATE, num_image_tokens=grid * grid)

    text = LlamaConfig(hidden_size=hidden, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
                       vocab_size=tok.get_vocab_size(), max_position_embeddings=256,
                       pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                       eos_token_id=tokenizer.eos_token_id)
    vision = JanusVisionConfig(image_size=image_size, patch_size=16, num_image_tokens=grid * grid,
                               hidden_size=32, num_hidden_layers=1, num_attention_heads=4, projection_dim=hidden)
    vq = JanusVQVAEConfig(embed_dim=8, num_embeddings=codebook_size, latent_channels=32, base_channels=32,
                          channel_multiplier=[1, 1, 1, 1, 1], num_res_blocks=1, projection_dim=hidden,
                          image_token_embed_dim=hidden)
    config = JanusConfig(text_config=text, vision_config=vision, vq_config=vq,
                         image_token_id=tokenizer.convert_tokens_to_ids("<image_placeholder>"))
    with torch.random.fork_rng(devices=[]):  # seeded weights without touching the caller's RNG
        torch.manual_seed(seed)
        model = JanusForConditionalGeneration(config)
    return tok, processor, model


def write_tiny_janus(out_dir, *, image_size: int = 64, codebook_size: int = 64, hidden: int = 32,
                     corpus: list[str] | None = None, seed: int = 0) -> Path:
    """Write a random-init Janus (save_pretrained) + an offline-trained byte-level BPE processor.

    The transformers layout; `write_standin_janus_original` with the same arguments writes the
    same weights and tokenizer in the original DeepSeek layout.
    """
    out_dir = Path(out_dir)
    _, processor, model = _tiny_janus(image_size, codebook_size, hidden, corpus, seed)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir


def _original_understanding_tensors(vision_model: nn.Module, aligner: nn.Module, seed: int) -> dict:
    """The understanding tower + aligner under their original keys, from the transformers modules.

    The original tower is timm's VisionTransformer (janus/models/siglip_vit.py, global_pool "map",
    qkv_bias, no class token) inside CLIPVisionTower (`vision_model.vision_tower.*`); the aligner an
    MlpProjector. The correspondences are convert_janus_weights_to_hf.py's MAPPINGS read backwards
    (blocks <-> encoder.layers, fused qkv <-> q/k/v_proj, pos_embed (1, N, D) <-> position_embedding
    (N, D), norm <-> post_layernorm); the attention-pool head, which the conversion drops, gets
    random weights of timm AttentionPoolLatent's shapes.
    """
    sd = {k: v.detach().clone() for k, v in vision_model.state_dict().items()}
    t = "vision_model.vision_tower."
    out = {t + "patch_embed.proj.weight": sd["embeddings.patch_embedding.weight"],
           t + "patch_embed.proj.bias": sd["embeddings.patch_embedding.bias"],
           t + "pos_embed": sd["embeddings.position_embedding.weight"][None],
           t + "norm.weight": sd["post_layernorm.weight"], t + "norm.bias": sd["post_layernorm.bias"]}
    renames = (("layer_norm1", "norm1"), ("layer_norm2", "norm2"), ("mlp.fc1", "mlp.fc1"), ("mlp.fc2", "mlp.fc2"),
               ("self_attn.projection_layer", "attn.proj"))
    for i in range(len(vision_model.encoder.layers)):
        src, dst = f"encoder.layers.{i}.", f"{t}blocks.{i}."
        for p in ("weight", "bias"):
            for a, b in renames:
                out[f"{dst}{b}.{p}"] = sd[f"{src}{a}.{p}"]
            out[f"{dst}attn.qkv.{p}"] = torch.cat([sd[f"{src}self_attn.{x}_proj.{p}"] for x in "qkv"])
    D = vision_model.config.hidden_size
    H = int(D * vision_model.config.mlp_ratio)
    pool = {"latent": (1, 1, D), "q.weight": (D, D), "q.bias": (D,), "kv.weight": (2 * D, D), "kv.bias": (2 * D,),
            "proj.weight": (D, D), "proj.bias": (D,), "norm.weight": (D,), "norm.bias": (D,),
            "mlp.fc1.weight": (H, D), "mlp.fc1.bias": (H,), "mlp.fc2.weight": (D, H), "mlp.fc2.bias": (D,)}
    g = torch.Generator().manual_seed(seed)
    out.update({f"{t}attn_pool.{k}": torch.randn(shape, generator=g) * 0.02 for k, shape in pool.items()})
    a = {k: v.detach().clone() for k, v in aligner.state_dict().items()}
    for p in ("weight", "bias"):
        out[f"aligner.layers.0.{p}"] = a[f"fc1.{p}"]
        for j in range(len(aligner.hidden_layers)):
            out[f"aligner.layers.{2 * j + 2}.{p}"] = a[f"hidden_layers.{j}.{p}"]
    return out


def write_standin_janus_original(out_dir, *, image_size: int = 64, codebook_size: int = 64, hidden: int = 32,
                                 corpus: list[str] | None = None, seed: int = 0) -> Path:
    """Write a tiny random Janus in the original DeepSeek layout (deepseek-ai/Janus-Pro-1B's files).

    config.json with MultiModalityConfig's sub-configs and field names (janus/models/modeling_vlm.py),
    pytorch_model.bin with MultiModalityCausalLM's key names -- including the understanding tower,
    the text head and the codebook usage buffer, as the released file has them -- and the
    VLChatProcessor files (tokenizer.json, tokenizer_config.json, special_tokens_map.json,
    processor_config.json, preprocessor_config.json). Same weights and tokenizer as
    `write_tiny_janus` with the same arguments. Written atomically.

    It is a stand-in for this project's loader: the official `janus` package could not load it,
    since it hard-codes the VQ (VQ_16(): 128 base channels) and the SigLIP-L tower's sizes.
    """
    out_dir = Path(out_dir)
    tok, processor, model = _tiny_janus(image_size, codebook_size, hidden, corpus, seed)
    m = model.model
    parts = {**{name: getattr(m, name) for name in POLICY_PARTS}, "vq": m.vqmodel}
    tensors = {k: v.detach().clone() for k, v in original_state_dict(parts).items()}
    tensors.update(_original_understanding_tensors(m.vision_model, m.aligner, seed))
    # LlamaForCausalLM's own (untied) text head, and VectorQuantizer's usage buffer (zeros(65536))
    tensors["language_model.lm_head.weight"] = model.lm_head.weight.detach().clone()
    tensors["gen_vision_model.quantize.codebook_used"] = torch.zeros(65536)

    text_cfg = model.config.text_config
    vis_cfg = model.config.vision_config
    embed_dim = model.config.vq_config.embed_dim
    config = {
        "architectures": ["MultiModalityCausalLM"],
        "model_type": "multi_modality",
        "torch_dtype": "float32",
        "vision_config": {"cls": "CLIPVisionTower", "model_type": "vision",
                          "params": {"image_size": image_size, "model_name": "siglip_large_patch16_384",
                                     "select_feature": "same", "select_layer": -1}},
        "aligner_config": {"cls": "MlpProjector", "model_type": "aligner",
                           "params": {"depth": vis_cfg.depth, "input_dim": vis_cfg.hidden_size,
                                      "n_embed": text_cfg.hidden_size, "projector_type": "mlp_gelu"}},
        "gen_vision_config": {"cls": "VQ-16", "model_type": "gen_vision",
                              "params": {"image_token_size": codebook_size, "n_embed": embed_dim}},
        "gen_aligner_config": {"cls": "MlpProjector", "model_type": "gen_aligner",
                               "params": {"depth": model.config.vq_config.num_hidden_layers, "input_dim": embed_dim,
                                          "n_embed": text_cfg.hidden_size, "projector_type": "mlp_gelu"}},
        "gen_head_config": {"cls": "vision_head", "model_type": "gen_head",
                            "params": {"image_token_embed": text_cfg.hidden_size, "image_token_size": codebook_size,
                                       "n_embed": text_cfg.hidden_size}},
        # the fields the released language_config has; the rest are LlamaConfig defaults
        "language_config": {"hidden_size": text_cfg.hidden_size, "intermediate_size": text_cfg.intermediate_size,
                            "max_position_embeddings": text_cfg.max_position_embeddings, "model_type": "llama",
                            "num_attention_heads": text_cfg.num_attention_heads,
                            "num_hidden_layers": text_cfg.num_hidden_layers,
                            "num_key_value_heads": text_cfg.num_key_value_heads, "torch_dtype": "float32",
                            "vocab_size": text_cfg.vocab_size},
    }
    bos, eos, pad = TINY_SPECIAL_TOKENS[:3]
    special_tokens_map = {"additional_special_tokens": TINY_SPECIAL_TOKENS[3:], "bos_token": bos,
                          "eos_token": eos, "pad_token": pad}
    tokenizer_config = {"add_bos_token": True, "add_eos_token": False, "bos_token": bos, "eos_token": eos,
                        "pad_token": pad, "clean_up_tokenization_spaces": False, "legacy": True,
                        "model_max_length": 16384, "tokenizer_class": "LlamaTokenizerFast", "unk_token": None,
                        "use_default_system_prompt": False}
    # VLChatProcessor.__init__ arguments and VLMImageProcessor's (processing_vlm.py, image_processing_vlm.py)
    processor_config = {"add_special_token": False, "ignore_id": -100, "image_tag": "<image_placeholder>",
                        "mask_prompt": True, "num_image_tokens": processor.num_image_tokens,
                        "processor_class": "VLChatProcessor", "sft_format": "deepseek"}
    preprocessor_config = {"background_color": [127, 127, 127], "do_normalize": True, "image_mean": [0.5, 0.5, 0.5],
                           "image_processor_type": "VLMImageProcessor", "image_size": image_size,
                           "image_std": [0.5, 0.5, 0.5], "min_size": 14, "processor_class": "VLChatProcessor",
                           "rescale_factor": 1 / 255}
    with atomic_path(out_dir, is_dir=True) as tmp:
        torch.save(tensors, tmp / "pytorch_model.bin")
        tok.save(str(tmp / "tokenizer.json"))
        for name, obj in (("config.json", config), ("special_tokens_map.json", special_tokens_map),
                          ("tokenizer_config.json", tokenizer_config), ("processor_config.json", processor_config),
                          ("preprocessor_config.json", preprocessor_config)):
            (tmp / name).write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return out_dir
