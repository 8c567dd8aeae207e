"""``python -m seqcls_fast train``: train and evaluate an LSTM classifier on
variable-length sequences (a UEA set shipped with aeon, or your own data).

    python -m seqcls_fast train --dataset JapaneseVowels
    python -m seqcls_fast train --dataset JapaneseVowels --baseline native
    python -m seqcls_fast train --data my_TRAIN.ts            # my_TEST.ts beside it
    python -m seqcls_fast train --data train.ts test.ts
    python -m seqcls_fast train --data mydata.npz
    python -m seqcls_fast train --dataset JapaneseVowels --checkpoint out/train/JapaneseVowels/model.pt
    torchrun --nproc_per_node 2 -m seqcls_fast train --dataset JapaneseVowels

Needs the ``[data]`` extra (aeon, scikit-learn, tqdm). See NPZ_LAYOUT for the
``.npz`` form. Writes ``model.pt`` (a dict whose ``"state_dict"`` is the
model's state_dict, plus what evaluation needs: classes, standardization,
model options) and ``metrics.json`` into ``--out``.
"""
import argparse
import json
import math
import os
import platform
import sys
import time

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from .data import LengthBucketSampler, SequenceDataset, collate

# Sets aeon ships inside its wheel (aeon/datasets/data/<name>/) that are
# variable-length or multivariate classification problems of interest here.
KNOWN_DATASETS = ("JapaneseVowels", "PickupGestureWiimoteZ", "BasicMotions")

NPZ_LAYOUT = """\
.npz layout (keys; "test" arrays as "train" ones; labels any int or str dtype):
  X_train  one of
           - float [N, T, C]: N equal-length sequences (C channels); with an
             optional lengths_train int [N], sequence i is X_train[i, :lengths_train[i]]
           - float [sum of lengths, C] with lengths_train int [N]: the N
             sequences concatenated along time (ragged, no pickle needed)
           - object [N] of float [T_i, C] arrays (np.savez(..., X_train=np.array(
             list_of_arrays, dtype=object))); needs --allow-pickle to load
  y_train  [N] class labels
  X_test, y_test (and lengths_test) likewise
Write the ragged form with
  np.savez(path, X_train=np.concatenate(train_seqs), lengths_train=[len(s) for s in train_seqs],
           y_train=train_labels, X_test=..., lengths_test=..., y_test=...)"""


class DataError(ValueError):
    """Bad or missing input data; the CLI prints the message and exits 2."""


# ----------------------------------------------------------------- data loading
def _aeon():
    try:
        import aeon.datasets as datasets
    except ImportError as e:
        raise DataError("loading data needs aeon: pip install 'seqcls_fast[data]' "
                        "(aeon, scikit-learn, tqdm)") from e
    return datasets


def _aeon_local_dirs():
    datasets = _aeon()
    dirs = [os.path.join(os.path.dirname(datasets.__file__), "data")]
    try:  # where load_classification caches downloads (private helper)
        from aeon.datasets._data_loaders import _get_data_home
        dirs.append(_get_data_home())
    except Exception:  # noqa: BLE001  (older/newer aeon: bundled only)
        pass
    return dirs


def _has_local(name):
    for root in _aeon_local_dirs():
        folder = os.path.join(root, name)
        if (os.path.isfile(os.path.join(folder, f"{name}_TRAIN.ts"))
                and os.path.isfile(os.path.join(folder, f"{name}_TEST.ts"))):
            return True
    return False


def _to_sequences(X, where):
    """aeon's X (ndarray [N, C, T] or list of [C, T_i]) -> list of [T_i, C] float32."""
    if isinstance(X, np.ndarray) and X.dtype != object:
        if X.ndim == 2:  # univariate equal length squashed to [N, T]
            X = X[:, None, :]
        if X.ndim != 3:
            raise DataError(f"{where}: expected [N, C, T] series, got shape {X.shape}")
        return [np.ascontiguousarray(x.T, dtype=np.float32) for x in X]
    seqs = []
    for i, x in enumerate(X):
        x = np.asarray(x, dtype=np.float32)
        if x.ndim == 1:
            x = x[None, :]
        if x.ndim != 2:
            raise DataError(f"{where}: series {i} has shape {x.shape}, expected [C, T]")
        seqs.append(np.ascontiguousarray(x.T))
    return seqs


