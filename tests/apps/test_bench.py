"""`seqcls-fast bench` end to end on tiny cases, and its agreement check."""
import importlib.util
import json

import pytest
import torch

from seqcls_fast.apps import bench

TINY = ["--batch", "4", "--input-size", "8", "--hidden-size", "16", "--repeats", "2",
        "--device", "cpu"]


def run_bench(tmp_path, *options):
    path = tmp_path / "record.json"
    assert bench.main([*TINY, *options, "--json", str(path)]) == 0
    return json.loads(path.read_text())


def methods_of(result):
    return {record["name"]: record for record in result["methods"]}


def test_bench_runs_end_to_end_and_writes_a_valid_record(tmp_path, capsys):
    record = run_bench(tmp_path, "--seq-len", "12", "--bidirectional", "--mode", "both")
    env = record["environment"]
    assert env["torch_version"] == torch.__version__
    assert env["device"] == "cpu" and env["threads"] == torch.get_num_threads()
    assert [(r["case"]["seq_len"], r["mode"]) for r in record["results"]] == [
        (12, "inference"), (12, "train")]
    for result in record["results"]:
        assert result["case"]["bidirectional"] is True and result["repeats"] == 2
        methods = methods_of(result)
        assert list(methods) == list(bench.METHODS)
        for name in ("ours", "packed"):
            assert methods[name]["status"] == "ok", methods[name]
            assert len(methods[name]["times_ms"]) == 2
            assert all(t > 0 for t in methods[name]["times_ms"])
            assert methods[name]["q1_ms"] <= methods[name]["median_ms"] <= methods[name]["q3_ms"]
            assert methods[name]["peak_memory_bytes"] is None or methods[name]["peak_memory_bytes"] >= 0
        assert methods["packed"]["speedup_of_ours"] > 0
        if result["mode"] == "train":
            assert "grad weight_hh_l0_reverse" in methods["packed"]["errors"]
            assert methods["ours-low"]["status"] == "ok", methods["ours-low"]
            assert methods["ours-low"]["errors"]["grad weight_hh_l0_reverse"] < 1e-5
        else:
            assert methods["ours-low"]["status"] == "skipped"
        # Padded nn.LSTM ignores lengths: wrong when bidirectional, still timed.
        assert methods["padded"]["status"] == "wrong"
        assert "reverse direction" in methods["padded"]["note"]
        assert len(methods["padded"]["times_ms"]) == 2
        for name in ("flashrnn", "haste"):
            assert methods[name]["status"] in ("skipped", "error")
            assert methods[name]["note"] and not methods[name]["times_ms"]
        # The probe ran before each kept round of each group (ORT's rounds,
        # timed apart, are a group of their own).
        probe = result["machine_probe"]
        groups = 1 + bool(methods["ort"]["times_ms"])
        assert len(probe["times_ms"]) == 2 * groups and all(t > 0 for t in probe["times_ms"])
        assert probe["min_ms"] <= probe["median_ms"] and probe["median_gflops"] > 0
    assert "torch.mm" in record["machine_probe"]
    table = capsys.readouterr().out
    assert "speedup" in table and "packed" in table and "machine probe" in table


