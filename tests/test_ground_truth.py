"""Ground truth: the shared NB201 table, round trips, the CLI, errors, and the nas_201_api loader."""
from __future__ import annotations

import copy
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from benchmarks.ground_truth import (
    GroundTruth,
    UnknownArchError,
    from_nats,
    from_nb201_api,
    from_table,
    load_ground_truth,
    main,
    BUILTIN_NB201,
    resolve_benchmark,
)

INDEX0_ARCH = "|avg_pool_3x3~0|+|nor_conv_1x1~0|skip_connect~1|+|nor_conv_1x1~0|skip_connect~1|skip_connect~2|"
INDEX1_ARCH = "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|"
A = "|none~0|+|none~0|none~1|+|none~0|none~1|none~2|"
B = "|skip_connect~0|+|none~0|none~1|+|none~0|none~1|none~2|"
C = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_1x1~2|"


@pytest.fixture(scope="module")
def nb201(nb201_csv: Path) -> GroundTruth:
    return load_ground_truth(nb201_csv)


def write_csv(path: Path, rows: dict[str, list]) -> Path:
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


# --- the shared NB201 table -----------------------------------------------------------------
@pytest.mark.realdata
def test_shared_table_facts(nb201: GroundTruth, nb201_csv: Path) -> None:
    assert len(nb201) == 15625
    assert nb201.metrics == ["cifar10_test_acc", "cifar100_test_acc", "imagenet16_120_test_acc"]
    assert nb201.source == str(nb201_csv)
    arch, acc = nb201.best("cifar10")
    assert acc == pytest.approx(94.37, abs=0.005)
    assert nb201.index_of(arch) == 6111
    assert nb201.arch_of(6111) == arch
    assert nb201.arch_of(0) == INDEX0_ARCH and nb201.archs[0] == INDEX0_ARCH
    assert nb201.index_of(INDEX0_ARCH) == 0
    assert nb201.index_of(nb201.best("cifar100")[0]) == 9930
    assert nb201.index_of(nb201.best("ImageNet16-120")[0]) == 857
    assert INDEX0_ARCH in nb201 and A.replace("none", "bogus") not in nb201


@pytest.mark.realdata
def test_values_follow_the_requested_order(nb201: GroundTruth) -> None:
    np.testing.assert_array_equal(nb201.values([INDEX1_ARCH, INDEX0_ARCH], "cifar10"), [93.66, 85.8633])
    np.testing.assert_array_equal(nb201.values([INDEX0_ARCH], "cifar100_test_acc"), [52.9133])
    assert nb201.metric_for("imagenet16_120") == nb201.metric_for("ImageNet16-120") == "imagenet16_120_test_acc"
    with pytest.raises(ValueError, match=r"no metric for 'svhn'.*available metrics: \['cifar10_test_acc'"):
        nb201.metric_for("svhn")


@pytest.mark.realdata
def test_unknown_arch_names_count_examples_and_source(nb201: GroundTruth, nb201_csv: Path) -> None:
    unknown = ["|bogus~0|+|none~0|none~1|+|none~0|none~1|none~2|", "|x~0|+|+|"]
    with pytest.raises(UnknownArchError) as err:
        nb201.values([INDEX0_ARCH, *unknown], "cifar10")
    assert isinstance(err.value, KeyError)
    message = str(err.value)
    assert "2 of 3 arch(s) not in the ground truth" in message
    assert "|bogus~0|" in message and str(nb201_csv) in message
    with pytest.raises(KeyError, match="benchmark index 15625"):
        nb201.arch_of(15625)
    with pytest.raises(TypeError, match="not a single string"):
        nb201.values(INDEX0_ARCH, "cifar10")


@pytest.mark.realdata
@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_convert_round_trip_is_identical(nb201: GroundTruth, tmp_path: Path, suffix: str) -> None:
    out = nb201.save(tmp_path / f"gt{suffix}")
    again = load_ground_truth(out)
    pd.testing.assert_frame_equal(again.frame, nb201.frame, check_exact=True)
    assert again.source == str(out)


