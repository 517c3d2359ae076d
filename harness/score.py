"""``python -m harness.score``: score any NB201 archs with a finished trial's searched method.

    python -m harness.score --trial RUN/trials/spos-seed0 --archs archs.txt --output scores.csv

The method is rebuilt from the trial's ``config.json`` (same data, same calibration and
validation batches) and its final state; scores come from the method's own ``score``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

import pandas as pd
import torch

from harness.config import ExperimentConfig
from harness.trial import FINAL_STATE, prepare
from spaces.nb201 import Arch


def read_archs(path: Path) -> list[Arch]:
    archs = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        try:
            archs.append(Arch.from_str(text))
        except ValueError as err:
            raise ValueError(f"{path}, line {number}: {err}") from None
    if not archs:
        raise ValueError(f"{path} lists no archs; write one NB201 string per line")
    return archs


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.score", description=__doc__.split("\n\n")[0])
    parser.add_argument("--trial", required=True, help="a trial directory: RUN/trials/METHOD-seedS")
    parser.add_argument("--archs", required=True, help="text file, one NB201 arch string per line")
    parser.add_argument("--output", required=True, help="CSV to write (arch, score)")
    parser.add_argument("--device", default=None, help="override the trial's device (cpu | cuda)")
    args = parser.parse_args(argv)
    trial = Path(args.trial)
    try:
        if not (trial / "config.json").exists() or not (trial / FINAL_STATE).exists():
            raise ValueError(f"{trial} is not a finished trial (needs config.json and {FINAL_STATE}); "
                             "pass a directory under RUN/trials/ whose trial succeeded")
        archs = read_archs(Path(args.archs))
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    config = json.loads((trial / "config.json").read_text())
    exp = ExperimentConfig.from_dict(config["experiment"])
    if args.device:
        exp = exp.replace(device=args.device)
    prepared = prepare(exp, config["method"], int(config["seed"]), config["method_config"])
    # the harness's own file: tensors and plain containers only, never unpickled as code
    state = torch.load(trial / FINAL_STATE, map_location=prepared.setup.device, weights_only=True)
    prepared.method.load_state_dict(state["method"])
    scores = prepared.method.score(archs)
    pd.DataFrame({"arch": [a.to_str() for a in archs], "score": scores}).to_csv(args.output, index=False)
    print(f"scored {len(archs)} archs with {config['method']} (seed {config['seed']}) -> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
