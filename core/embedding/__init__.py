"""Sentence embeddings: the encoder runner, pooling, and the batcher that groups requests."""
