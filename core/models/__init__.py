"""Model weights and what reads them: the shared layers and one file per model family (``llama``),
weight formats, loaders, tokenizer, kernels."""
