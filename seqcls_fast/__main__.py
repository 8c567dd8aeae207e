"""Command line: ``python -m seqcls_fast {bench,train,stream,predict} ...`` (also the
``seqcls-fast`` console script): a dispatcher to the apps in seqcls_fast/apps/."""
import sys

COMMANDS = {
    "bench": "compare against nn.LSTM (+ packing) and other RNN libraries",
    "train": "train a classifier on a UEA dataset or your own data",
    "stream": "early classification: a checkpoint's accuracy after 10%, 20%, ... of each sequence",
    "predict": "a checkpoint's predicted classes and probabilities for new data, as CSV",
}


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print("usage: seqcls-fast {bench,train,stream,predict} [options]   "
              "(-h after a command for its options)")
        for name, what in COMMANDS.items():
            print(f"  {name:6s} {what}")
        return 0 if argv[:1] in ([], ["-h"], ["--help"]) else 2
    command, rest = argv[0], argv[1:]
    # The apps are imported here, for the command run: never by `import seqcls_fast`.
    if command == "bench":
        from .apps.bench import main as run
    elif command == "train":
        from .apps.train import main as run
    elif command == "stream":
        from .apps.stream_cli import main as run
    else:
        from .apps.predict_cli import main as run
    return run(rest)


if __name__ == "__main__":
    sys.exit(main())
