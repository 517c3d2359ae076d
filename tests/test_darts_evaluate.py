"""DARTS-space from-scratch training: the darts-cifar / darts-imagenet recipes, the auxiliary loss
and drop-path schedule of the Trainer, Cutout in Batches, and `harness.evaluate --space darts`."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn

from benchmarks.train import (ALL_RECIPES, DARTS_RECIPES, Recipe, RecipeError, Trainer, drop_path_prob,
                              learning_rate, recipe)
from harness import evaluate as ev
from harness.data import Batches, synthetic_dataset
from harness.data.batches import cutout_mask

ROOT = Path(__file__).resolve().parents[1]


def _darts():
    return pytest.importorskip("spaces.darts")


# --------------------------------------------------------------------------- recipes


def test_darts_presets_are_the_published_protocols_and_round_trip():
    c = recipe("darts-cifar")
    assert (c.network, c.epochs, c.batch_size, c.lr, c.lr_min, c.momentum, c.nesterov, c.weight_decay) == \
        ("darts-cifar", 600, 96, 0.025, 0.0, 0.9, False, 3e-4)
    assert (c.cutout, c.drop_path, c.auxiliary_weight, c.grad_clip, c.C, c.layers, c.schedule) == \
        (16, 0.3, 0.4, 5.0, 36, 20, "cosine_epoch")
    assert c.datasets == ("cifar10", "cifar100", "synthetic") and c.decay_norm_and_bias
    i = recipe("darts-imagenet")
    assert (i.network, i.epochs, i.batch_size, i.lr, i.weight_decay, i.label_smoothing, i.grad_clip) == \
        ("darts-imagenet", 250, 1024, 0.5, 3e-5, 0.1, 5.0)
    assert (i.C, i.layers, i.auxiliary_weight, i.drop_path, i.schedule, i.warmup_epochs, i.cutout) == \
        (48, 14, 0.4, 0.0, "linear", 5.0, 0)
    assert i.datasets == ("imagenet",) and set(DARTS_RECIPES) == {"darts-cifar", "darts-imagenet"}
    for name in ALL_RECIPES:
        r = recipe(name, epochs=3)
        assert Recipe.from_dict(json.loads(json.dumps(r.to_dict()))) == r
    assert recipe("nb201").network == "nb201" and recipe("nb201").cutout == 0  # NB201 unchanged


@pytest.mark.parametrize("changes, message", [
    (dict(network="resnet"), "recipe network must be one of"),
    (dict(schedule="step"), "recipe schedule must be one of"),
    (dict(auxiliary_weight=-0.1), "auxiliary_weight must be a number >= 0"),
    (dict(drop_path=1.0), "drop_path must be in [0, 1)"),
    (dict(cutout=-1), "cutout must be an integer >= 0"),
    (dict(layers=0), "layers must be an integer >= 1"),
])
def test_darts_recipe_fields_are_validated(changes, message):
    with pytest.raises(RecipeError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        recipe("darts-cifar", **changes)


def test_nb201_recipes_refuse_darts_only_fields():
    with pytest.raises(RecipeError, match="need a DARTS network"):
        recipe("nb201", auxiliary_weight=0.4)
    with pytest.raises(RecipeError, match="cutout works on in-memory"):
        recipe("darts-imagenet", cutout=16)


def test_darts_cifar_lr_is_cosine_per_epoch_and_imagenet_is_pdarts_linear():
    c = recipe("darts-cifar")
    assert learning_rate(c, 1, 0, 500) == learning_rate(c, 1, 499, 500) == pytest.approx(0.025)
    assert learning_rate(c, 301, 7, 500) == pytest.approx(0.0125)
    assert learning_rate(c, 600, 0, 500) == pytest.approx(0.0125 * (1 + math.cos(math.pi * 599 / 600)))
    i = recipe("darts-imagenet")
    assert learning_rate(i, 1, 0, 10) == pytest.approx(0.5 * 1 / 5)              # warm-up epoch 0
    assert learning_rate(i, 5, 3, 10) == pytest.approx(0.5 * 241 / 245)          # e=4: warm-up factor 1
    assert learning_rate(i, 11, 0, 10) == pytest.approx(0.5 * 235 / 245)
    assert learning_rate(i, 246, 0, 10) == pytest.approx(0.5 * 1 / (245 * 5))    # the last 5 epochs
    assert learning_rate(i, 250, 0, 10) == pytest.approx(0.5 * 5 / (245 * 5))
    short = recipe("darts-imagenet", epochs=1)
    assert learning_rate(short, 1, 0, 3) == pytest.approx(0.5)


# --------------------------------------------------------------------------- Trainer: aux loss, drop-path


class _AuxNet(nn.Module):
    """A DARTS-like stand-in: forward -> logits; forward_aux -> (logits, aux in training only)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(12, 3)
        self.auxiliary_head = nn.Linear(12, 3)
        self.drop_path_prob = 0.0
        self.seen_drop: list[float] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x.flatten(1))

    def forward_aux(self, x: torch.Tensor):
        self.seen_drop.append(self.drop_path_prob)
        flat = x.flatten(1)
        return self.body(flat), (self.auxiliary_head(flat) if self.training else None)


