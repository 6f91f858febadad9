"""Training: one loop for a notebook, the command line, a GPU and ``torchrun``.

``fit(model, train_data, test_data, epochs, lr=..., ...)`` trains and returns the history
(``loop``), which ``coatlib.viz.plot_history`` draws; ``evaluate`` measures a model on a data set
(``evaluation``); every input is checked before anything is written (``checks``).

Checkpoints (``resume``) hold the model, optimizer, scheduler, epoch, history and every
process's random-number state, are written to a temporary file and renamed (a crash
never leaves half a checkpoint), and are read with ``weights_only=True``.
A run resumed from the checkpoint of an interrupted run (same settings, same
number of processes) ends with the same weights as the uninterrupted run.

Scale (``distributed``): under ``torchrun --nproc_per_node=N`` (or any launcher that sets
``WORLD_SIZE``), ``fit`` joins the process group (gloo on CPU, nccl on CUDA),
wraps the model in ``DistributedDataParallel`` and gives each process its
share of every batch through a ``DistributedSampler``: N processes with batch
B take the same optimisation steps as one process with batch N*B, up to
BatchNorm, which normalises each process's share (``sync_bn=True`` converts
it to SyncBatchNorm, on CUDA only: PyTorch has no CPU SyncBatchNorm).

Models too large for one device: ``fsdp=True`` (``--fsdp``, under torchrun) shards
every block of the model (``coatlib.model_parts.blocks_of``), then the rest, over the processes with
PyTorch's FSDP2 (``fully_shard``): each process keeps 1/N of the weights, gradients
and optimizer states and gathers a block's weights only while it computes it. With
``amp="bf16"`` the blocks compute in bfloat16 (a ``MixedPrecisionPolicy``) and the
gradients are averaged in float32. Its checkpoints are folders written by
``torch.distributed.checkpoint`` (each process writes its shards); they resume
under the same number of processes and load into a model in one process
(``load_training_checkpoint``). ``activation_checkpointing=True`` keeps only each block's
input during the forward pass and recomputes the block in the backward pass;
``compile=True`` runs the model through ``torch.compile``.

The command line (``command``): ``python -m coatlib.train --help``.
"""

from coatlib.train.checks import HYPERPARAMETERS, check_hyperparameters, describe_data
from coatlib.train.command import cli, main
from coatlib.train.distributed import distribute, init_distributed, supported_amp
from coatlib.train.epoch import NonFiniteLoss, train_one_epoch
from coatlib.train.evaluation import evaluate
from coatlib.train.loop import HISTORY_KEYS, fit, warmup_cosine
from coatlib.train.records import versions
from coatlib.train.resume import SHARDED_STATE, load_training_checkpoint, save_checkpoint, save_sharded_checkpoint

__all__ = [
    "fit",
    "train_one_epoch",
    "warmup_cosine",
    "NonFiniteLoss",
    "HISTORY_KEYS",
    "evaluate",
    "check_hyperparameters",
    "HYPERPARAMETERS",
    "describe_data",
    "init_distributed",
    "distribute",
    "supported_amp",
    "save_checkpoint",
    "save_sharded_checkpoint",
    "load_training_checkpoint",
    "SHARDED_STATE",
    "versions",
    "main",
    "cli",
]
