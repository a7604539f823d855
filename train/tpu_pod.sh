#!/bin/bash
# A Cloud TPU pod slice: the same command on every worker (jax-zoo installed on each); JAX finds
# the hosts itself. --registry and --data-dir must be shared (NFS, a gcsfuse bucket).
#   bash train/tpu_pod.sh my-pod-slice us-central2-b [CONFIG [more zoo train flags]]
set -euo pipefail
slice=${1:?usage: tpu_pod.sh SLICE ZONE [CONFIG [FLAGS...]]}
zone=${2:?usage: tpu_pod.sh SLICE ZONE [CONFIG [FLAGS...]]}
config=${3:-train/configs/resnet18_cifar10_bf16.toml}
gcloud compute tpus tpu-vm ssh "$slice" --zone "$zone" --worker=all --command \
  "cd jax-zoo && python train/train.py --config $config \
   --data-dir /mnt/shared/tfds --registry /mnt/shared/zoo-registry ${*:4}"
