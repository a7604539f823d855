"""Train a zoo model from a config file: the script to run on a GPU host, a TPU VM or under SLURM.

    python train/train.py --config train/configs/resnet20_cifar10.toml --data-dir /data/tfds
    python train/train.py lenet5 --epochs 5          # any `zoo train` flag works here too

It is `zoo train` with the same flags and the same precedence (defaults < the model's preset <
--config FILE < flags) and the same CPU settings (`zoo.configure_cpu()`, which `zoo.cli.main`
applies first): the library does the work, so a job script stays one line. This folder is
not installed with the package; it is what you copy to a cluster beside your own configs.
"""

import sys

import zoo.cli

if __name__ == "__main__":
    sys.exit(zoo.cli.main(["train", *sys.argv[1:]]))
