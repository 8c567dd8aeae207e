"""The ``model.pt`` format (``"format": "seqcls_fast.train/1"``): the model's
state_dict plus what evaluating it needs (impl, model options, classes, the
train split's standardization, the dataset name); written after training,
read back by ``--checkpoint`` (and by ``seqcls-fast stream``):
:func:`model_from_checkpoint` rebuilds the model, :func:`prepare_test_split`
readies a test split the checkpoint's way.
"""
import os

import torch

from .loop import build_model
from .sources import DataError, encode_labels, standardize

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



def model_from_checkpoint(ckpt, impl=None):
    """The checkpoint's model (on the CPU, its state_dict loaded), built as
    ``impl`` (default: the impl it was trained with)."""
    model = build_model(impl or ckpt["impl"], ckpt["model"])
    model.load_state_dict(ckpt["state_dict"])
    return model


def prepare_test_split(ckpt, path, test_split, channels):
    """The test split as the checkpoint at ``path`` saw its training data:
    -> (standardized sequences, labels as indices into ``ckpt["classes"]``).
    DataError when the channel count differs or a label is not one of its
    classes."""
    te_x, te_y = test_split
    mean, std = ckpt["mean"].numpy(), ckpt["std"].numpy()
    if mean.shape[0] != channels:
        raise DataError(f"--checkpoint {path}: trained on {mean.shape[0]} "
                        f"channels, the data has {channels}")
    _, labels, _ = encode_labels([], te_y, ckpt["classes"])  # no train split to encode
    return standardize(te_x, mean, std), labels