def test_onnx_runtime_agrees_in_inference_and_is_skipped_in_train(tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    record = run_bench(tmp_path, "--seq-len", "10", "--mode", "both")
    inference, train = (methods_of(result)["ort"] for result in record["results"])
    assert inference["status"] == "ok", inference
    assert inference["errors"]["logits"] <= record["results"][0]["tolerance"]
    assert len(inference["times_ms"]) == 2 and inference["speedup_of_ours"] > 0
    assert train["status"] == "skipped" and train["note"] == "inference only"
    assert train["times_ms"] == []

def test_gru_cell_runs_against_nn_gru_and_onnx_runtimes_gru(tmp_path):
    """--cell gru: every method on a GRU classifier; ours agrees with packed
    nn.GRU (logits and every recurrent gradient) and with ONNX Runtime's GRU
    where onnx is installed; the LSTM-only methods say why they are skipped."""
    record = run_bench(tmp_path, "--seq-len", "10", "--mode", "both", "--cell", "gru")
    for result in record["results"]:
        assert result["case"]["cell"] == "gru" and "cell gru" in result["label"]
        methods = methods_of(result)
        assert methods["packed"]["status"] == "ok", methods["packed"]
        assert methods["padded"]["status"] == "ok", methods["padded"]
        for name in ("flashrnn", "haste"):
            assert methods[name]["status"] == "skipped", methods[name]
        if result["mode"] == "train":
            assert methods["ours-low"]["status"] == "ok", methods["ours-low"]
            assert methods["ours-low"]["errors"]["grad weight_hh_l0"] < 1e-5
            assert methods["packed"]["errors"]["grad weight_hh_l0"] < 1e-5
            assert "grad bias_hh_l0" in methods["packed"]["errors"]
    ort = methods_of(record["results"][0])["ort"]
    if importlib.util.find_spec("onnx") and importlib.util.find_spec("onnxruntime"):
        assert ort["status"] == "ok", ort
        assert ort["errors"]["logits"] <= record["results"][0]["tolerance"]


def test_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    plot = tmp_path / "speedup.png"
    record = run_bench(tmp_path, "--seq-len", "6", "10", "--mode", "inference", "--plot",
                       str(plot))
    assert [r["case"]["seq_len"] for r in record["results"]] == [6, 10]
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


class WrongLogits(bench.Packed):
    """Packed nn.LSTM with logits 1% off."""

    def forward(self, batch):
        return super().forward(batch) * 1.01


class WrongGradients(bench.Padded):
    """Right logits, LSTM gradients scaled by 1.01 (values unchanged)."""

    def forward(self, batch):
        outputs, _ = self.rnn(batch.x)
        outputs = outputs + 0.01 * (outputs - outputs.detach())
        pooled, _ = self.pool(outputs, batch.lengths)
        return self.head(pooled)


@pytest.mark.parametrize("planted, mode, culprit", [
    (WrongLogits, "inference", "logits"),
    (WrongGradients, "train", "grad "),
])
def test_a_planted_wrong_method_is_reported_and_not_timed(tmp_path, monkeypatch, planted, mode,
                                                          culprit):
    spec = bench.MethodSpec("planted", "a deliberately wrong method", planted)
    monkeypatch.setitem(bench.METHODS, "planted", spec)
    record = run_bench(tmp_path, "--seq-len", "10", "--mode", mode)
    methods = methods_of(record["results"][0])
    wrong = methods["planted"]
    assert wrong["status"] == "wrong"
    assert culprit in wrong["note"] and "not timed" in wrong["note"]
    assert wrong["times_ms"] == [] and "median_ms" not in wrong
    if culprit == "grad ":  # only the gradients are wrong
        assert wrong["errors"]["logits"] <= record["results"][0]["tolerance"]
    # Unidirectional: padded nn.LSTM agrees (the pooling ignores steps past each length).
    for name in ("ours", "packed", "padded"):
        assert methods[name]["status"] == "ok", methods[name]
        assert len(methods[name]["times_ms"]) == 2


@pytest.mark.parametrize("distribution", bench.LENGTH_DISTRIBUTIONS)
def test_lengths_are_in_range_and_the_longest_is_seq_len(distribution):
    case = bench.Case(batch=200, seq_len=40, lengths=distribution)
    lengths = bench.make_lengths(case, torch.Generator().manual_seed(1))
    assert lengths.shape == (200,) and lengths.dtype == torch.int64
    assert lengths.min() >= 1 and lengths.max() == 40
    if distribution == "uniform":
        assert lengths.min() >= 10
    elif distribution == "upper-half":
        assert lengths.min() >= 20 and lengths.double().median() < 35
    elif distribution == "full":
        assert (lengths == 40).all()
    else:  # long-tail: most sequences short
        assert lengths.double().median() < 10


def test_long_sweep_skips_a_method_predicted_to_take_too_long():
    from seqcls_fast.apps.bench.cli import too_slow
    limit_ms = bench.LONG_SWEEP_MAX_SECONDS * 1e3

    def result(steps, *methods):
        return {"mode": "train", "case": {"seq_len": steps}, "methods": list(methods)}

    fast = {"name": "ours", "status": "ok", "median_ms": 1000.0, "note": None}
    slow = {"name": "packed", "status": "ok", "median_ms": limit_ms / 3, "note": None}
    results = [result(1024, fast, slow)]
    assert too_slow(results, bench.Case(seq_len=2048), "train") == {}  # 2/3 of the limit
    skip = too_slow(results, bench.Case(seq_len=4096), "train")        # 4/3 of it
    assert list(skip) == ["packed"] and skip["packed"].startswith("predicted 80 s")
    assert too_slow(results, bench.Case(seq_len=4096), "inference") is None
    # Once skipped for that, it stays skipped at longer T.
    results.append(result(4096, fast, {"name": "packed", "status": "skipped",
                                       "note": skip["packed"]}))
    assert list(too_slow(results, bench.Case(seq_len=16384), "train")) == ["packed"]


def test_padding_is_zero_and_valid_steps_are_not():
    batch = bench.make_batch(bench.Case(batch=6, seq_len=20, input_size=3), torch.float32,
                             torch.device("cpu"), seed=0)
    for row, length in enumerate(batch.lengths_cpu.tolist()):
        assert (batch.x[row, length:] == 0).all()
        assert (batch.x[row, :length].abs().sum(dim=1) > 0).all()


@pytest.mark.parametrize("options", [["--lengths", "sorted"], ["--batch", "0"],
                                     ["--mode", "fast"], ["--dtype", "int8"],
                                     ["--device", "tpu"]])
def test_bad_options_are_rejected(options, capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench.main(options)
    assert exit_info.value.code == 2
    assert "error" in capsys.readouterr().err


@pytest.mark.skipif(not bench.cpu_peak_growth_supported(),
                    reason="peak resident set needs Linux /proc and glibc")
def test_cpu_peak_memory_sees_a_freed_tensor_every_time():
    size = 64 * 2**20

    def allocate_and_free():
        return float(torch.ones(size // 4).sum())

    for _ in range(3):  # memory freed by the previous call must not hide this one
        result, peak = bench.measure_peak_memory(allocate_and_free, torch.device("cpu"))
        assert result == size // 4
        assert 0.99 * size <= peak < size + 16 * 2**20