def load_aeon_dataset(name, download=False):
    """(train, test, classes) of a classification set through aeon's loader."""
    datasets = _aeon()
    if not _has_local(name):
        from aeon.datasets.tsc_datasets import multivariate, univariate
        listed = name in set(univariate) | set(multivariate)
        if not listed:
            raise DataError(
                f"--dataset {name}: not a time series classification set aeon knows (see "
                "aeon.datasets.tsc_datasets.univariate / multivariate; names are case-sensitive); "
                f"aeon ships {', '.join(KNOWN_DATASETS)} offline. For your own data use --data.")
        if not download:
            raise DataError(
                f"--dataset {name}: aeon does not ship this set offline. Get it with --download "
                f"(aeon fetches it from Zenodo into its data cache, needs network), or download "
                f"{name}_TRAIN.ts and {name}_TEST.ts from https://timeseriesclassification.com "
                f"and pass --data {name}_TRAIN.ts {name}_TEST.ts. Offline sets: "
                f"{', '.join(KNOWN_DATASETS)}.")
    splits = {}
    meta = None
    for split in ("train", "test"):
        try:
            X, y, meta = datasets.load_classification(name, split=split, return_metadata=True,
                                                      load_equal_length=False)
        except Exception as e:  # noqa: BLE001  (aeon raises many kinds)
            raise DataError(f"--dataset {name}: aeon could not load the {split} split: "
                            f"{type(e).__name__}: {e}") from e
        splits[split] = (_to_sequences(X, f"{name} {split}"), y)
    return splits["train"], splits["test"], (meta or {}).get("class_values") or None


def _load_ts(path, which):
    datasets = _aeon()
    try:
        X, y, meta = datasets.load_from_ts_file(path, return_meta_data=True)
    except Exception as e:  # noqa: BLE001
        raise DataError(f"--data {path}: aeon could not read this .ts file: "
                        f"{type(e).__name__}: {e}") from e
    if not meta.get("classlabel") or y is None or len(y) == 0:
        raise DataError(f"--data {path}: the {which} file has no class labels "
                        "(@classLabel true <labels> in the header, a label at the end of each "
                        "line)")
    return _to_sequences(X, f"--data {path}"), y, meta.get("class_values") or None


