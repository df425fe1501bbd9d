"""The benchmark suite: every backend x recipe of ours and the peers, built and measured in one run on one host.

    python -m mobilevlm_export.benchsuite [--shape demo|tiny|1.7b] [--only NAME,...] [--rounds N] [--runs N]
        [--threads N] [--out DIR] [--ab] [--profile-ops]

(``make bench``: the 1.7b shape with the paired A/B, BENCHMARKS.md copied to the repository root.) At the chosen
shape (``1.7b``: MobileVLM_V2-1.7B dims with random fp16 weights, written once by
``checkpoint.synthetic.write_checkpoint``; ``demo``: the bundled trained checkpoint, minutes; ``tiny``: tiny random
dims) it builds, or finds in its cache under ``--out`` (``cache``), each row of ``rows.ROWS``: PyTorch eager fp32
(the reference); ours on ONNX Runtime (fp32; int4 Q/DQ, the orin bundle run on the host) and on ExecuTorch (fp32;
8da4w with decoder groups of 128 (the default), 64 and 32, and the frontier's other points); ExecuTorch's own
``export_llm`` 8da4w at groups 32 and 128, and ONNX Runtime's own int4 (``MatMulNBits``, blocks of 32) on our fp32
decoder, both decoder only (``peers``); with ``--before REF``, the default program as commit REF's own code built
it (``rows.before_row``). Each row's accuracy comes from the same recipe built on the trained demo
checkpoint. It then times every row in interleaved rounds of fresh processes (``suite``), optionally pairs ours with
export_llm in one process (``ab``) and profiles both per operator (``opprofile``), measures the host's memory
bandwidth (``bench.memory_bandwidth``), and writes ``results-<shape>.json`` and ``BENCHMARKS.md`` (``report``), with
the device profiles' predictions and their fit to the published figures (``predict``)."""
