"""The pictures of a training run, next to its metrics.json (needs
matplotlib, the ``report`` extra): ``training_curves.png`` (training loss and
validation accuracy per epoch, one line per run, the chosen epoch marked) and
``confusion_matrix.png`` (the test confusion matrix of the seqcls_fast runs,
summed over seeds).
"""
import os

import numpy as np


def write_plots(out_dir, result, classes, log):
    """Both PNGs into ``out_dir``; without matplotlib, one line saying so."""
    try:
        from matplotlib.figure import Figure  # no pyplot: no global backend state
    except ImportError:
        log("no plots (matplotlib is not installed: pip install 'seqcls_fast[report]')")
        return []
    paths = [_training_curves(Figure, out_dir, result), _confusion(Figure, out_dir, result,
                                                                   classes)]
    for path in paths:
        log(f"wrote {path}")
    return paths


def _training_curves(Figure, out_dir, result):
    fig = Figure(figsize=(10, 3.8))
    loss_ax, val_ax = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for run in result["runs"]:
        train = run["train"]
        label = f"{run['impl']} seed {run['seed']}"
        epochs = np.arange(1, len(train["epoch_loss"]) + 1)
        line, = loss_ax.plot(epochs, train["epoch_loss"], lw=1, label=label)
        if train.get("val_accuracy"):
            val_ax.plot(epochs, train["val_accuracy"], lw=1, color=line.get_color(), label=label)
            chosen = train["chosen_epoch"]
            val_ax.plot([chosen], [train["val_accuracy"][chosen - 1]], "o",
                        color=line.get_color())
    loss_ax.set_yscale("log")
    loss_ax.set_xlabel("epoch")
    loss_ax.set_ylabel("training loss (cross-entropy)")
    val_ax.set_xlabel("epoch")
    val_ax.set_ylabel("validation accuracy (dot: chosen epoch)")
    val_ax.set_ylim(0, 1.02)
    for ax in (loss_ax, val_ax):
        ax.grid(alpha=0.3)
    if len(result["runs"]) <= 10:
        loss_ax.legend(fontsize=7)
    fig.suptitle(f"{result['dataset']}: training", fontsize=10)
    fig.tight_layout()
    path = os.path.join(out_dir, "training_curves.png")
    fig.savefig(path, dpi=110)
    return path


def _confusion(Figure, out_dir, result, classes):
    runs = [r for r in result["runs"] if r["impl"] == "seqcls_fast"]
    counts = np.sum([np.array(r["test"]["confusion_matrix"]) for r in runs], axis=0)
    size = 2.5 + 0.45 * len(classes)
    fig = Figure(figsize=(size + 1, size))
    ax = fig.add_subplot()
    image = ax.imshow(counts, cmap="Blues")
    fig.colorbar(image, ax=ax, fraction=0.046)
    ticks = np.arange(len(classes))
    ax.set_xticks(ticks, [str(c) for c in classes], rotation=45, ha="right", fontsize=8)
    ax.set_yticks(ticks, [str(c) for c in classes], fontsize=8)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if len(classes) <= 20:
        for (i, j), v in np.ndenumerate(counts):
            ax.text(j, i, str(int(v)), ha="center", va="center", fontsize=7,
                    color="white" if v > counts.max() / 2 else "black")
    over = f", summed over {len(runs)} seeds" if len(runs) > 1 else ""
    ax.set_title(f"{result['dataset']}: test confusion matrix{over}\n"
                 f"accuracy {result['test_accuracy_mean']:.4f}", fontsize=9)
    fig.tight_layout()
    path = os.path.join(out_dir, "confusion_matrix.png")
    fig.savefig(path, dpi=110)
    return path
