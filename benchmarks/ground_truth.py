"""Benchmark ground truth keyed by the NAS-Bench-201 architecture string.

The arch string (``|op~0|+|op~0|op~1|+|op~0|op~1|op~2|``) is the one key that joins a
method's scores to the benchmark, so every loader ends in the same validated table:
a DataFrame indexed by ``arch``, an optional integer ``index`` column (the benchmark's own
index — the only source of index <-> arch, which is NOT a product order of the ops) and
float metric columns such as ``cifar10_test_acc`` (200-epoch test accuracy, mean over seeds).

Loaders: ``from_table`` (CSV/Parquet), ``from_nb201_api`` (official NAS-Bench-201 ``.pth``
file or its loaded dict), ``from_nats`` (NATS-Bench topology files); ``load_ground_truth``
dispatches on what it is given. The official file needs tens of GB of RAM, so convert it
once with ``python -m benchmarks.ground_truth convert SRC OUT.parquet`` and load the table.
"""
from __future__ import annotations

import argparse
import os
import pickle
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence, Union

import numpy as np
import pandas as pd

ARCH = "arch"
INDEX = "index"
ARCH_ALIASES = (ARCH, "arch_str")

# Dataset names users type -> our metric column.
DATASET_METRICS = {
    "cifar10": "cifar10_test_acc",
    "cifar100": "cifar100_test_acc",
    "imagenet16-120": "imagenet16_120_test_acc",
    "imagenet16_120": "imagenet16_120_test_acc",
}
# Our metric column -> the benchmark API's dataset name. `cifar10` (trained on the full 50k
# train set, tested on the 10k test set), never `cifar10-valid` (trained on 25k only).
API_DATASETS = {
    "cifar10_test_acc": "cifar10",
    "cifar100_test_acc": "cifar100",
    "imagenet16_120_test_acc": "ImageNet16-120",
}
ARCH_EXAMPLE = "|op~0|+|op~0|op~1|+|op~0|op~1|op~2|"
TABLE_SUFFIXES = (".csv", ".parquet")
NB201_SUFFIXES = (".pth", ".pt")
NATS_SUFFIX = ".pickle.pbz2"
SUPPORTED = (
    "a .csv or .parquet table with an 'arch' column; an official NAS-Bench-201 .pth/.pt file "
    "or its loaded dict; a NATS-Bench topology directory or .pickle.pbz2 file"
)

Source = Union[str, "os.PathLike[str]", Mapping[str, Any], "GroundTruth"]


class UnknownArchError(KeyError):
    """Architectures missing from the ground truth (a KeyError, with a readable message)."""

    def __str__(self) -> str:  # KeyError would print the message in quotes
        return str(self.args[0]) if self.args else ""


def _preview(items: Sequence[Any], n: int = 3) -> str:
    shown = ", ".join(repr(x) for x in list(items)[:n])
    return shown + (", ..." if len(items) > n else "")


def _is_nb201_string(arch: object) -> bool:
    """Cheap shape check, enough to catch a wrong column: '|' at both ends, 3 '+'-separated nodes."""
    return isinstance(arch, str) and arch.startswith("|") and arch.endswith("|") and len(arch.split("+")) == 3


