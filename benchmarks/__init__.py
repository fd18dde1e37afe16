"""segzoo's measurements, kept in the repository and out of the installed package (like torchvision's
``benchmarks/`` and ``references/``): they import the competitors (torchvision's own models, smp, timm,
Hugging Face transformers) and train for minutes. Run them from the root of a source checkout:

    python -m benchmarks.speed --list            # latency, memory, FLOPs: segzoo / the closest anchor
    python -m benchmarks.ledger --list           # accuracy on real images beside smp / torchvision
    python -m benchmarks.ledger.transfer         # ImageNet weights vs random init on the same tiles
    python -m benchmarks.int8_accuracy CHECKPOINT --data CONFIG   # the accuracy cost of int8 and bf16
    python -m benchmarks.soak                    # memory stays flat over a long training run
"""