@pytest.mark.realdata
def test_cli_convert_and_info(nb201: GroundTruth, nb201_csv: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "sub" / "nb201.parquet"
    assert main(["convert", str(nb201_csv), str(out)]) == 0
    assert "wrote 15625 rows x 3 metrics" in capsys.readouterr().out
    pd.testing.assert_frame_equal(from_table(out).frame, nb201.frame, check_exact=True)
    assert main(["info", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "rows: 15625" in printed
    assert "best cifar10_test_acc: 94.3733 (index 6111)" in printed


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["info", "/no/such/table.csv"], "/no/such/table.csv not found"),
        (["convert", "in.csv", "out.txt"], "unsupported table format '.txt'"),
        (["info", "bench.h5"], "unsupported ground-truth source bench.h5"),
        (["frobnicate"], "invalid choice"),
        ([], "required"),
    ],
)
def test_cli_bad_input_exits_2_with_one_line(argv: list[str], message: str, capsys) -> None:
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and message in captured.err
    assert "Traceback" not in captured.err


# --- table loader errors --------------------------------------------------------------------
def test_missing_file_names_path_and_expectation(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"gone\.csv not found; expected a CSV/Parquet file with columns 'arch'"):
        from_table(tmp_path / "gone.csv")


def test_table_without_arch_column(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "t.csv", {"name": [A, B], "cifar10_test_acc": [1.0, 2.0]})
    with pytest.raises(ValueError, match=r"t\.csv has no arch column; expected one named 'arch' or 'arch_str'"):
        from_table(path)


def test_arch_str_column_and_index_come_from_the_table(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "t.csv", {"arch_str": [A, B, C], "index": [5, 2, 9], "acc": [1.0, 3.0, 2.0]})
    truth = from_table(path)
    assert truth.archs == [A, B, C] and truth.metrics == ["acc"]
    assert truth.arch_of(5) == A and truth.arch_of(2) == B and truth.index_of(C) == 9
    assert truth.best("acc") == (B, 3.0)
    with pytest.raises(KeyError, match="benchmark index 0"):
        truth.arch_of(0)


def test_table_without_index_column_cannot_map_indexes(tmp_path: Path) -> None:
    truth = from_table(write_csv(tmp_path / "t.csv", {"arch": [A, B], "acc": [1, 2]}))
    assert truth.values([B, A], "acc").dtype == np.float64
    with pytest.raises(ValueError, match="no 'index' column"):
        truth.arch_of(0)


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ({"arch": [A, A], "acc": [1.0, 2.0]}, "1 duplicate arch"),
        ({"arch": [A, "none~0|+|"], "acc": [1.0, 2.0]}, "1 malformed arch string.*expected NB201 strings"),
        ({"arch": [A, "|a~0|+|b~0|"], "acc": [1.0, 2.0]}, "1 malformed arch string"),
        ({"arch": [A, B]}, "no metric columns"),
        ({"arch": [A, B], "acc": [1.0, 2.0], "note": ["x", "y"]}, r"non-numeric column\(s\) \['note'\]"),
        ({"arch": [A, B], "index": [0, 0], "acc": [1.0, 2.0]}, "duplicate benchmark index"),
        ({"arch": [A, B], "index": [0, None], "acc": [1.0, 2.0]}, "must hold an integer in every row"),
    ],
)
def test_bad_tables_name_file_and_problem(tmp_path: Path, rows: dict, message: str) -> None:
    path = write_csv(tmp_path / "bad.csv", rows)
    with pytest.raises(ValueError, match=message) as err:
        from_table(path)
    assert str(path) in str(err.value)


def test_values_refuse_missing_metric_values(tmp_path: Path) -> None:
    truth = from_table(write_csv(tmp_path / "t.csv", {"arch": [A, B], "acc": [1.0, None]}))
    with pytest.raises(ValueError, match="1 arch.* no acc value"):
        truth.values([A, B], "acc")


def test_save_refuses_unknown_suffix(tmp_path: Path) -> None:
    truth = from_table(write_csv(tmp_path / "t.csv", {"arch": [A, B], "acc": [1.0, 2.0]}))
    with pytest.raises(ValueError, match="use .csv or .parquet"):
        truth.save(tmp_path / "t.json")


# --- dispatch and NATS ----------------------------------------------------------------------
def test_dispatch_rejects_unknown_formats(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="supported: a .csv or .parquet table"):
        load_ground_truth(tmp_path / "bench.h5")
    with pytest.raises(ValueError, match="unsupported ground-truth source of type int"):
        load_ground_truth(3)