class GroundTruth:
    """A validated ground-truth table: arch string -> benchmark index and metrics.

    Construct through the loaders; the constructor validates so every loader gets the same
    guarantees (unique, well-formed archs; integer index; float metrics). ``source`` says
    where the numbers came from and appears in every error, so a user knows which file to fix.
    """

    def __init__(self, frame: pd.DataFrame, source: str) -> None:
        self.source = str(source)
        self._frame = self._validated(frame)
        self._arch_by_index: dict[int, str] | None = None

    def _validated(self, frame: pd.DataFrame) -> pd.DataFrame:
        if frame.index.name != ARCH:
            raise ValueError(f"{self.source}: table must be indexed by '{ARCH}', got {frame.index.name!r}")
        if len(frame) == 0:
            raise ValueError(f"{self.source}: table has no rows")
        dup = frame.index[frame.index.duplicated()].unique()
        if len(dup):
            raise ValueError(f"{self.source}: {len(dup)} duplicate arch(s), e.g. {_preview(dup)}")
        bad = [a for a in frame.index if not _is_nb201_string(a)]
        if bad:
            raise ValueError(
                f"{self.source}: {len(bad)} malformed arch string(s), e.g. {_preview(bad)}; "
                f"expected NB201 strings like {ARCH_EXAMPLE!r}"
            )
        frame = frame.copy()
        if INDEX in frame.columns:
            frame[INDEX] = self._integer_index(frame[INDEX])
        metrics = [c for c in frame.columns if c != INDEX]
        frame[metrics] = self._float_metrics(frame[metrics])
        return frame

    def _float_metrics(self, metrics: pd.DataFrame) -> pd.DataFrame:
        """Metric columns as float64; a text column here is a wrong file, not a metric."""
        non_numeric = [c for c in metrics.columns if not pd.api.types.is_numeric_dtype(metrics[c])
                       or pd.api.types.is_bool_dtype(metrics[c])]
        if non_numeric:
            raise ValueError(
                f"{self.source}: non-numeric column(s) {non_numeric}; expected only "
                f"'{ARCH}', optional '{INDEX}' and numeric metric columns"
            )
        if metrics.shape[1] == 0:
            raise ValueError(f"{self.source}: no metric columns; expected e.g. {list(API_DATASETS)}")
        return metrics.astype("float64")

    def _integer_index(self, column: pd.Series) -> pd.Series:
        """The benchmark index as int64; it must be complete, integral and unique."""
        if column.isna().any() or not pd.api.types.is_numeric_dtype(column) \
                or not np.all(np.mod(column.to_numpy(dtype=float), 1) == 0):
            raise ValueError(f"{self.source}: column '{INDEX}' must hold an integer in every row")
        if column.duplicated().any():
            dup = column[column.duplicated()].unique()
            raise ValueError(f"{self.source}: duplicate benchmark index value(s), e.g. {_preview(dup)}")
        return column.astype("int64")

    # --- container protocol -------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._frame)

    def __contains__(self, arch: object) -> bool:
        return isinstance(arch, str) and arch in self._frame.index

    def __repr__(self) -> str:
        return f"GroundTruth({len(self)} archs, metrics={self.metrics}, source={self.source!r})"

    @property
    def frame(self) -> pd.DataFrame:
        """A copy of the table (indexed by arch), safe for callers to modify."""
        return self._frame.copy()

    @property
    def archs(self) -> list[str]:
        """Arch strings in table order."""
        return self._frame.index.tolist()

    @property
    def metrics(self) -> list[str]:
        """Metric column names (everything except the benchmark index)."""
        return [c for c in self._frame.columns if c != INDEX]

    # --- lookups ------------------------------------------------------------------------
    def metric_for(self, dataset: str) -> str:
        """The metric column for a dataset name (cifar10, cifar100, ImageNet16-120) or a column name."""
        column = dataset if dataset in self._frame.columns else DATASET_METRICS.get(dataset.lower())
        if column is None or column not in self.metrics:
            raise ValueError(
                f"no metric for {dataset!r} in {self.source}; available metrics: {self.metrics}"
            )
        return column

    def values(self, archs: Sequence[str], metric: str) -> np.ndarray:
        """Ground-truth values of ``metric`` (or dataset name) for ``archs``, in that order.

        Items may be strings or anything whose ``str()`` is the NB201 string. Unknown archs
        raise ``UnknownArchError`` (a KeyError) instead of producing NaN that would later
        surface as a confusing ranking error far from its cause.
        """
        if isinstance(archs, str):
            raise TypeError("archs must be a sequence of arch strings, not a single string")
        column = self.metric_for(metric)
        keys = [a if isinstance(a, str) else str(a) for a in archs]
        positions = self._frame.index.get_indexer(keys)
        missing = [k for k, pos in zip(keys, positions) if pos < 0]
        if missing:
            raise UnknownArchError(
                f"{len(missing)} of {len(keys)} arch(s) not in the ground truth from {self.source}, "
                f"e.g. {_preview(missing)}"
            )
        result = self._frame[column].to_numpy()[positions]
        if np.isnan(result).any():
            nan_archs = [k for k, v in zip(keys, result) if np.isnan(v)]
            raise ValueError(
                f"{len(nan_archs)} arch(s) have no {column} value in {self.source}, e.g. {_preview(nan_archs)}"
            )
        return result

    def _require_index(self) -> pd.Series:
        if INDEX not in self._frame.columns:
            raise ValueError(f"{self.source} has no '{INDEX}' column, so benchmark indexes are unknown")
        return self._frame[INDEX]

    def index_of(self, arch: str) -> int:
        """The benchmark index of ``arch``, read from the table."""
        column = self._require_index()
        if arch not in self:
            raise UnknownArchError(f"arch {arch!r} not in the ground truth from {self.source}")
        return int(column.loc[arch])

    def arch_of(self, index: int) -> str:
        """The arch string at benchmark ``index``, read from the table (never computed)."""
        if self._arch_by_index is None:
            column = self._require_index()
            self._arch_by_index = dict(zip(column.tolist(), column.index.tolist()))
        try:
            return self._arch_by_index[int(index)]
        except KeyError:
            raise KeyError(f"benchmark index {index} not in the ground truth from {self.source}") from None

    def best(self, metric: str) -> tuple[str, float]:
        """The arch with the highest ``metric`` (first in table order on ties) and its value."""
        column = self._frame[self.metric_for(metric)]
        arch = column.idxmax()
        return str(arch), float(column.loc[arch])

    # --- persistence --------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the table as Parquet (.parquet) or CSV (.csv); ``from_table`` reads it back."""
        path = Path(path)
        _check_table_suffix(path)
        table = self._frame.reset_index()
        ordered = [c for c in (INDEX, ARCH) if c in table.columns] + self.metrics
        table = table[ordered]
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".parquet":  # zstd: the full NB201 table in ~0.24 MB (snappy: 0.56 MB)
            table.to_parquet(path, index=False, compression="zstd", compression_level=19)
        else:
            table.to_csv(path, index=False)
        return path


