"""Quantization per a recipe's ``[quantize.PART]`` tables, as one build stage: ``plan.py`` (its typed input, a
``QuantPlan`` of one ``PartPlan`` per part, and its ``QuantResult``), then per the target's form:

- ONNX graphs after export, to Q/DQ (orin): ``onnx_stage.py`` (the stage), ``select.py`` (which MatMuls),
  ``scales.py`` (quantization math, int4 packing), ``calibrate.py`` (activation statistics), ``prescale.py`` (AWQ
  and SmoothQuant pre-scales), ``qdq_rewrite.py`` (the Q/DQ graph rewrite), ``graph.py`` (what they share);
  TensorRT's form of the result is ``backends/tensorrt_qdq.py``'s.
- torch modules before export (snapdragon): ``torchao.py`` (torchao, for ExecuTorch/XNNPACK: 8da4w/8da8w linears,
  int4/int8 embeddings).
"""