def _npz_split(z, split, path, allow_pickle):
    keys = set(z.files)
    xk, yk, lk = f"X_{split}", f"y_{split}", f"lengths_{split}"
    if xk not in keys:
        raise DataError(f"--data {path}: no {xk} array (has {sorted(keys)}).\n{NPZ_LAYOUT}")
    if yk not in keys:
        raise DataError(f"--data {path}: {xk} has no labels: missing {yk}.\n{NPZ_LAYOUT}")
    try:
        X = z[xk]
        y = z[yk]
        lengths = z[lk] if lk in keys else None
    except ValueError as e:  # object arrays without allow_pickle
        raise DataError(f"--data {path}: {xk} is an object array (a list of arrays); loading "
                        "it unpickles code-capable data, so pass --allow-pickle if you trust "
                        f"the file, or save the pickle-free ragged form.\n{NPZ_LAYOUT}") from e
    if y.ndim != 1:
        raise DataError(f"--data {path}: {yk} must be 1-D [N], got shape {y.shape}")
    if X.dtype == object:
        seqs = []
        for i, x in enumerate(X):
            x = np.asarray(x)
            if x.ndim == 1:
                x = x[:, None]
            if x.ndim != 2 or not np.issubdtype(x.dtype, np.number):
                raise DataError(f"--data {path}: {xk}[{i}] must be a numeric [T_i, C] array, got "
                                f"{x.dtype} of shape {x.shape}")
            seqs.append(x.astype(np.float32))
        channels = {s.shape[1] for s in seqs}
        if len(channels) > 1:
            bad = next(i for i, s in enumerate(seqs) if s.shape[1] != seqs[0].shape[1])
            raise DataError(f"--data {path}: ragged {xk} has inconsistent channel counts "
                            f"{sorted(channels)} (sequence 0 has {seqs[0].shape[1]}, sequence "
                            f"{bad} has {seqs[bad].shape[1]}); every [T_i, C] array needs the "
                            "same C")
    elif not np.issubdtype(X.dtype, np.number):
        raise DataError(f"--data {path}: {xk} must be numeric, got dtype {X.dtype}")
    elif X.ndim == 3:
        if lengths is not None:
            lengths = np.asarray(lengths)
            if lengths.shape != (X.shape[0],) or (lengths < 1).any() or (lengths > X.shape[1]).any():
                raise DataError(f"--data {path}: {lk} must be [N={X.shape[0]}] ints in "
                                f"[1, T={X.shape[1]}]")
            seqs = [X[i, : int(n)].astype(np.float32) for i, n in enumerate(lengths)]
        else:
            seqs = [x.astype(np.float32) for x in X]
    elif X.ndim == 2:
        if lengths is None:
            raise DataError(f"--data {path}: 2-D {xk} {X.shape} needs {lk} (the ragged form: "
                            f"sequences concatenated along time); for equal-length univariate "
                            f"data save X as [N, T, 1].\n{NPZ_LAYOUT}")
        lengths = np.asarray(lengths)
        if lengths.ndim != 1 or (lengths < 1).any() or int(lengths.sum()) != X.shape[0]:
            raise DataError(f"--data {path}: {lk} must be 1-D positive ints summing to "
                            f"{xk}.shape[0] = {X.shape[0]}, got sum {int(lengths.sum())}")
        seqs = ([s.astype(np.float32) for s in np.split(X, np.cumsum(lengths)[:-1])]
                if len(lengths) else [])
    else:
        raise DataError(f"--data {path}: {xk} must be [N, T, C], [sum T_i, C] with {lk}, or an "
                        f"object array of [T_i, C]; got shape {X.shape}.\n{NPZ_LAYOUT}")
    if len(seqs) != len(y):
        raise DataError(f"--data {path}: {len(seqs)} sequences in {xk} but {len(y)} labels in "
                        f"{yk}")
    return seqs, y


def load_data(args):
    """-> (name, (train_seqs, train_y), (test_seqs, test_y), class order or None)."""
    if args.dataset:
        train, test, classes = load_aeon_dataset(args.dataset, download=args.download)
        return args.dataset, train, test, classes
    paths = args.data
    for p in paths:
        if not os.path.isfile(p):
            raise DataError(f"--data {p}: no such file")
    if len(paths) > 2:
        raise DataError("--data takes one path (a .npz, or a *_TRAIN.ts with its *_TEST.ts "
                        "beside it) or two (train.ts test.ts)")
    first = paths[0]
    if first.endswith(".npz"):
        if len(paths) != 1:
            raise DataError("--data: a .npz holds both splits; give it alone")
        try:
            z = np.load(first, allow_pickle=args.allow_pickle)
        except Exception as e:  # noqa: BLE001
            raise DataError(f"--data {first}: not a readable .npz: {type(e).__name__}: {e}") from e
        with z:
            train = _npz_split(z, "train", first, args.allow_pickle)
            test = _npz_split(z, "test", first, args.allow_pickle)
        name = os.path.splitext(os.path.basename(first))[0]
        return name, train, test, None
    if not first.endswith(".ts"):
        raise DataError(f"--data {first}: expected a .ts file (aeon's format) or a .npz")
    if len(paths) == 2:
        train_path, test_path = paths
    else:
        base = os.path.basename(first)
        if "_TRAIN" not in base:
            raise DataError(f"--data {first}: with one .ts file its name must contain _TRAIN "
                            "(the test file is the same name with _TEST); or give both files: "
                            "--data train.ts test.ts")
        test_path = os.path.join(os.path.dirname(first), base.replace("_TRAIN", "_TEST"))
        train_path = first
        if not os.path.isfile(test_path):
            raise DataError(f"--data {first}: its test file {test_path} does not exist; give "
                            "both: --data train.ts test.ts")
    tr_x, tr_y, classes = _load_ts(train_path, "train")
    te_x, te_y, _ = _load_ts(test_path, "test")
    name = os.path.basename(train_path).replace("_TRAIN", "").rsplit(".", 1)[0]
    return name, (tr_x, tr_y), (te_x, te_y), classes


