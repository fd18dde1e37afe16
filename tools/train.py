"""Train a model from a YAML config.

    python tools/train.py configs/quickstart.yaml [key.sub=value ...] [--out DIR] [--resume]
    torchrun --nproc_per_node 2 tools/train.py configs/quickstart.yaml

Prints the resolved config, checks the data, trains, evaluates and writes the run folder
(default runs/<config name>/): model.safetensors, train_state.pt, best.safetensors,
log.jsonl, metrics.json, predictions.png, config.yaml.
"""

import sys

from segzoo.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