def _check_table_suffix(path: Path) -> None:
    if path.suffix not in TABLE_SUFFIXES:
        raise ValueError(f"{path}: unsupported table format {path.suffix!r}; use .csv or .parquet")


# --- the built-in table -------------------------------------------------------------------
# NAS-Bench-201 (NATS-Bench topology space), all 15,625 cells, 200-epoch test accuracy (mean
# over the benchmark's seeds) on CIFAR-10, CIFAR-100 and ImageNet16-120; written by this
# module's `convert` from the benchmark's own figures (provenance and licence: data/README.md).
BUILTIN_NB201 = Path(__file__).resolve().parent / "data" / "nb201_test_acc_200ep.parquet"
BUILTIN = "builtin"   # what users type for it (and the default of --benchmark for the nb201 space)
NO_BENCHMARK = "none"  # what users type to turn ranking off


def resolve_benchmark(text: str | None, space: str = "nb201") -> str | None:
    """The ground-truth source a ``--benchmark`` value names: the built-in table by default
    (``None`` or ``builtin``) for the nb201 space, nothing for ``none``, else the path given."""
    if text is None or text == BUILTIN:
        if space != "nb201":
            return None
        if not BUILTIN_NB201.is_file():
            raise FileNotFoundError(f"the built-in NAS-Bench-201 table {BUILTIN_NB201} is missing from this "
                                    "installation; reinstall the package or pass --benchmark FILE")
        return str(BUILTIN_NB201)
    if text.lower() == NO_BENCHMARK:
        return None
    return str(Path(text).expanduser().resolve())


# --- loaders ------------------------------------------------------------------------------
def _read_table(path: Path) -> pd.DataFrame:
    try:
        if path.suffix == ".parquet":
            return pd.read_parquet(path)
        return pd.read_csv(path)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise ValueError(f"could not read {path} as {path.suffix[1:].upper()}: {exc}") from exc