def _label_key(label):
    try:
        return (0, float(label), "")
    except (TypeError, ValueError):
        return (1, 0.0, str(label))


def encode_labels(train_y, test_y, classes=None):
    """Labels -> int64 indices into ``classes`` (given order, else sorted,
    numerically when the labels are numbers)."""
    train_y = [y.item() if hasattr(y, "item") else y for y in train_y]
    test_y = [y.item() if hasattr(y, "item") else y for y in test_y]
    if classes is None:
        classes = sorted(set(train_y), key=_label_key)
    classes = [c.item() if hasattr(c, "item") else c for c in classes]
    if len(classes) < 2:
        raise DataError(f"the train split has only {len(classes)} class ({classes}); need >= 2")
    lookup = {str(c): i for i, c in enumerate(classes)}
    out = []
    for split, ys in (("train", train_y), ("test", test_y)):
        idx = []
        for y in ys:
            if y is None or (isinstance(y, float) and math.isnan(y)) or str(y) == "":
                raise DataError(f"{split} split: a label is missing (empty/NaN)")
            if str(y) not in lookup:
                raise DataError(f"{split} split: label {y!r} is not one of the training classes "
                                f"{classes}")
            idx.append(lookup[str(y)])
        out.append(np.asarray(idx, dtype=np.int64))
    return out[0], out[1], [str(c) for c in classes]


def check_split(seqs, labels, split):
    if len(seqs) == 0:
        raise DataError(f"the {split} split is empty (0 sequences)")
    if len(labels) != len(seqs):
        raise DataError(f"the {split} split has {len(seqs)} sequences but {len(labels)} labels")
    channels = seqs[0].shape[1]
    for i, s in enumerate(seqs):
        if s.shape[1] != channels:
            raise DataError(f"the {split} split has inconsistent channel counts: sequence 0 has "
                            f"{channels}, sequence {i} has {s.shape[1]}")
        if s.shape[0] == 0:
            raise DataError(f"the {split} split: sequence {i} has length 0")
        if not np.isfinite(s).all():
            raise DataError(f"the {split} split: sequence {i} has NaN/inf values (missing "
                            "values); impute or drop them first")
    return channels


def fit_standardization(seqs):
    """Per-channel mean and std over every time step of the training split."""
    cat = np.concatenate(seqs, axis=0).astype(np.float64)
    mean = cat.mean(axis=0)
    std = cat.std(axis=0)
    std[std < 1e-8] = 1.0
    return mean.astype(np.float32), std.astype(np.float32)


# ------------------------------------------------------------------ the models
class NativeAttentionPooling(nn.Module):
    """Masked attention pooling in plain PyTorch, the same parameters
    (``query``, ``proj``) and math as sf.MaskedAttentionPooling."""

    def __init__(self, hidden_size, attn_dim=None):
        super().__init__()
        self.proj = nn.Linear(hidden_size, attn_dim) if attn_dim else None
        self.query = nn.Parameter(torch.empty(attn_dim or hidden_size))
        nn.init.normal_(self.query, std=1.0 / math.sqrt(self.query.numel()))
        if self.proj is not None:
            self.proj.reset_parameters()

    def forward(self, outputs, lengths):
        keys = torch.tanh(self.proj(outputs)) if self.proj is not None else outputs
        scores = keys @ self.query  # [B, T]
        steps = torch.arange(outputs.size(1), device=outputs.device)
        valid = steps.unsqueeze(0) < lengths.to(outputs.device).unsqueeze(1)
        weights = torch.softmax(scores.masked_fill(~valid, float("-inf")), dim=1)
        return (weights.unsqueeze(2) * outputs).sum(dim=1), weights


