"""The generation engine: ``schedule → run → postprocess`` over a paged KV cache.

Plain-Python scheduling and block bookkeeping (``scheduler``, ``block_manager``, ``sequence``),
the one module that runs tensors (``model_runner``, with ``decode_graph``), sampling, grammar
constraints, detokenizing and output processing, and the thread-to-asyncio bridge
(``async_engine``) that both front ends stream from.
"""
