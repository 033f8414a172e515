"""T5 text encoder loaded from a local directory, and a tiny random-init T5 for the demo and tests.

Real studies point `assets.text_encoder.path` at a local copy of google/flan-t5-xl (the encoder
weights and tokenizer files, as written by save_pretrained); nothing is ever downloaded.
`make_tiny_t5` writes a small random T5 encoder plus a word-level tokenizer trained on the given
texts, in the same layout, so the demo and tests go through the very same loading path.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

log = logging.getLogger("ranke.models.text")

PADDINGS = ("right", "left")


def left_pad(emb: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded (emb, mask) -> left-padded: the real tokens moved to the end (upstream sampler).

    Row with n real tokens: new[j] = old[(j + n) % T], so the T - n padding rows come first.
    """
    t = mask.shape[1]
    n = mask.long().sum(1, keepdim=True)
    idx = (torch.arange(t, device=mask.device)[None, :] + n) % t
    emb = emb.gather(1, idx[..., None].expand(-1, -1, emb.shape[-1]))
    return emb, mask.gather(1, idx)


class TextEncoder:
    """T5EncoderModel + AutoTokenizer from `path`; encode() -> (emb float32, mask bool)."""

    def __init__(
        self,
        path: str | os.PathLike,
        max_length: int = 120,
        padding: str = "right",
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        clean_captions: bool = False,
    ):
        from transformers import AutoTokenizer, T5EncoderModel

        path = Path(path)
        if not (path / "config.json").exists():
            raise FileNotFoundError(
                f"T5 text encoder directory not found or incomplete (no config.json): {path} "
                f"(config key assets.text_encoder.path; expected a save_pretrained directory)"
            )
        if padding not in PADDINGS:
            raise ValueError(f"padding must be one of {PADDINGS}, got {padding!r}")
        self.path, self.max_length, self.padding = path, int(max_length), padding
        # the official T5 input is the caption cleaned twice (ranke.models.caption_cleaning); the
        # CLIP score and reward keep the raw caption, so the cleaning lives here and nowhere else
        self.clean_captions = bool(clean_captions)
        self.device = torch.device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.tokenizer.padding_side = "right"  # left padding is done on the features (see left_pad)
        self.model = T5EncoderModel.from_pretrained(path, local_files_only=True, dtype=dtype)
        self.model.to(self.device).eval().requires_grad_(False)
        self.dim = int(self.model.config.d_model)
        log.info("text encoder %s: d_model %d, max_length %d, padding %s, caption cleaning %s", path, self.dim,
                 self.max_length, padding, "on" if self.clean_captions else "off")

    @torch.no_grad()
    def encode(self, captions: list[str], *, zero_padding: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """(emb (B, T, D) float32, mask (B, T) bool) of the captions, T = max_length.

        zero_padding=True zeroes the encoder outputs at padded positions, as the official evaluation
        sampler does (RankE autoregressive/sample/sample_t2i_ddp.py:185); False keeps T5's raw
        outputs there, as the official training rollouts do (trainer.py:393-398 through
        T5Embedder.get_text_embeddings, no mask multiply). Padded keys are masked for every query,
        so the raw rows only reach the model through a padded position's own residual stream.
        Left padding moves the padded rows, raw or zero, in front of the real tokens.
        """
        if isinstance(captions, str):
            raise TypeError("encode expects a list of captions, got a single string")
        if self.clean_captions:
            from ranke.models.caption_cleaning import t5_caption

            captions = [t5_caption(c) for c in captions]
        tok = self.tokenizer(
            list(captions),
            max_length=self.max_length,
            padding="max_length",
            truncation=True,
            return_tensors="pt",
        )
        ids = tok["input_ids"].to(self.device)
        mask = tok["attention_mask"].to(self.device).bool()
        emb = self.model(input_ids=ids, attention_mask=mask.long()).last_hidden_state.float()
        if zero_padding:
            emb = emb * mask[..., None]
        if self.padding == "left":
            emb, mask = left_pad(emb, mask)
        return emb, mask

    __call__ = encode


def make_tiny_t5(
    out_dir: str | os.PathLike,
    vocab_texts: list[str],
    d_model: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    d_ff: int = 128,
    seed: int = 0,
) -> Path:
    """Write a random-init T5 encoder + a word-level tokenizer (trained on vocab_texts) to out_dir.

    Special tokens follow T5: <pad>=0, </s>=1 (appended to every caption), <unk>=2. Words are
    lower-cased and split on whitespace and punctuation. Written atomically as one directory.
    """
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from tokenizers.trainers import WordLevelTrainer
    from transformers import PreTrainedTokenizerFast, T5Config, T5EncoderModel

    from ranke.io import atomic_path

    if d_model % num_heads:
        raise ValueError(f"d_model {d_model} is not divisible by num_heads {num_heads}")
    specials = ["<pad>", "</s>", "<unk>"]
    tok = Tokenizer(WordLevel(unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])
    tok.train_from_iterator(list(vocab_texts), WordLevelTrainer(special_tokens=specials, min_frequency=1))
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", padding_side="right"
    )

    config = T5Config(
        vocab_size=tok.get_vocab_size(),
        d_model=d_model,
        d_kv=d_model // num_heads,
        d_ff=d_ff,
        num_layers=num_layers,
        num_heads=num_heads,
        feed_forward_proj="gated-gelu",  # FLAN-T5's FFN
        dropout_rate=0.0,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = T5EncoderModel(config).eval()
    out_dir = Path(out_dir)
    with atomic_path(out_dir, is_dir=True) as tmp:
        model.save_pretrained(tmp)
        fast.save_pretrained(tmp)
    log.info("tiny T5 written to %s (vocab %d, d_model %d)", out_dir, config.vocab_size, d_model)
    return out_dir