class NativeClassifier(nn.Module):
    """The baseline: ``nn.LSTM`` on a ``PackedSequence``, then the same
    pooling and head as sf.LSTMClassifier, with the same parameter names (the
    state_dicts are interchangeable) and the same construction order (the
    same seed gives the same initial weights)."""

    def __init__(self, input_size, hidden_size, num_classes, num_layers=1, bidirectional=False,
                 dropout=0.0, pooling="attention", attn_dim=None):
        super().__init__()
        self.pooling = pooling
        self.embedding = None
        self.lstm = nn.LSTM(input_size, hidden_size, num_layers, batch_first=True,
                            dropout=dropout if num_layers > 1 else 0.0,
                            bidirectional=bidirectional)
        features = hidden_size * (2 if bidirectional else 1)
        self.pool = NativeAttentionPooling(features, attn_dim) if pooling == "attention" else None
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(features, num_classes)

    def forward(self, x, lengths):
        lengths_cpu = lengths.cpu()
        packed = pack_padded_sequence(x, lengths_cpu, batch_first=True, enforce_sorted=False)
        packed_out, (h_n, _c_n) = self.lstm(packed)
        outputs, _ = pad_packed_sequence(packed_out, batch_first=True, total_length=x.size(1))
        if self.pooling == "attention":
            features, _ = self.pool(outputs, lengths)
        elif self.pooling == "mean":
            features = outputs.sum(dim=1) / lengths.to(outputs).unsqueeze(1)
        else:
            top = h_n[-2:] if self.lstm.bidirectional else h_n[-1:]
            features = torch.cat(tuple(top), dim=1)
        return self.head(self.dropout(features))


def build_model(impl, config):
    if impl == "native":
        return NativeClassifier(**config)
    import seqcls_fast as sf
    return sf.LSTMClassifier(**config)