def _batch():
    g = torch.Generator().manual_seed(0)
    return torch.randn(8, 3, 2, 2, generator=g), torch.randint(0, 3, (8,), generator=g)


def test_aux_loss_is_added_with_weight_0_4_in_training_only():
    torch.manual_seed(0)
    model = _AuxNet()
    x, y = _batch()
    with torch.no_grad():
        ce = nn.functional.cross_entropy
        expected = float(ce(model.body(x.flatten(1)), y) + 0.4 * ce(model.auxiliary_head(x.flatten(1)), y))
        plain = float(ce(model.body(x.flatten(1)), y))
    r = recipe("darts-cifar", epochs=4, batch_size=8)
    trainer = Trainer(model, r, "cpu", 1)
    # evaluation first (weights unchanged): plain logits, no aux term
    assert trainer.evaluate([(x, y)])["test_loss"] == pytest.approx(plain, rel=1e-5)
    assert trainer.train_epoch(1, [(x, y)])["train_loss"] == pytest.approx(expected, rel=1e-5)
    # weight 0: the aux head is not used at all
    torch.manual_seed(0)
    no_aux = Trainer(_AuxNet(), recipe("darts-cifar", epochs=4, batch_size=8, auxiliary_weight=0.0), "cpu", 1)
    assert no_aux.train_epoch(1, [(x, y)])["train_loss"] == pytest.approx(plain, rel=1e-5)


def test_drop_path_prob_rises_linearly_each_epoch():
    r = recipe("darts-cifar", epochs=4, batch_size=8)
    assert [drop_path_prob(r, e) for e in (1, 2, 3, 4)] == pytest.approx([0.0, 0.075, 0.15, 0.225])
    model = _AuxNet()
    trainer = Trainer(model, r, "cpu", 1)
    for epoch in (1, 2, 3, 4):
        trainer.train_epoch(epoch, [_batch()])
        assert model.drop_path_prob == pytest.approx(0.3 * (epoch - 1) / 4)
    assert model.seen_drop == pytest.approx([0.0, 0.075, 0.15, 0.225])


# --------------------------------------------------------------------------- Cutout


def test_cutout_mask_clips_at_the_borders():
    mask = cutout_mask(32, 32, torch.tensor([0, 16, 31]), torch.tensor([0, 16, 5]), 16)
    holes = (mask[:, 0] == 0).sum(dim=(1, 2)).tolist()
    assert holes == [8 * 8, 16 * 16, 9 * 13]   # rows 23..31, cols 0..12
    assert mask[1, 0, 8:24, 8:24].eq(0).all() and mask[1, 0].sum() == 32 * 32 - 256