def from_table(path: str | os.PathLike[str]) -> GroundTruth:
    """Load a CSV/Parquet table with an ``arch`` (or ``arch_str``) column and numeric metrics."""
    path = Path(path)
    _check_table_suffix(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"ground-truth table {path} not found; expected a CSV/Parquet file with columns "
            f"'{ARCH}', optional '{INDEX}', and metric columns such as {list(API_DATASETS)}"
        )
    frame = _read_table(path)
    arch_column = next((c for c in ARCH_ALIASES if c in frame.columns), None)
    if arch_column is None:
        raise ValueError(
            f"{path} has no arch column; expected one named {' or '.join(map(repr, ARCH_ALIASES))} "
            f"holding NB201 strings like {ARCH_EXAMPLE!r} (columns found: {list(frame.columns)})"
        )
    frame = frame.rename(columns={arch_column: ARCH}).set_index(ARCH)
    return GroundTruth(frame, source=str(path))


def _test_accuracy(api: Any, index: int, dataset: str, source: str) -> float:
    """200-epoch test accuracy of ``index`` on ``dataset``, averaged over the trained seeds.

    Both APIs default to ``hp='12'`` and ``is_random=True`` (12-epoch schedule, one random
    seed), so both are passed explicitly. ``get_more_info`` swallows a missing test set and
    just omits the key, hence the explicit check.
    """
    try:
        info = api.get_more_info(index, dataset, iepoch=None, hp="200", is_random=False)
    except (KeyError, ValueError, AssertionError) as exc:
        raise ValueError(f"{source}: no 200-epoch results for index {index} on {dataset}: {exc!r}") from exc
    if "test-accuracy" not in info:
        raise ValueError(f"{source}: index {index} has no test accuracy on {dataset} (hp='200')")
    return float(info["test-accuracy"])


def _from_benchmark_api(api: Any, source: str) -> GroundTruth:
    """Tabulate every architecture of a NAS-Bench-201 / NATS-Bench topology API object."""
    archs = list(api.meta_archs)
    columns: dict[str, Any] = {INDEX: np.arange(len(archs), dtype=np.int64)}
    for column, dataset in API_DATASETS.items():
        columns[column] = [_test_accuracy(api, i, dataset, source) for i in range(len(archs))]
    frame = pd.DataFrame(columns, index=pd.Index(archs, name=ARCH))
    return GroundTruth(frame, source=source)


class _Uncopied(dict):
    """A dict that ``copy.deepcopy`` returns as is.

    ``NASBench201API`` deep-copies a dict it is given; for the official file that doubles a
    ~28 GB footprint. The API only reads the data, so sharing it is safe.
    """

    def __deepcopy__(self, memo: dict[int, Any]) -> "_Uncopied":
        return self


def _load_nb201_file(path: Path) -> dict[str, Any]:
    import torch  # lazy: importing this module must stay cheap

    if not path.is_file():
        raise FileNotFoundError(f"NAS-Bench-201 file {path} not found (e.g. NAS-Bench-201-v1_1-096897.pth)")
    # The official file is a full pickle from before torch's weights_only default (torch>=2.6
    # would refuse it): loading it runs whatever code the file names, so it must be a file you
    # trust. Say so every time; converting it once to a table (``convert``) avoids it afterwards.
    print(f"note: unpickling {path} (weights_only=False: the official NAS-Bench-201 format); load only a file you "
          "trust, or convert it once: python -m benchmarks.ground_truth convert FILE table.parquet", file=sys.stderr)
    try:
        raw = torch.load(path, map_location="cpu", weights_only=False)
    except (pickle.UnpicklingError, EOFError, RuntimeError, AttributeError, ModuleNotFoundError) as exc:
        raise ValueError(f"{path} is not a readable NAS-Bench-201 file ({type(exc).__name__}: {exc})") from exc
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected the NAS-Bench-201 dict, got {type(raw).__name__}")
    return raw