@pytest.mark.parametrize("name", ["NATS-tss-v1_0-3ffb9-simple", "NATS-tss-v1_0-3ffb9.pickle.pbz2"])
def test_nats_without_package_says_how_to_install(tmp_path: Path, monkeypatch, name: str) -> None:
    monkeypatch.setitem(sys.modules, "nats_bench", None)  # import fails even where it is installed
    src = tmp_path / name
    src.mkdir() if name.endswith("simple") else src.write_bytes(b"")
    with pytest.raises(ImportError, match=r"pip install 'nas-harness\[nats\]'"):
        load_ground_truth(src)
    with pytest.raises(ImportError, match="nats_bench"):
        from_nats(src)


# --- the official NAS-Bench-201 API, with a tiny dict in its own format ---------------------
# Final-epoch test accuracy per (arch, dataset) and seed. Everything else in the tiny benchmark
# (epoch 0, the 12-epoch schedule, cifar10-valid, x-valid / ori-test of cifar100 and
# ImageNet16-120) holds decoy values, so a wrong call cannot produce these means.
TEST_ACC = {
    (0, "cifar10"): {777: 90.0, 888: 92.0, 999: 94.0},
    (0, "cifar100"): {777: 70.0, 888: 71.0, 999: 75.0},
    (0, "ImageNet16-120"): {777: 40.0, 888: 44.0, 999: 45.0},
    (1, "cifar10"): {777: 50.0, 888: 60.0},
    (1, "cifar100"): {777: 20.0, 888: 30.0},
    (1, "ImageNet16-120"): {777: 10.0, 888: 11.0},
    (2, "cifar10"): {777: 80.5},
    (2, "cifar100"): {777: 60.5},
    (2, "ImageNet16-120"): {777: 30.5},
}
EPOCHS = 3  # the API's iepoch=None means the last epoch (index EPOCHS - 1)
EVAL_SETS = {"cifar10-valid": ("x-valid", "ori-test"), "cifar10": ("ori-test",),
             "cifar100": ("x-valid", "x-test", "ori-test"), "ImageNet16-120": ("x-valid", "x-test", "ori-test")}
TEST_SET = {"cifar10": "ori-test", "cifar100": "x-test", "ImageNet16-120": "x-test"}


def _trial(arch: str, dataset: str, seed: int, final_test: float | None):
    """One ResultsCount: ``final_test`` on the dataset's test set at the last epoch, decoys elsewhere."""
    from nas_201_api import ResultsCount

    config = {"arch_str": arch, "channel": 16, "num_cells": 5, "class_num": 10}
    trial = ResultsCount(dataset, None, {e: 50.0 for e in range(EPOCHS)}, {e: 1.0 for e in range(EPOCHS)},
                         0.1, 10.0, config, seed, EPOCHS, [0.01])
    accs, losses, times = {}, {}, {}
    for set_name in EVAL_SETS[dataset]:
        for epoch in range(EPOCHS):
            key = f"{set_name}@{epoch}"
            real = final_test is not None and set_name == TEST_SET.get(dataset) and epoch == EPOCHS - 1
            accs[key], losses[key], times[key] = (final_test if real else 3.0 + epoch), 1.0, 0.5
    trial.update_eval(accs, losses, times)
    return trial


def _arch_results(index: int, arch: str, hp_is_200: bool) -> dict:
    from nas_201_api import ArchResults

    results = ArchResults(index, arch)
    for dataset in EVAL_SETS:
        seeds = TEST_ACC.get((index, dataset), TEST_ACC[(index, "cifar10")])
        for seed, acc in seeds.items():
            real = hp_is_200 and dataset != "cifar10-valid"
            results.update(dataset, seed, _trial(arch, dataset, seed, acc if real else None))
    return results.state_dict()


def tiny_nb201_dict() -> dict:
    archs = [A, B, C]
    return {
        "meta_archs": archs,
        "evaluated_indexes": list(range(len(archs))),
        "arch2infos": {i: {"less": _arch_results(i, a, False), "full": _arch_results(i, a, True)}
                       for i, a in enumerate(archs)},
    }


def expected_tiny_frame() -> pd.DataFrame:
    columns = {"cifar10_test_acc": "cifar10", "cifar100_test_acc": "cifar100",
               "imagenet16_120_test_acc": "ImageNet16-120"}
    frame = pd.DataFrame(
        {"index": np.arange(3, dtype=np.int64),
         **{col: [float(np.mean(list(TEST_ACC[(i, ds)].values()))) for i in range(3)]
            for col, ds in columns.items()}},
        index=pd.Index([A, B, C], name="arch"),
    )
    return frame


