"""The ``model.pt`` format (``"format": "seqcls_fast.train/1"``): the model's
state_dict plus what evaluating it needs (impl, model options, classes, the
train split's standardization, the dataset name); written after training,
read back by ``--checkpoint``.
"""
import os

import torch

from .sources import DataError

CHECKPOINT_FORMAT = "seqcls_fast.train/1"


def save_checkpoint(path, model, impl, config, classes, mean, std, name):
    torch.save({"format": CHECKPOINT_FORMAT, "impl": impl, "dataset": name,
                "state_dict": model.state_dict(), "model": config, "classes": classes,
                "mean": torch.from_numpy(mean), "std": torch.from_numpy(std)}, path)


def load_checkpoint(path):
    """The checkpoint dict at ``path``; DataError if it is missing or not one."""
    if not os.path.isfile(path):
        raise DataError(f"--checkpoint {path}: no such file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise DataError(f"--checkpoint {path}: not a loadable checkpoint: "
                        f"{type(e).__name__}: {e}") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise DataError(f"--checkpoint {path}: not a model.pt written by seqcls-fast train")
    return ckpt