def from_nb201_api(src: str | os.PathLike[str] | Mapping[str, Any]) -> GroundTruth:
    """Ground truth from the official NAS-Bench-201 file (path) or its already-loaded dict."""
    from nas_201_api import NASBench201API  # lazy: pulls in torch

    if isinstance(src, Mapping):
        raw, source = dict(src), "NAS-Bench-201 dict"
    else:
        raw, source = _load_nb201_file(Path(src)), str(src)
    missing = [k for k in ("meta_archs", "arch2infos", "evaluated_indexes") if k not in raw]
    if missing:
        raise ValueError(f"{source}: not a NAS-Bench-201 dict, missing key(s) {missing}")
    api = NASBench201API(_Uncopied(raw), verbose=False)
    return _from_benchmark_api(api, source)


def from_nats(path: str | os.PathLike[str]) -> GroundTruth:
    """Ground truth from NATS-Bench topology files (``NATS-tss-v1_0-3ffb9-simple`` dir or ``.pickle.pbz2``)."""
    try:
        import nats_bench
    except ImportError as exc:
        raise ImportError(
            "reading NATS-Bench files needs the nats_bench package: pip install 'nas-harness[nats]'"
        ) from exc
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"NATS-Bench path {path} not found (a *-simple directory or {NATS_SUFFIX} file)")
    # nats_bench only reads a directory in fast (lazy, per-arch) mode and a single file otherwise.
    # Its files are pickles: as for the NAS-Bench-201 file, say so.
    print(f"note: unpickling {path} (the NATS-Bench format); load only files you trust, or convert them once: "
          "python -m benchmarks.ground_truth convert PATH table.parquet", file=sys.stderr)
    api = nats_bench.create(str(path), "tss", fast_mode=path.is_dir(), verbose=False)
    return _from_benchmark_api(api, str(path))


def load_ground_truth(src: Source) -> GroundTruth:
    """Load ground truth from whatever ``src`` is (see ``SUPPORTED``)."""
    if isinstance(src, GroundTruth):
        return src
    if isinstance(src, Mapping):
        return from_nb201_api(src)
    if not isinstance(src, (str, os.PathLike)):
        raise ValueError(f"unsupported ground-truth source of type {type(src).__name__}; supported: {SUPPORTED}")
    path = Path(src)
    if path.name.endswith(NATS_SUFFIX) or path.is_dir():
        return from_nats(path)
    if path.suffix in TABLE_SUFFIXES:
        return from_table(path)
    if path.suffix in NB201_SUFFIXES:
        return from_nb201_api(path)
    hint = "" if path.exists() else " (and it does not exist)"
    raise ValueError(f"unsupported ground-truth source {path}{hint}; supported: {SUPPORTED}")


# --- command line -------------------------------------------------------------------------
class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of printing usage, so main() reports one line."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise _UsageError(f"{self.prog}: {message}")


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m benchmarks.ground_truth", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    convert = commands.add_parser("convert", help="write a compact .parquet/.csv table from SRC")
    convert.add_argument("src", help=SUPPORTED)
    convert.add_argument("out", help="output table, .parquet or .csv")
    info = commands.add_parser("info", help="print rows, metrics and the best arch per metric")
    info.add_argument("src", help=SUPPORTED)
    return parser


def _info_lines(truth: GroundTruth) -> list[str]:
    lines = [f"source: {truth.source}", f"rows: {len(truth)}", f"metrics: {', '.join(truth.metrics)}"]
    has_index = INDEX in truth.frame.columns
    for metric in truth.metrics:
        arch, value = truth.best(metric)
        where = f" (index {truth.index_of(arch)})" if has_index else ""
        lines.append(f"best {metric}: {value:.4f}{where} {arch}")
    return lines


def _run(args: argparse.Namespace) -> None:
    if args.command == "convert":
        _check_table_suffix(Path(args.out))  # before the (possibly very slow) load
        truth = load_ground_truth(args.src)
        out = truth.save(args.out)
        print(f"wrote {len(truth)} rows x {len(truth.metrics)} metrics to {out}")
    else:
        print("\n".join(_info_lines(load_ground_truth(args.src))))


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; a bad input prints one line to stderr and returns 2."""
    try:
        _run(_build_parser().parse_args(argv))
    except (_UsageError, ValueError, KeyError, OSError, ImportError) as exc:
        message = " ".join(str(exc).split())
        print(f"error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
