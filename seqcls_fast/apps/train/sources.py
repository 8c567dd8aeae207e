"""Where the training data comes from, checked and ready: a UEA set through
aeon, a pair of ``.ts`` files, or a ``.npz`` (see :data:`NPZ_LAYOUT`), turned
into per-sequence ``[T_i, C]`` float32 arrays; labels encoded to class
indices; each split checked (:class:`DataError` with a one-line message when
something is wrong); per-channel standardization fitted on the train split.
:func:`add_data_arguments` declares the options that pick the data, for each
command that reads it.
"""
import math
import os

import numpy as np
import torch


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


def _load_ts(path, which, require_labels=True):
    """(sequences, labels or None, class order or None) of a .ts file."""
    datasets = _aeon()
    try:
        X, y, meta = datasets.load_from_ts_file(path, return_meta_data=True)
    except Exception as e:  # noqa: BLE001
        raise DataError(f"--data {path}: aeon could not read this .ts file: "
                        f"{type(e).__name__}: {e}") from e
    if not meta.get("classlabel") or y is None or len(y) == 0:
        if not require_labels:
            return _to_sequences(X, f"--data {path}"), None, None
        raise DataError(f"--data {path}: the {which} file has no class labels "
                        "(@classLabel true <labels> in the header, a label at the end of each "
                        "line)")
    return _to_sequences(X, f"--data {path}"), y, meta.get("class_values") or None


def _npz_split(z, split, path, allow_pickle, require_labels=True):
    """(sequences, labels) of one split of a .npz; labels None when the split
    has none and ``require_labels`` is false."""
    keys = set(z.files)
    suffix = f"_{split}" if split else ""  # "": the single-split keys X, y, lengths
    xk, yk, lk = f"X{suffix}", f"y{suffix}", f"lengths{suffix}"
    if xk not in keys:
        raise DataError(f"--data {path}: no {xk} array (has {sorted(keys)}).\n{NPZ_LAYOUT}")
    if yk not in keys and require_labels:
        raise DataError(f"--data {path}: {xk} has no labels: missing {yk}.\n{NPZ_LAYOUT}")
    try:
        X = z[xk]
        y = z[yk] if yk in keys else None
        lengths = z[lk] if lk in keys else None
    except ValueError as e:  # object arrays without allow_pickle
        raise DataError(f"--data {path}: {xk} is an object array (a list of arrays); loading "
                        "it unpickles code-capable data, so pass --allow-pickle if you trust "
                        f"the file, or save the pickle-free ragged form.\n{NPZ_LAYOUT}") from e
    if y is not None and y.ndim != 1:
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
    if y is not None and len(seqs) != len(y):
        raise DataError(f"--data {path}: {len(seqs)} sequences in {xk} but {len(y)} labels in "
                        f"{yk}")
    return seqs, y


def add_data_arguments(parser, dataset_help, data_help):
    """--dataset or --data (one of them, required), --download and
    --allow-pickle on ``parser``: what :func:`load_data` reads. The help of
    the first two is the command's own."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--dataset", help=dataset_help)
    source.add_argument("--data", nargs="+", metavar="PATH", help=data_help)
    parser.add_argument("--download", action="store_true",
                        help="let aeon download a --dataset it does not ship (needs network)")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="allow a .npz with object arrays (unpickles; trusted files only)")


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


def load_prediction_data(path, split=None, allow_pickle=False):
    """New data for ``seqcls-fast predict``: -> (name, sequences [T_i, C],
    labels or None). A .ts file (labels optional), or a .npz with ``X``
    (``lengths``, ``y`` optional; the layouts of NPZ_LAYOUT without a split
    suffix) or with ``X_<split>`` (``split``: default test)."""
    if not os.path.isfile(path):
        raise DataError(f"--data {path}: no such file")
    name = os.path.splitext(os.path.basename(path))[0]
    if path.endswith(".ts"):
        seqs, labels, _ = _load_ts(path, "data", require_labels=False)
        return name, seqs, labels
    if not path.endswith(".npz"):
        raise DataError(f"--data {path}: expected a .ts file (aeon's format) or a .npz")
    try:
        z = np.load(path, allow_pickle=allow_pickle)
    except Exception as e:  # noqa: BLE001
        raise DataError(f"--data {path}: not a readable .npz: {type(e).__name__}: {e}") from e
    with z:
        if split is None:
            split = "" if "X" in z.files else "test"
        seqs, labels = _npz_split(z, split, path, allow_pickle, require_labels=False)
    return name, seqs, labels


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


def standardize(seqs, mean, std):
    """[T_i, C] arrays -> float32 tensors, (x - mean) / std per channel."""
    return [torch.from_numpy((s - mean) / std) for s in seqs]


def load_checked_data(args):
    """load_data, then both splits checked and their channel counts compared:
    -> (name, (train_seqs, train_y), (test_seqs, test_y), class order or None,
    channels)."""
    name, (tr_x, tr_y), (te_x, te_y), classes = load_data(args)
    channels = check_split(tr_x, tr_y, "train")
    test_channels = check_split(te_x, te_y, "test")
    if test_channels != channels:
        raise DataError(f"the train split has {channels} channels but the test split has "
                        f"{test_channels}")
    return name, (tr_x, tr_y), (te_x, te_y), classes, channels