def test_nb201_api_dict_gives_200_epoch_test_mean_over_seeds() -> None:
    raw = tiny_nb201_dict()
    pristine = copy.deepcopy(raw)
    truth = from_nb201_api(raw)
    expected = expected_tiny_frame()
    assert expected.loc[A, "cifar10_test_acc"] == 92.0  # mean of 90, 92, 94
    pd.testing.assert_frame_equal(truth.frame, expected, check_exact=True)
    assert truth.arch_of(1) == B and truth.best("cifar10") == (A, 92.0)
    assert raw == pristine  # the API shares (does not copy) the dict; it must not modify it


def test_nb201_api_file_and_dispatch(tmp_path: Path) -> None:
    import torch

    path = tmp_path / "NAS-Bench-201-tiny.pth"
    torch.save(tiny_nb201_dict(), path)
    truth = load_ground_truth(path)
    assert truth.source == str(path)
    pd.testing.assert_frame_equal(truth.frame, expected_tiny_frame(), check_exact=True)
    pd.testing.assert_frame_equal(load_ground_truth(tiny_nb201_dict()).frame, truth.frame)
    with pytest.raises(FileNotFoundError, match="missing.pth not found"):
        from_nb201_api(tmp_path / "missing.pth")


def test_nb201_api_missing_test_results_are_an_error() -> None:
    raw = tiny_nb201_dict()
    del raw["arch2infos"][2]
    with pytest.raises(ValueError, match="no 200-epoch results for index 2 on cifar10"):
        from_nb201_api(raw)
    with pytest.raises(ValueError, match=r"missing key\(s\) \['meta_archs'\]"):
        from_nb201_api({"arch2infos": {}, "evaluated_indexes": []})


@pytest.mark.parametrize(("name", "fast_mode"), [("NATS-tss-v1_0-3ffb9-simple", True),
                                                 ("NATS-tss-v1_0-3ffb9.pickle.pbz2", False)])
def test_nats_loader_queries_200_epoch_means(tmp_path: Path, monkeypatch, name: str, fast_mode: bool) -> None:
    """A stand-in nats_bench whose API is the NB201 one (same query interface) over the tiny dict."""
    from types import SimpleNamespace

    from nas_201_api import NASBench201API

    calls = []

    def create(path, search_space, fast_mode=False, verbose=True):
        calls.append((path, search_space, fast_mode, verbose))
        return NASBench201API(tiny_nb201_dict(), verbose=False)

    monkeypatch.setitem(sys.modules, "nats_bench", SimpleNamespace(create=create))
    src = tmp_path / name
    src.mkdir() if fast_mode else src.write_bytes(b"")
    truth = load_ground_truth(src)
    assert calls == [(str(src), "tss", fast_mode, False)]
    pd.testing.assert_frame_equal(truth.frame, expected_tiny_frame(), check_exact=True)
    with pytest.raises(FileNotFoundError, match="NATS-Bench path"):
        from_nats(tmp_path / "absent-simple")


# --- the built-in table ---------------------------------------------------------------------
@pytest.mark.realdata
def test_builtin_table_equals_the_shared_csv_value_for_value(nb201_csv: Path) -> None:
    builtin = pd.read_parquet(BUILTIN_NB201)  # as stored, columns in the converter's order
    shared = pd.read_csv(nb201_csv)
    assert len(builtin) == len(shared) == 15_625
    assert list(builtin.columns) == list(shared.columns)
    # every index, arch string and accuracy equal (floats bit for bit: the same parsed values)
    pd.testing.assert_frame_equal(builtin.reset_index(drop=True), shared, check_exact=True, check_dtype=False)
    assert BUILTIN_NB201.stat().st_size < 1_000_000


def test_builtin_table_is_the_default_and_none_turns_ranking_off(tmp_path: Path) -> None:
    assert resolve_benchmark(None) == resolve_benchmark("builtin") == str(BUILTIN_NB201)
    assert resolve_benchmark("none") is None and resolve_benchmark("NONE") is None
    assert resolve_benchmark(None, space="darts") is None  # no built-in table for other spaces
    assert resolve_benchmark(str(tmp_path / "x.csv")) == str((tmp_path / "x.csv").resolve())
    truth = load_ground_truth(BUILTIN_NB201)
    assert truth.metrics == ["cifar10_test_acc", "cifar100_test_acc", "imagenet16_120_test_acc"]
    assert truth.best("cifar10_test_acc")[1] == pytest.approx(94.3733) and truth.index_of(C) == 6111
