"""Model weights and what reads them: the decoder, weight formats, loaders, tokenizer, kernels."""
