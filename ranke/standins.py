"""`python -m ranke standins --study S --out DIR`: every asset a study names, offline, in its real format.

No machine of this project can download weights or datasets, so the real path (COCO JPEGs,
FLAN-T5, the CLIP reward and score models, Inception, LPIPS-VGG, LlamaGen / Janus checkpoints) is
proven with stand-ins: seeded random weights written in exactly the on-disk layout that the
production loaders read, by the same libraries that write the real files
(`save_pretrained`, TorchScript, torch.save of the training scripts' dictionaries, JPEG).
Architectures are the real families at small width and depth so that the whole DAG runs on a CPU.
What is under test is formats, loaders, shapes, conventions and the DAG, not quality.

Written under DIR:

    coco2014/{train2014,val2014}/COCO_<split>2014_<12-digit id>.jpg   real COCO sizes and modes
    coco2014/annotations/captions_{train,val}2014.json              the full COCO caption schema
    RankE/evaluations/t2i/coco_captions.csv                         (if the study names it) the
                                                                    release's prompt file layout
    llamagen/vq_ds16_t2i.pt, t2i_XL_stage1_256.pt                   LlamaGen training-script dicts
    google/flan-t5-xl/                                              T5ForConditionalGeneration,
                                                                    sharded safetensors + index,
                                                                    spiece.model + tokenizer files
    clip/ViT-B-32.pt                                                OpenAI CLIP TorchScript archive
    clip-vit-large-patch14/                                         transformers CLIPModel + the real
                                                                    CLIP BPE tokenizer + processor
    torch-fidelity/weights-inception-2015-12-05-6726825d.pth        torch-fidelity Inception
    lpips/vgg.pth, torchvision/vgg16-397923af.pth                   LPIPS heads + torchvision VGG16
    Janus-Pro-1B/                                                   (Janus study) the original DeepSeek
                                                                    MultiModalityCausalLM layout
    overlay.yaml                                                    config overlay for the study

`overlay.yaml` points every asset of the study at these files and overrides only sizes and
counts (architecture widths, image size, prompts, rounds, steps, batch sizes, world size) plus
what a CPU run needs (device cpu, the local submitit executor). Run the study with

    snakemake --cores 2 --configfile <study.yaml> DIR/overlay.yaml

Formats and what they reproduce (each a production trap a unit test could not see):
* COCO JPEGs: 640x480, 480x640, 500x375, 427x640, ... (the GT transform's rounding), grayscale
  (mode L) and CMYK JPEGs, one with an EXIF orientation tag; captions of real length with
  capitals, trailing spaces, punctuation and non-ASCII letters; five captions per image.
* LlamaGen files: what the upstream training scripts save, `{"model", "optimizer", "steps",
  "args"}` (+ `"discriminator"`, `"optimizer_disc"` for the VQ), `args` an argparse.Namespace, so
  the loader's non-tensor fallback runs; the state dicts have the upstream key names, including
  `quantize.codebook_used`. Whether the released files still carry the optimizer entries is not
  known here; a loader that reads this superset reads the subset.
* FLAN-T5: the hub repo holds the whole encoder-decoder (`T5ForConditionalGeneration`), sharded,
  with a SentencePiece model; the pipeline loads only its encoder.
* The reward's tokenizer is the real CLIP BPE (vocab.json / merges.txt built from the merges file
  open_clip ships), so its token ids equal the real tokenizer's.
* The torchvision VGG16 file holds `features.*` only: the real one also has the 102M-parameter
  `classifier.*`, which LPIPS never reads (the loader ignores extra keys); writing it would cost
  0.5 GB per stand-in set.
"""

from __future__ import annotations

import argparse
import io as _io
import json
import logging
import math
import os
import zlib
from argparse import Namespace
from pathlib import Path

import numpy as np
import yaml
from PIL import Image, ImageDraw, ImageFilter

from ranke.io import atomic_path, write_text

log = logging.getLogger("ranke.standins")

# ----------------------------------------------------------------------------------------------
# Sizes: the real families, small (what the overlay sets)

IMAGE_SIZE = 64  # VQ-16: a 4x4 code grid
LLAMAGEN_VQ_ARCH = {"codebook_size": 16384, "codebook_embed_dim": 8, "codebook_l2_norm": True, "ch": 32,
                    "ch_mult": [1, 1, 2, 2, 4], "z_channels": 32, "num_res_blocks": 1}
