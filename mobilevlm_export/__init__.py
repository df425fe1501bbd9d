"""mobilevlm_export: split, quantize, compile and verify MobileVLM vision-language models."""

__version__ = "0.1.0"
