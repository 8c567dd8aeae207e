"""``seqcls-fast predict``: a ``seqcls-fast train`` checkpoint on new data.

    python -m seqcls_fast predict --checkpoint out/train/JapaneseVowels/model.pt \\
        --data new.npz --out predictions.csv

Reads a .ts file or a .npz (labels optional: see
:func:`seqcls_fast.apps.train.sources.load_prediction_data`), applies the
checkpoint's standardization, and writes one row per sequence, in input order:
``index``, ``prediction`` (the class name), ``p_<class>`` for every class of
the checkpoint, and ``label`` when the data has labels; as CSV, or as JSON
lines when ``--out`` ends in ``.jsonl``. With labels it also prints the
accuracy. A channel count or a label the checkpoint does not know is an error
that names both.
"""
import argparse
import csv
import json
import os
import sys

import numpy as np

from seqcls_fast.data import SequenceDataset
from .train import (NPZ_LAYOUT, DataError, choose_device, load_checkpoint, model_from_checkpoint,
                    standardize)
from .train.metrics import predict_proba
from .train.sources import check_split, encode_labels, load_prediction_data


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="seqcls-fast predict",
        description="Predict classes and class probabilities of new sequences with a "
                    "checkpoint of seqcls-fast train.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="A .npz here holds one split: X (with lengths for the ragged form) and "
               "optionally y; or the train layout below, read from X_<--split>.\n" + NPZ_LAYOUT)
    p.add_argument("--checkpoint", required=True, help="a model.pt written by seqcls-fast train")
    p.add_argument("--data", required=True, metavar="PATH", help="a .ts file or a .npz")
    p.add_argument("--split", default=None,
                   help="for a .npz with split keys: read X_<split> (default: X if present, "
                        "else X_test)")
    p.add_argument("--out", default=None,
                   help="where to write the predictions: .csv (default "
                        "out/predict/<data name>.csv) or .jsonl")
    p.add_argument("--allow-pickle", action="store_true",
                   help="allow a .npz with object arrays (unpickles; trusted files only)")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:N")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else list(argv))
    try:
        return _run(args)
    except DataError as e:
        print(f"seqcls-fast predict: error: {e}", file=sys.stderr)
        return 2


def _run(args):
    ckpt = load_checkpoint(args.checkpoint)
    classes = ckpt["classes"]
    name, seqs, labels = load_prediction_data(args.data, args.split, args.allow_pickle)
    channels = check_split(seqs, labels if labels is not None else [None] * len(seqs), "data")
    mean, std = ckpt["mean"].numpy(), ckpt["std"].numpy()
    if mean.shape[0] != channels:
        raise DataError(f"--data {args.data} has {channels} channels but the checkpoint "
                        f"{args.checkpoint} was trained on {mean.shape[0]}")
    label_index = None
    if labels is not None:
        try:
            _, label_index, _ = encode_labels([], labels, classes)
        except DataError as e:
            raise DataError(f"--data {args.data}: {e} (the checkpoint's classes)") from e
    dataset = SequenceDataset(standardize(seqs, mean, std),
                              label_index if label_index is not None else np.zeros(len(seqs)))
    device = choose_device(args.device, 0, False)
    probs = predict_proba(model_from_checkpoint(ckpt).to(device), dataset, device)
    predicted = probs.argmax(axis=1)
    rows = []
    for i, (row, k) in enumerate(zip(probs, predicted)):
        record = {"index": i, "prediction": classes[k]}
        record.update({f"p_{c}": float(p) for c, p in zip(classes, row)})
        if labels is not None:
            record["label"] = classes[label_index[i]]
        rows.append(record)
    out = args.out or os.path.join("out", "predict", f"{name}.csv")
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    if out.endswith(".jsonl"):
        with open(out, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    else:
        with open(out, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    print(f"{name}: {len(rows)} sequences predicted with {args.checkpoint}; wrote {out}")
    if label_index is not None:
        print(f"accuracy {float((predicted == label_index).mean()):.4f} on the labels in the data")
    return 0
