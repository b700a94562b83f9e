"""Sentence embeddings: a BERT-family encoder run by mlserve's own forward from safetensors."""
