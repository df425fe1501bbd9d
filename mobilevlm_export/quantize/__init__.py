"""Quantization per a recipe's ``[quantize.PART]`` tables: ``torchao.py`` (torchao, for ExecuTorch/XNNPACK:
8da4w/8da8w linears, int4/int8 embeddings), keyed by graph name."""