T5_SIZES = {"d_model": 64, "d_kv": 16, "d_ff": 128, "num_layers": 2, "num_decoder_layers": 2, "num_heads": 4,
            "vocab_size": 32128}
LLAMAGEN_GPT_ARCH = {"preset": None, "dim": 64, "n_layer": 2, "n_head": 4, "caption_dim": T5_SIZES["d_model"]}
HF_CLIP_SIZES = {"text": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4},
                 "vision": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                            "num_attention_heads": 4},
                 "projection_dim": 64}
N_TRAIN, N_VAL = 16, 12

# (width, height, how the file is stored): real COCO 2014 sizes and the modes PIL meets in it
IMAGE_KINDS = [
    (640, 480, "RGB"), (480, 640, "RGB"), (500, 375, "RGB"), (427, 640, "RGB"), (640, 427, "RGB"),
    (640, 480, "L"), (612, 612, "RGB"), (640, 480, "CMYK"), (640, 480, "EXIF-rotated"), (375, 500, "RGB"),
    (640, 360, "RGB"), (640, 512, "L"),
]

# ----------------------------------------------------------------------------------------------
# COCO 2014 tree

_SUBJECTS = ["A man", "A woman", "Two people", "A young boy", "A little girl", "A group of people", "A dog",
             "A black cat", "A brown horse", "Several sheep", "A red double decker bus", "A white plate",
             "An elephant", "A giraffe", "A person", "A surfer", "A skateboarder", "A baseball player"]
_ACTIONS = ["riding a wave on top of a surfboard", "sitting on a bench next to a tree",
            "standing in the middle of a busy street", "eating a slice of pizza at a table",
            "holding an umbrella in the rain", "walking across a grassy field", "looking out of a window",
            "playing with a frisbee in the park", "parked on the side of the road",
            "laying on a bed with a laptop", "flying a kite on the beach", "grazing in a fenced pasture"]
_EXTRAS = ["", "", " in front of a café", " near the Müller bakery", " with broccoli, rice and carrots",
           " on a sunny, cold day", " at night", " next to a tall building", " while it’s snowing", " — very close up"]
_ENDINGS = [".", ".", "", " .", ".  ", "\n", "!"]


def _caption(rng: np.random.Generator) -> str:
    c = f"{rng.choice(_SUBJECTS)} {rng.choice(_ACTIONS)}{rng.choice(_EXTRAS)}{rng.choice(_ENDINGS)}"
    return c.lower() if rng.random() < 0.1 else c  # a few all-lower-case captions, as in COCO


