"""How well a trained model does on a split: :func:`predict_proba` (class
probabilities, batched by length) and :func:`predict` (class indices),
:func:`evaluate` (accuracy, balanced accuracy, macro and per-class
precision/recall/F1, confusion matrix, through scikit-learn),
:func:`summarize_runs` (mean and spread over seeds), :func:`format_report`
(the table printed after each run) and
:func:`write_json` (the record of a run, as a file).
"""
import json
import os
import time

import numpy as np
import torch

from seqcls_fast.data import LengthBucketSampler, collate


@torch.no_grad()
def predict_proba(model, dataset, device, batch_size=256):
    """Class probabilities [N, classes] (float64 numpy), in dataset order,
    batched by length."""
    model.eval()
    sampler = LengthBucketSampler(dataset.lengths, batch_size, shuffle=False,
                                  num_replicas=1, rank=0)
    probs = None
    for batch in sampler:
        x, lengths, _ = collate([dataset[i] for i in batch])
        logits = model(x.to(device), lengths.to(device))
        if probs is None:
            probs = torch.empty(len(dataset), logits.shape[1], dtype=torch.float64)
        probs[torch.as_tensor(batch)] = torch.softmax(logits.double(), dim=1).cpu()
    return probs.numpy()


def predict(model, dataset, device, batch_size=256):
    """Predicted class indices [N], in dataset order."""
    return predict_proba(model, dataset, device, batch_size).argmax(axis=1)


def evaluate(model, dataset, device, classes):
    from sklearn.metrics import (accuracy_score, balanced_accuracy_score, confusion_matrix,
                                 precision_recall_fscore_support)
    start = time.perf_counter()
    pred = predict(model, dataset, device)
    seconds = time.perf_counter() - start
    true = dataset.labels.numpy()
    labels = list(range(len(classes)))
    precision, recall, f1, support = precision_recall_fscore_support(
        true, pred, labels=labels, zero_division=0)
    macro = precision_recall_fscore_support(true, pred, labels=labels, average="macro",
                                            zero_division=0)
    return {
        "accuracy": float(accuracy_score(true, pred)),
        "balanced_accuracy": float(balanced_accuracy_score(true, pred)),
        "macro_precision": float(macro[0]), "macro_recall": float(macro[1]),
        "macro_f1": float(macro[2]),
        "per_class": {c: {"precision": float(precision[i]), "recall": float(recall[i]),
                          "f1": float(f1[i]), "support": int(support[i])}
                      for i, c in enumerate(classes)},
        "confusion_matrix": confusion_matrix(true, pred, labels=labels).tolist(),
        "confusion_matrix_axes": "rows: true class, columns: predicted class, in 'classes' order",
        "inference_seconds": seconds,
    }


def summarize_runs(runs):
    """Mean and standard deviation over runs (one per seed) of the test
    accuracy, macro F1 and training seconds; the std is the sample one
    (ddof=1), 0 for one run."""
    summary = {"runs": len(runs), "seeds": [r["seed"] for r in runs]}
    for key in ("test_accuracy", "macro_f1", "train_seconds"):
        values = np.array([r[key] for r in runs], dtype=np.float64)
        summary[f"{key}_mean"] = float(values.mean())
        summary[f"{key}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return summary


def format_report(name, impl, metrics, classes):
    lines = [f"{name} [{impl}]: test accuracy {metrics['accuracy']:.4f}  "
             f"(balanced {metrics['balanced_accuracy']:.4f}, macro F1 {metrics['macro_f1']:.4f})"]
    width = max(5, max(len(c) for c in classes))
    lines.append(f"  {'class':>{width}s}  precision  recall     f1  support")
    for c in classes:
        m = metrics["per_class"][c]
        lines.append(f"  {c:>{width}s}  {m['precision']:9.4f}  {m['recall']:6.4f}  {m['f1']:5.4f}"
                     f"  {m['support']:7d}")
    lines.append("  confusion matrix (rows true, columns predicted):")
    cell = max(3, max(len(str(v)) for row in metrics["confusion_matrix"] for v in row) + 1)
    lines.append("  " + " " * width + "".join(f"{c[:cell - 1]:>{cell}s}" for c in classes))
    for c, row in zip(classes, metrics["confusion_matrix"]):
        lines.append(f"  {c:>{width}s}" + "".join(f"{v:>{cell}d}" for v in row))
    return "\n".join(lines)



def write_json(out_dir, filename, result, log):
    """``result`` as indented JSON in ``out_dir/filename`` (the folder made
    if missing); logs "wrote PATH"."""
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, filename)
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    log(f"wrote {path}")