# ------------------------------------------------------------------ run helpers
def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="seqcls-fast train",
        description="Train an LSTM classifier (seqcls_fast kernels) on variable-length "
                    "sequences and report test accuracy, per-class precision/recall/F1 and the "
                    "confusion matrix. Runs under torchrun --nproc_per_node N with "
                    "DistributedDataParallel.",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=NPZ_LAYOUT)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--dataset", help=f"a UEA set through aeon ({', '.join(KNOWN_DATASETS)} "
                     "ship offline)")
    src.add_argument("--data", nargs="+", metavar="PATH",
                     help="your data: X_TRAIN.ts (X_TEST.ts beside it), train.ts test.ts, or a "
                          ".npz (layout below)")
    p.add_argument("--download", action="store_true",
                   help="let aeon download a --dataset it does not ship (needs network)")
    p.add_argument("--allow-pickle", action="store_true",
                   help="allow a .npz with object arrays (unpickles; trusted files only)")
    m = p.add_argument_group("model")
    m.add_argument("--hidden-size", type=int, default=128)
    m.add_argument("--num-layers", type=int, default=1)
    m.add_argument("--bidirectional", action=argparse.BooleanOptionalAction, default=True)
    m.add_argument("--dropout", type=float, default=0.3,
                   help="before the head (and between LSTM layers)")
    m.add_argument("--pooling", choices=("attention", "mean", "last"), default="mean")
    m.add_argument("--attn-dim", type=int, default=None,
                   help="additive attention width (default: dot-product attention)")
    o = p.add_argument_group("optimization")
    o.add_argument("--optimizer", choices=("adam", "adamw", "sgd"), default="adam")
    o.add_argument("--lr", type=float, default=3e-3)
    o.add_argument("--weight-decay", type=float, default=0.0)
    o.add_argument("--schedule", choices=("cosine", "constant"), default="cosine",
                   help="learning-rate schedule over all steps")
    o.add_argument("--label-smoothing", type=float, default=0.0)
    o.add_argument("--noise", type=float, default=0.0,
                   help="std of Gaussian noise added to the (standardized) training inputs")
    o.add_argument("--clip-grad", type=float, default=1.0, help="max grad norm (0: off)")
    o.add_argument("--epochs", type=int, default=30)
    o.add_argument("--batch-size", type=int, default=16,
                   help="per process (the global batch is this times the number of processes)")
    o.add_argument("--seed", type=int, default=0)
    r = p.add_argument_group("run")
    r.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:N")
    r.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads per process (default 1: the per-step matrices of a "
                        "sequence classifier are small, and on a busy CPU more OpenMP threads "
                        "can make training many times slower; 0 keeps torch's default)")
    r.add_argument("--baseline", choices=("native",), default=None,
                   help="also run the same recipe with nn.LSTM + pack_padded_sequence")
    r.add_argument("--checkpoint", default=None,
                   help="evaluate this saved model.pt on the test split; no training")
    r.add_argument("--out", default=None, help="output folder (default out/train/<name>)")
    r.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    for name in ("hidden_size", "num_layers", "epochs", "batch_size"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if not 0.0 <= args.dropout < 1.0:
        p.error("--dropout must be in [0, 1)")
    if args.lr <= 0:
        p.error("--lr must be > 0")
    return args


def _device(spec, local_rank, distributed):
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(spec)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DataError(f"--device {spec}: CUDA is not available")
        if distributed and device.index is None:
            device = torch.device("cuda", local_rank)
    return device


def _optimizer(args, params):
    if args.optimizer == "sgd":
        return torch.optim.SGD(params, lr=args.lr, momentum=0.9, weight_decay=args.weight_decay)
    cls = torch.optim.AdamW if args.optimizer == "adamw" else torch.optim.Adam
    return cls(params, lr=args.lr, weight_decay=args.weight_decay)


def _to_tensors(seqs, mean, std):
    return [torch.from_numpy((s - mean) / std) for s in seqs]


@torch.no_grad()
def predict(model, dataset, device, batch_size=256):
    model.eval()
    sampler = LengthBucketSampler(dataset.lengths, batch_size, shuffle=False,
                                  num_replicas=1, rank=0)
    preds = torch.empty(len(dataset), dtype=torch.int64)
    for batch in sampler:
        x, lengths, _ = collate([dataset[i] for i in batch])
        logits = model(x.to(device), lengths.to(device))
        preds[torch.as_tensor(batch)] = logits.argmax(dim=1).cpu()
    return preds.numpy()


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


def train_model(impl, args, config, train_set, device, dist_info, log):
    """Train one model; returns (model (unwrapped), history dict)."""
    world, rank = dist_info
    torch.manual_seed(args.seed)  # same initial weights on every rank and for both impls
    model = build_model(impl, config).to(device)
    net = model
    if world > 1:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    sampler = LengthBucketSampler(train_set.lengths, args.batch_size, shuffle=True,
                                  seed=args.seed, num_replicas=world, rank=rank)
    loader = torch.utils.data.DataLoader(train_set, batch_sampler=sampler, collate_fn=collate)
    optimizer = _optimizer(args, model.parameters())
    total_steps = args.epochs * len(sampler)
    scheduler = (torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / total_steps)))
                 if args.schedule == "cosine" else None)
    progress = None
    if not args.no_progress and rank == 0:
        try:
            from tqdm.auto import tqdm as progress
        except ImportError:
            progress = None
    epoch_times, epoch_losses = [], []
    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        net.train()
        bar = (progress(total=len(sampler), desc=f"{impl} epoch {epoch + 1}/{args.epochs}",
                        leave=False, disable=None, dynamic_ncols=True) if progress else None)
        loss_sum = torch.zeros(2, dtype=torch.float64)
        start = time.perf_counter()
        for x, lengths, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if args.noise > 0:  # padding stays 0: the model never reads it anyway
                x = x + args.noise * torch.randn_like(x)
            logits = net(x, lengths.to(device))
            loss = F.cross_entropy(logits, y, label_smoothing=args.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if args.clip_grad > 0:
                nn.utils.clip_grad_norm_(model.parameters(), args.clip_grad)
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            loss_sum += torch.tensor([loss.item() * len(y), len(y)], dtype=torch.float64)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.4f}")
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
        if bar is not None:
            bar.close()
        if world > 1:
            torch.distributed.all_reduce(loss_sum)
        mean_loss = float(loss_sum[0] / loss_sum[1])
        epoch_times.append(seconds)
        epoch_losses.append(mean_loss)
        log(f"{impl:12s} epoch {epoch + 1:3d}/{args.epochs}  loss {mean_loss:.4f}  "
            f"{seconds:6.2f} s")
    return model, {"epoch_seconds": epoch_times, "epoch_loss": epoch_losses,
                   "train_seconds": float(sum(epoch_times)),
                   "mean_epoch_seconds": float(np.mean(epoch_times)),
                   "steps_per_epoch": len(sampler)}


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