def test_cutout_zeroes_one_clipped_square_per_image_and_is_reproducible():
    data = synthetic_dataset(n_train=40, n_test=10, seed=0).train
    norm = dict(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    plain = Batches(data, 20, seed=3, drop_last=False, **norm)
    cut = Batches(data, 20, seed=3, drop_last=False, cutout=16, **norm)
    state = cut.state_dict()
    for (xp, yp), (xc, yc) in zip(plain, cut):
        assert torch.equal(yp, yc)
        hole = (xc == 0).all(dim=1) & (xp != 0).any(dim=1)         # (n, H, W)
        changed = (xc != xp).any(dim=1)
        assert not (changed & ~hole).any()                          # only the hole differs
        for h in hole:
            rows, cols = h.any(dim=1).nonzero().flatten(), h.any(dim=0).nonzero().flatten()
            assert 8 <= len(rows) <= 16 and 8 <= len(cols) <= 16
            assert rows.diff().eq(1).all() and cols.diff().eq(1).all()
            assert h.sum() == len(rows) * len(cols)                 # one solid rectangle
    again = Batches(data, 20, seed=99, drop_last=False, cutout=16, **norm)
    again.load_state_dict(state)
    cut.load_state_dict(state)
    for (xa, _), (xb, _) in zip(again, cut):
        assert torch.equal(xa, xb)


def test_cutout_off_leaves_batches_unchanged():
    data = synthetic_dataset(n_train=20, n_test=10, seed=0).train
    norm = dict(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    a, b = Batches(data, 10, seed=1, **norm), Batches(data, 10, seed=1, cutout=0, **norm)
    assert all(torch.equal(p[0], q[0]) for p, q in zip(a, b))


# --------------------------------------------------------------------------- the CLI


def evaluate(*args: str, cache: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "NAS_HARNESS_CACHE": str(cache), "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "harness.evaluate", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.smoke
def test_the_acceptance_command_trains_a_genotype_end_to_end(tmp_path):
    darts = _darts()
    genotype = str(darts.PDARTS)
    proc = evaluate("--space", "darts", "--genotype", genotype, "--recipe", "darts-cifar", "--epochs", "1",
                    "--C", "8", "--layers", "5", "--dataset", "synthetic", "--output", str(tmp_path / "out"),
                    cache=tmp_path / "cache")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    frame = pd.read_csv(tmp_path / "out" / "evaluation.csv")
    assert list(frame["arch"]) == [genotype] and list(frame["status"]) == ["ok"]
    assert list(frame["space"]) == ["darts"] and list(frame["layers"]) == [5] and list(frame["C"]) == [8]
    assert frame["params"].iloc[0] == darts.count_params(darts.PDARTS, C=8, layers=5, num_classes=10)
    assert frame["flops"].iloc[0] > 0 and frame["truth"].isna().all()
    assert frame["test_top1"].between(0, 100).all()
    assert "5 DARTS cells" in (tmp_path / "out" / "evaluation.md").read_text()


def _one_error_line(capsys, code: int, message: str) -> None:
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and message in err[0], err


@pytest.mark.parametrize("args, message", [
    (["--space", "darts", "--genotype", "Genotype(normal=[('sep_conv_3x3', 0)"], "is not a DARTS genotype"),
    (["--space", "darts", "--genotype", "nonsense"], "is not a DARTS genotype"),
    (["--genotype", "Genotype()"], "--genotype / --genotypes need --space darts"),
    (["--space", "darts", "--arch", "|none~0|+|none~0|none~1|+|none~0|none~1|none~2|"], "--arch takes NB201 cells"),
    (["--space", "darts"], "no architecture to evaluate: give --genotype"),
    (["--space", "darts", "--genotype", "{G}", "--recipe", "nb201"], "builds nb201 networks, not darts ones"),
    (["--space", "darts", "--genotype", "{G}", "--benchmark", "builtin"], "no ground-truth table"),
    (["--space", "darts", "--genotype", "{G}", "--layers", "0"], "recipe layers must be an integer >= 1"),
    (["--space", "darts", "--genotypes", "/nonexistent/file.txt"], "--genotypes"),
])
def test_bad_darts_input_exits_2_with_one_line(tmp_path, capsys, args, message):
    darts = _darts()
    args = [a.replace("{G}", str(darts.PDARTS)) for a in args]
    code = ev.main([*args, "--dataset", "synthetic", "--output", str(tmp_path / "out"),
                    "--cache-dir", str(tmp_path / "cache")])
    _one_error_line(capsys, code, message)
    assert not (tmp_path / "out").exists()


def test_a_malformed_genotype_exits_2_with_one_line_from_the_shell(tmp_path):
    _darts()
    proc = evaluate("--space", "darts", "--genotype", "Genotype(normal=[('nope', 0)])", "--dataset", "synthetic",
                    "--output", str(tmp_path / "out"), cache=tmp_path / "cache", timeout=60)
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr


def _fake_darts_run(run_dir: Path, genotypes: dict[str, str]) -> Path:
    for name, text in genotypes.items():
        trial = run_dir / "trials" / name
        trial.mkdir(parents=True)
        (trial / "derived.json").write_text(json.dumps({"genotype": text, "space": "darts"}))
    experiment = {"space": "darts", "dataset": "synthetic", "synthetic_train": 200, "synthetic_test": 100,
                  "device": "cpu"}
    (run_dir / "run.json").write_text(json.dumps({"experiment": experiment, "benchmark": None}))
    return run_dir


def test_from_a_darts_run_picks_up_the_derived_genotypes(tmp_path):
    darts = _darts()
    v2, pd_ = str(darts.DARTS_V2), str(darts.PDARTS)
    run = _fake_darts_run(tmp_path / "run", {"darts-seed0": v2, "pdarts-seed0": pd_, "pdarts-seed1": pd_})
    args = ev.build_parser().parse_args(["--from", str(run), "--epochs", "1", "--C", "8", "--layers", "5"])
    plan = ev.make_plan(args, "test")
    assert plan.archs == [v2, pd_]                      # trial order, deduplicated
    assert plan.context.sources[pd_] == "pdarts-seed0 derived; pdarts-seed1 derived"
    assert plan.recipe.name == "darts-cifar" and plan.recipe.layers == 5 and plan.context.truth is None
    assert plan.job.dataset == "synthetic" and plan.job.synthetic_train == 200
    # --genotypes FILE adds to them; a --space that contradicts the run is refused
    listing = tmp_path / "g.txt"
    listing.write_text(f"# mine\n{v2}\n\n")
    args = ev.build_parser().parse_args(["--from", str(run), "--genotypes", str(listing)])
    assert ev.make_plan(args, "test").context.sources[v2] == "--genotype; darts-seed0 derived"
    with pytest.raises(ev.UsageError, match="darts-space run, not --space nb201"):
        ev.make_plan(ev.build_parser().parse_args(["--from", str(run), "--space", "nb201"]), "test")


def test_a_darts_imagenet_trial_streams_an_imagefolder_tree(tmp_path):
    import numpy as np
    from PIL import Image

    from harness.evaluation_trial import EvalContext, EvalJob, run_evaluation_trial
    from harness.trial import LocalSession

    darts = _darts()
    rng = np.random.default_rng(0)
    for c in range(3):
        for split, n in (("train", 4), ("val", 2)):
            (tmp_path / "tree" / split / f"c{c}").mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = rng.uniform(0, 255, (40, 40, 3)).astype(np.uint8)
                Image.fromarray(pixels).save(tmp_path / "tree" / split / f"c{c}" / f"{i}.png")
    # 32 px is below the ImageNet auxiliary head's 5x5 pooling window: the head is off here
    r = recipe("darts-imagenet", epochs=1, C=8, layers=3, batch_size=6, eval_batch_size=6, image_size=32, resize=40,
               workers=0, auxiliary_weight=0.0)
    job = EvalJob(dataset="imagenet", data_root=str(tmp_path / "tree"), threads=1)
    genotype = str(darts.DARTS_V2)
    final = run_evaluation_trial({"arch": genotype, "seed": 0, "job": job.to_dict(), "recipe": r.to_dict()},
                                 EvalContext(output=str(tmp_path / "out")), LocalSession())
    assert final["recipe"] == "darts-imagenet" and final["space"] == "darts" and final["layers"] == 3
    assert final["params"] == darts.count_params_imagenet(darts.DARTS_V2, C=8, layers=3, num_classes=3)
    assert 0 <= final["test_top1"] <= final["test_top5"] <= 100
