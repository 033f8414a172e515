"""Model families shared by every stage: LlamaGen VQ + GPT, the T5 text encoder, checkpoints.

Import from the submodules (ranke.models.vq, .gpt, .text, .checkpoints, .backbone); this package
file stays empty of imports so that `import ranke.models.vq` does not pull in transformers.
"""
