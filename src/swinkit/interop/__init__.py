"""swinkit inside other frameworks: hf (transformers' AutoBackbone)."""