def _save_checkpoint(path, model, impl, config, classes, mean, std, name):
    torch.save({"format": "seqcls_fast.train/1", "impl": impl, "dataset": name,
                "state_dict": model.state_dict(), "model": config, "classes": classes,
                "mean": torch.from_numpy(mean), "std": torch.from_numpy(std)}, path)


def _load_checkpoint(path):
    if not os.path.isfile(path):
        raise DataError(f"--checkpoint {path}: no such file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise DataError(f"--checkpoint {path}: not a loadable checkpoint: "
                        f"{type(e).__name__}: {e}") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != "seqcls_fast.train/1":
        raise DataError(f"--checkpoint {path}: not a model.pt written by seqcls-fast train")
    return ckpt


# ------------------------------------------------------------------------ main
def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    threads = torch.get_num_threads()
    try:
        return _run(args, argv)
    except DataError as e:
        print(f"seqcls-fast train: error: {e}", file=sys.stderr)
        return 2
    finally:
        torch.set_num_threads(threads)  # main() may run inside a bigger program
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _run(args, argv):
    started = time.perf_counter()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = _device(args.device, local_rank, world > 1)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    elif world > 1 and device.type == "cpu":
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    if world > 1:
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        torch.distributed.init_process_group(backend)
    log = (lambda msg: print(msg, flush=True)) if rank == 0 else (lambda msg: None)

    name, (tr_x, tr_y), (te_x, te_y), classes = load_data(args)
    channels = check_split(tr_x, tr_y, "train")
    test_channels = check_split(te_x, te_y, "test")
    if test_channels != channels:
        raise DataError(f"the train split has {channels} channels but the test split has "
                        f"{test_channels}")
    out_dir = args.out or os.path.join("out", "train", name)

    if args.checkpoint:
        ckpt = _load_checkpoint(args.checkpoint)
        classes = ckpt["classes"]
        _, te_idx, _ = encode_labels(tr_y[:0], te_y, classes)
        mean, std = ckpt["mean"].numpy(), ckpt["std"].numpy()
        if mean.shape[0] != channels:
            raise DataError(f"--checkpoint {args.checkpoint}: trained on {mean.shape[0]} "
                            f"channels, the data has {channels}")
        test_set = SequenceDataset(_to_tensors(te_x, mean, std), te_idx)
        model = build_model(ckpt["impl"], ckpt["model"]).to(device)
        model.load_state_dict(ckpt["state_dict"])
        metrics = evaluate(model, test_set, device, classes)
        log(format_report(name, ckpt["impl"], metrics, classes))
        result = {"command": "python -m seqcls_fast train " + " ".join(argv), "dataset": name,
                  "checkpoint": args.checkpoint, "evaluation_only": True, "classes": classes,
                  "n_test": len(test_set), "model": ckpt["model"], "impl": ckpt["impl"],
                  "test": metrics}
        if rank == 0:
            os.makedirs(out_dir, exist_ok=True)
            with open(os.path.join(out_dir, "eval_metrics.json"), "w") as f:
                json.dump(result, f, indent=1)
            log(f"wrote {os.path.join(out_dir, 'eval_metrics.json')}")
        return 0

    tr_idx, te_idx, classes = encode_labels(tr_y, te_y, classes)
    mean, std = fit_standardization(tr_x)  # train split only
    train_set = SequenceDataset(_to_tensors(tr_x, mean, std), tr_idx)
    test_set = SequenceDataset(_to_tensors(te_x, mean, std), te_idx)
    config = {"input_size": channels, "hidden_size": args.hidden_size,
              "num_classes": len(classes), "num_layers": args.num_layers,
              "bidirectional": args.bidirectional, "dropout": args.dropout,
              "pooling": args.pooling, "attn_dim": args.attn_dim}
    lens_tr, lens_te = train_set.lengths, test_set.lengths
    log(f"{name}: {len(train_set)} train / {len(test_set)} test sequences, {channels} channels, "
        f"{len(classes)} classes, lengths {int(lens_tr.min())}-{int(lens_tr.max())} (train) "
        f"{int(lens_te.min())}-{int(lens_te.max())} (test); device {device}, "
        f"{world} process(es), {torch.get_num_threads()} thread(s) each")

    result = {
        "command": "python -m seqcls_fast train " + " ".join(argv)
                   if world == 1 else
                   f"torchrun --nproc_per_node {world} -m seqcls_fast train " + " ".join(argv),
        "dataset": name, "n_train": len(train_set), "n_test": len(test_set),
        "channels": channels, "classes": classes,
        "train_lengths": [int(lens_tr.min()), int(lens_tr.max())],
        "test_lengths": [int(lens_te.min()), int(lens_te.max())],
        "model": config,
        "optim": {k: getattr(args, k) for k in ("optimizer", "lr", "weight_decay", "schedule",
                                                "clip_grad", "epochs", "batch_size", "seed",
                                                "label_smoothing", "noise")},
        "standardization": "per-channel mean/std over all train time steps",
        "device": str(device), "world_size": world, "threads": torch.get_num_threads(),
        "torch": torch.__version__, "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
        "runs": {},
    }
    impls = ["seqcls_fast"] + (["native"] if args.baseline == "native" else [])
    if rank == 0:
        os.makedirs(out_dir, exist_ok=True)
    for impl in impls:
        model, history = train_model(impl, args, config, train_set, device, (world, rank), log)
        metrics = evaluate(model, test_set, device, classes)
        log(format_report(name, impl, metrics, classes))
        log(f"{impl}: {history['mean_epoch_seconds']:.3f} s/epoch, "
            f"{history['train_seconds']:.1f} s training")
        result["runs"][impl] = {"train": history, "test": metrics}
        if rank == 0:
            path = os.path.join(out_dir, "model.pt" if impl == "seqcls_fast"
                                else f"model_{impl}.pt")
            _save_checkpoint(path, model, impl, config, classes, mean, std, name)
            result["runs"][impl]["checkpoint"] = path
    if len(impls) > 1:
        ours, base = result["runs"]["seqcls_fast"], result["runs"]["native"]
        log(f"\n{'':12s} {'test acc':>9s} {'macro F1':>9s} {'s/epoch':>9s} {'train s':>9s}")
        for impl in impls:
            r = result["runs"][impl]
            log(f"{impl:12s} {r['test']['accuracy']:9.4f} {r['test']['macro_f1']:9.4f} "
                f"{r['train']['mean_epoch_seconds']:9.3f} {r['train']['train_seconds']:9.1f}")
        result["speedup_vs_native"] = (base["train"]["train_seconds"]
                                       / ours["train"]["train_seconds"])
        log(f"training speedup vs native: {result['speedup_vs_native']:.2f}x")
    result["elapsed_seconds"] = time.perf_counter() - started  # data loading to here
    if rank == 0:
        path = os.path.join(out_dir, "metrics.json")
        with open(path, "w") as f:
            json.dump(result, f, indent=1)
        log(f"wrote {path}")
    if world > 1:
        torch.distributed.barrier()
    return 0