def _picture(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """A smooth background with a few shapes: real-image-like edges, so crops and resizes show."""
    base = rng.integers(0, 256, (max(2, h // 32), max(2, w // 32), 3), dtype=np.uint8)
    img = Image.fromarray(base).resize((w, h), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(img)
    for _ in range(6):
        x0, y0 = int(rng.integers(0, w - 20)), int(rng.integers(0, h - 20))
        x1, y1 = x0 + int(rng.integers(10, w // 2)), y0 + int(rng.integers(10, h // 2))
        fill = tuple(int(v) for v in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=fill)
    return img.filter(ImageFilter.GaussianBlur(0.6))


def _save_jpeg(img: Image.Image, kind: str, path: Path) -> tuple[int, int]:
    """Write `img` as COCO would store it; returns the stored (width, height)."""
    if kind == "L":
        img = img.convert("L")
    elif kind == "CMYK":
        img = img.convert("CMYK")
    exif = None
    if kind == "EXIF-rotated":
        exif = Image.Exif()
        exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    with atomic_path(path) as tmp:
        img.save(tmp, format="JPEG", quality=90, **({"exif": exif.tobytes()} if exif is not None else {}))
    return img.size


def write_coco_tree(root: str | os.PathLike, *, n_train: int = N_TRAIN, n_val: int = N_VAL, seed: int = 0) -> Path:
    """MS-COCO 2014 layout with real file names, sizes, modes and the full caption-annotation schema."""
    root = Path(root)
    rng = np.random.default_rng([seed, 2014])
    ids = rng.choice(np.arange(1, 581_929), size=n_train + n_val, replace=False)
    ann_id = int(rng.integers(1, 10_000))
    for split, split_ids in (("train", sorted(ids[:n_train])), ("val", sorted(ids[n_train:]))):
        images, annotations = [], []
        for k, image_id in enumerate(split_ids):
            w, h, kind = IMAGE_KINDS[(k + (split == "val") * 5) % len(IMAGE_KINDS)]
            name = f"COCO_{split}2014_{int(image_id):012d}.jpg"
            width, height = _save_jpeg(_picture(rng, w, h), kind, root / f"{split}2014" / name)
            images.append({"license": int(rng.integers(1, 9)), "file_name": name,
                           "coco_url": f"http://images.cocodataset.org/{split}2014/{name}", "height": height,
                           "width": width, "date_captured": "2013-11-14 16:28:13",
                           "flickr_url": f"http://farm{int(rng.integers(1, 10))}.staticflickr.com/{name}",
                           "id": int(image_id)})
            for _ in range(5):
                ann_id += int(rng.integers(1, 50))
                annotations.append({"image_id": int(image_id), "id": ann_id, "caption": _caption(rng)})
        doc = {
            "info": {"description": "COCO 2014 Dataset (ranke stand-in)", "url": "http://cocodataset.org",
                     "version": "1.0", "year": 2014, "contributor": "COCO Consortium",
                     "date_created": "2017/09/01"},
            "licenses": [{"url": "http://creativecommons.org/licenses/by-nc-sa/2.0/", "id": i,
                          "name": "Attribution-NonCommercial-ShareAlike License"} for i in range(1, 9)],
            "images": images,
            "annotations": annotations,
        }
        write_text(json.dumps(doc), root / "annotations" / f"captions_{split}2014.json")
    return root


def write_prompt_csv(path: str | os.PathLike, coco_root: str | os.PathLike) -> Path:
    """The release's evaluations/t2i/coco_captions.csv layout: a header line "Prompt", then one val
    caption per line, unquoted even where it has commas (so pandas cannot parse it, as with the
    real file, and the official reader's line fallback runs)."""
    doc = json.loads((Path(coco_root) / "annotations" / "captions_val2014.json").read_text())
    lines = ["Prompt"] + [" ".join(a["caption"].split()) for a in doc["annotations"]]
    if not any("," in line for line in lines):
        raise AssertionError("the stand-in captions must contain commas, as the released file does")
    write_text("\n".join(lines) + "\n", path)
    return Path(path)


def caption_corpus(coco_root: str | os.PathLike) -> list[str]:
    """Every caption of the tree (for the stand-in tokenizers' vocabularies)."""
    out = []
    for split in ("train", "val"):
        doc = json.loads((Path(coco_root) / "annotations" / f"captions_{split}2014.json").read_text())
        out += [a["caption"] for a in doc["annotations"]]
    return out


# ----------------------------------------------------------------------------------------------
# Seeded weights


def seed_weights(module, seed: int) -> None:
    """Deterministic weights from the key names and a seed (independent of the torch RNG), scaled
    like an initialisation so that activations stay finite through deep stacks."""
    import torch

    with torch.no_grad():
        for name, t in module.state_dict(keep_vars=True).items():
            # integer buffers, the VQ usage counter and BatchNorm running statistics keep their init
            if not t.is_floating_point() or name.endswith(("codebook_used", "running_mean", "running_var")):
                continue
            g = torch.Generator().manual_seed((zlib.crc32(name.encode()) + 7919 * seed) & 0x7FFFFFFF)
            v = torch.randn(t.shape, generator=g)
            if t.dim() >= 2:
                v = v / math.sqrt(max(1, math.prod(t.shape[1:])))
            elif name.endswith(("weight", "gamma", "g")) and "bias" not in name:
                v = 1 + 0.05 * v
            else:
                v = 0.05 * v
            t.copy_(v.to(t.dtype))


# ----------------------------------------------------------------------------------------------
# LlamaGen checkpoints


def write_llamagen_checkpoints(vq_path: str | os.PathLike, gpt_path: str | os.PathLike, *, vq_arch: dict,
                               gpt_arch: dict, caption_len: int, image_size: int, seed: int = 0) -> None:
    """The two LlamaGen files as the upstream training scripts save them (module docstring)."""
    import torch

    from ranke.models.backbone import build_gpt, build_vq
    from ranke.train.discriminator import PatchDiscriminator

    vq = build_vq(vq_arch)
    seed_weights(vq, seed)
    disc = PatchDiscriminator(ndf=16)  # the tokenizer's own GAN discriminator; never loaded here
    seed_weights(disc, seed + 1)
    grid = image_size // vq.downsample
    gpt = build_gpt(gpt_arch, vq.codebook_size, grid * grid, caption_len)
    seed_weights(gpt, seed + 2)
    args = Namespace(vq_model="VQ-16", codebook_size=vq.codebook_size, codebook_embed_dim=vq.config.codebook_embed_dim,
                     image_size=image_size, global_seed=seed)
    vq_obj = {"model": vq.state_dict(), "optimizer": torch.optim.Adam(vq.parameters()).state_dict(),
              "discriminator": disc.state_dict(), "optimizer_disc": torch.optim.Adam(disc.parameters()).state_dict(),
              "steps": 400_000, "args": args}
    gpt_obj = {"model": gpt.state_dict(), "optimizer": torch.optim.AdamW(gpt.parameters()).state_dict(),
               "steps": 1_400_000, "args": Namespace(gpt_model="GPT-XL", gpt_type="t2i", image_size=image_size,
                                                     cls_token_num=caption_len, global_seed=seed)}
    for obj, path in ((vq_obj, vq_path), (gpt_obj, gpt_path)):
        with atomic_path(path) as tmp:
            torch.save(obj, tmp)


# ----------------------------------------------------------------------------------------------
# FLAN-T5


def write_flan_t5(out_dir: str | os.PathLike, corpus: list[str], *, sizes: dict = T5_SIZES, seed: int = 0) -> Path:
    """google/flan-t5-xl's layout: the whole T5ForConditionalGeneration (encoder and decoder) as
    sharded safetensors with an index, and a SentencePiece unigram tokenizer with T5's 100
    sentinel tokens (spiece.model + tokenizer.json + tokenizer_config.json + special_tokens_map.json).
    The vocabulary is trained on `corpus` as T5's encoder sees it (cleaned, lower case)."""
    import sentencepiece as spm
    import torch
    from transformers import AutoTokenizer, T5Config, T5ForConditionalGeneration

    from ranke.models.caption_cleaning import t5_caption

    out_dir = Path(out_dir)
    model_file = _io.BytesIO()
    # byte fallback: characters never seen in training still encode, as with the real 32k vocabulary
    spm.SentencePieceTrainer.train(sentence_iterator=iter([t5_caption(c) for c in corpus]), model_writer=model_file,
                                   vocab_size=600, model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
                                   character_coverage=1.0, hard_vocab_limit=False,
                                   minloglevel=2)
    config = T5Config(**sizes, feed_forward_proj="gated-gelu", dropout_rate=0.1, tie_word_embeddings=False,
                      relative_attention_num_buckets=32, relative_attention_max_distance=128,
                      decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
                      architectures=["T5ForConditionalGeneration"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = T5ForConditionalGeneration(config).eval()
    seed_weights(model, seed)
    with atomic_path(out_dir, is_dir=True) as tmp:
        (tmp / "spiece.model").write_bytes(model_file.getvalue())
        (tmp / "tokenizer_config.json").write_text(json.dumps(
            {"tokenizer_class": "T5Tokenizer", "extra_ids": 100, "model_max_length": 512, "eos_token": "</s>",
             "pad_token": "<pad>", "unk_token": "<unk>"}))
        tokenizer = AutoTokenizer.from_pretrained(tmp, local_files_only=True)  # converts spiece.model
        tokenizer.save_pretrained(tmp)
        (tmp / "special_tokens_map.json").write_text(json.dumps(
            {"eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>",
             "additional_special_tokens": [f"<extra_id_{i}>" for i in range(100)]}))
        # small shards so that the index file and the multi-file load are exercised
        model.save_pretrained(tmp, max_shard_size="2MB")
    return out_dir


# ----------------------------------------------------------------------------------------------
# The CLIP reward (transformers) with the real CLIP tokenizer


def clip_bpe_vocab() -> tuple[dict[str, int], list[str]]:
    """The OpenAI CLIP BPE vocabulary (49 408 tokens) and its merges, from the merges file that
    open_clip ships: 256 byte symbols, the same with the end-of-word mark, one token per merge of
    the first 48 894, then <|startoftext|> and <|endoftext|> (the layout of CLIP's tokenizer)."""
    import gzip

    from open_clip.tokenizer import bytes_to_unicode, default_bpe

    lines = gzip.open(default_bpe()).read().decode("utf-8").split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]
    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}, merges


def write_hf_clip(out_dir: str | os.PathLike, *, sizes: dict = HF_CLIP_SIZES, seed: int = 0) -> Path:
    """openai/clip-vit-large-patch14's layout: CLIPModel (save_pretrained), CLIPTokenizer files
    (vocab.json, merges.txt, tokenizer.json, ...) and preprocessor_config.json. The text config
    keeps the real file's legacy eos_token_id 2 (pooling then takes the highest token id, the
    end-of-text token), patch 14 at 224 px and QuickGELU."""
    import torch
    from transformers import AutoTokenizer, CLIPConfig, CLIPImageProcessor, CLIPModel

    out_dir = Path(out_dir)
    vocab, merges = clip_bpe_vocab()
    text = dict(sizes["text"], vocab_size=len(vocab), max_position_embeddings=77, hidden_act="quick_gelu",
                bos_token_id=0, eos_token_id=2, pad_token_id=1, projection_dim=sizes["projection_dim"])
    vision = dict(sizes["vision"], image_size=224, patch_size=14, hidden_act="quick_gelu",
                  projection_dim=sizes["projection_dim"])
    config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=sizes["projection_dim"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPModel(config).eval()
    seed_weights(model, seed)
    with atomic_path(out_dir, is_dir=True) as tmp:
        (tmp / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
        (tmp / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
        (tmp / "tokenizer_config.json").write_text(json.dumps(
            {"tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "bos_token": "<|startoftext|>",
             "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
             "do_lower_case": True}))
        # read back from vocab.json / merges.txt as any transformers version reads the real
        # directory, then saved again so that tokenizer.json sits beside them as in the hub repo
        AutoTokenizer.from_pretrained(tmp, local_files_only=True).save_pretrained(tmp)
        CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}).save_pretrained(tmp)
        model.save_pretrained(tmp)
    return out_dir


# ----------------------------------------------------------------------------------------------
# LPIPS-VGG and Inception


def write_lpips_files(lin_path: str | os.PathLike, vgg_path: str | os.PathLike, *, seed: int = 0) -> None:
    """LPIPS as LlamaGen / taming load it: `vgg.pth` holds only the five linear heads
    (lin{0..4}.model.1.weight, (1, C, 1, 1)); the VGG16 trunk is torchvision's `vgg16-397923af.pth`
    (`features.<i>.weight/bias`, see the module docstring for the classifier)."""
    import torch

    from ranke.perceptual import _VGG_CHANNELS, LPIPSVGG

    lp = LPIPSVGG()
    seed_weights(lp, seed)
    heads = {f"lin{i}.model.1.weight": lp.lins[i].model[1].weight.detach().abs().clone()
             for i in range(len(_VGG_CHANNELS))}  # LPIPS heads are non-negative
    trunk = {f"features.{k}": v.detach().clone() for k, v in lp.features.state_dict().items()}
    for obj, path in ((heads, lin_path), (trunk, vgg_path)):
        with atomic_path(path) as tmp:
            torch.save(obj, tmp)


def write_inception(path: str | os.PathLike, *, seed: int = 0) -> None:
    from ranke.metrics.fid import write_random_inception_weights

    write_random_inception_weights(path, seed=seed)


# ----------------------------------------------------------------------------------------------
# The study's stand-in set and its overlay

STUDY_BACKBONES = ("llamagen", "janus")


def _common_assets(out: Path, corpus_root: Path, seed: int) -> dict:
    from ranke.models.clip import write_openai_clip_standin

    clip_file = out / "clip" / "ViT-B-32.pt"
    write_openai_clip_standin(clip_file, seed=seed)
    reward_dir = write_hf_clip(out / "clip-vit-large-patch14", seed=seed)
    inception = out / "torch-fidelity" / "weights-inception-2015-12-05-6726825d.pth"
    write_inception(inception, seed=seed)
    lin, vgg = out / "lpips" / "vgg.pth", out / "torchvision" / "vgg16-397923af.pth"
    write_lpips_files(lin, vgg, seed=seed)
    return {
        "coco_root": str(corpus_root),
        "clip": {"weights": str(clip_file)},
        "reward": {"weights": str(reward_dir)},
        "fid": {"weights": str(inception)},
        "perceptual": {"weights": str(lin), "vgg16": str(vgg)},
    }


def _counts(study: dict, world_size: int) -> dict:
    """Sizes and counts of a CPU run: small, but every term of the step active (GAN from step 0)."""
    return {
        "device": "cpu",
        "image_size": IMAGE_SIZE,
        "tokenize": {"batch_size": 16, "workers": 0},
        "replicates": [0],
        "prompts": {"n": 4},
        "sampling": {"batch_size": 4},
        "rounds": {"n": 1, "steps": 1},
        "train": {"prompts_per_step": 2 * world_size, "group_size": 4, "grad_accum": 1, "world_size": world_size,
                  "checkpoint_every": 1, "nominal_steps": 10, "discriminator": {"start_step": 0}},
        "score": {"batch_size": 4, "fid_reference": {"n": 6, "workers": 0}},
        "cluster": {"executor": "local"},
        "resources": {name: {"threads": 1} for name in ("sample", "score")},
    }


def write_standins(study_path: str | os.PathLike, out_dir: str | os.PathLike, *, seed: int = 0,
                   world_size: int = 1) -> Path:
    """Write every asset `study_path` names under `out_dir`, and `out_dir/overlay.yaml`."""
    study = yaml.safe_load(Path(study_path).read_text())
    backbone = study.get("backbone", "llamagen")
    if backbone not in STUDY_BACKBONES:
        raise ValueError(f"{study_path}: backbone must be one of {STUDY_BACKBONES}, got {backbone!r}")
    out = Path(out_dir).resolve()
    coco_root = write_coco_tree(out / "coco2014", seed=seed)
    assets = _common_assets(out, coco_root, seed)
    overlay = _counts(study, world_size)
    if backbone == "llamagen":
        caption_len = int(study["assets"]["text_encoder"].get("max_length", 120))
        vq_file, gpt_file = out / "llamagen" / "vq_ds16_t2i.pt", out / "llamagen" / "t2i_XL_stage1_256.pt"
        write_llamagen_checkpoints(vq_file, gpt_file, vq_arch=LLAMAGEN_VQ_ARCH, gpt_arch=LLAMAGEN_GPT_ARCH,
                                   caption_len=caption_len, image_size=IMAGE_SIZE, seed=seed)
        t5_dir = write_flan_t5(out / "google" / "flan-t5-xl", caption_corpus(coco_root), seed=seed)
        assets.update(vq={"checkpoint": str(vq_file), "arch": dict(LLAMAGEN_VQ_ARCH)},
                      gpt={"checkpoint": str(gpt_file), "arch": dict(LLAMAGEN_GPT_ARCH)},
                      text_encoder={"path": str(t5_dir)})
    else:
        from ranke.models.janus import write_standin_janus_original

        janus_dir = write_standin_janus_original(out / "Janus-Pro-1B", image_size=IMAGE_SIZE,
                                                 corpus=caption_corpus(coco_root), seed=seed)
        assets["janus"] = {"path": str(janus_dir), "dtype": "float32"}  # bf16 matmuls are slow on CPU
    overlay["assets"] = assets
    if study.get("prompts", {}).get("captions_csv"):
        csv = write_prompt_csv(out / "RankE" / "evaluations" / "t2i" / "coco_captions.csv", coco_root)
        overlay["prompts"]["captions_csv"] = str(csv)
    text = (f"# Stand-in assets for {Path(study_path).name}, written by `python -m ranke standins` (seed {seed}).\n"
            "# Random weights in the real on-disk formats; only sizes and counts differ from the study.\n"
            + yaml.safe_dump(overlay, sort_keys=False))
    write_text(text, out / "overlay.yaml")
    log.info("stand-ins for %s written to %s (overlay %s)", study_path, out, out / "overlay.yaml")
    return out / "overlay.yaml"


def main(argv: list[str] | None = None) -> int:
    from ranke.runtime import setup_logging

    p = argparse.ArgumentParser(prog="python -m ranke standins", description=__doc__.splitlines()[0])
    p.add_argument("--study", required=True, help="study config, e.g. workflow/studies/llamagen_xl.yaml")
    p.add_argument("--out", required=True, help="directory for the assets and overlay.yaml")
    p.add_argument("--seed", type=int, default=0, help="seed of every random weight and image")
    p.add_argument("--world-size", type=int, default=1, help="train.world_size of the overlay (CPU ranks, gloo)")
    args = p.parse_args(argv)
    setup_logging()
    overlay = write_standins(args.study, args.out, seed=args.seed, world_size=args.world_size)
    print(overlay)
    return 0
