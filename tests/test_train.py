"""Training end to end on a tiny synthetic dataset (32^3 grid, no brain extraction)."""

import csv
import json

import numpy as np
import pytest
import yaml

from unireg.cli import main
from unireg.errors import UniregError
from unireg.model import build_model, load_checkpoint
from unireg.train import Trainer, discover_dataset, load_config


def _config(root, steps, **extra):
    cfg = {
        "data": {"images": "images", "labels": "labels", "n_train": 3, "n_val": 2},
        "atlas": str(root / "atlas"),
        "preprocess": {"brain_extraction": False},
        "model": {"extractor": "mobilenet_v1_025", "channels": [8, 16, 16]},
        "train": {"steps": steps, "validate_every": 2, "val_pairs": 2},
        "output": "run",
    }
    cfg.update(extra)
    path = root / "train.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_dataset_discovery_matches_labels_by_name(tiny_dataset):
    items = discover_dataset(tiny_dataset / "images", tiny_dataset / "labels")
    assert [r["id"] for r in items] == [f"s{k}_T1" for k in range(5)]
    assert all(r["labels"].endswith(f"{r['id']}_seg.nii.gz") for r in items)


def test_train_writes_log_checkpoint_card_and_resumes(tiny_dataset):
    run = tiny_dataset / "run"
    assert main(["train", "--config", str(_config(tiny_dataset, 4)), "--no-progress"]) == 0
    rows = list(csv.DictReader(open(run / "log.csv")))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]
    assert rows[1]["val_dice"] != "" and float(rows[1]["val_dice_affine"]) > 0
    card = json.loads((run / "model_card.json").read_text())
    assert (
        card["steps"] == 4 and card["extractor"] == "mobilenet_v1_025" and len(card["extractor_weights_sha256"]) == 64
    )
    assert sorted(card["train_subjects"] + card["val_subjects"]) == [f"s{k}_T1" for k in range(5)]
    model, payload = load_checkpoint(run / "model.pt")
    assert payload["grid"]["shape"] == [32, 32, 32] and payload["train_config"]["train"]["steps"] == 4
    # resume: asking for 6 steps continues from step 4 instead of starting again
    assert main(["train", "--config", str(_config(tiny_dataset, 6)), "--no-progress"]) == 0
    rows = list(csv.DictReader(open(run / "log.csv")))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5, 6]


def test_training_is_deterministic_for_a_seed(tiny_dataset):
    losses = []
    for name in ("a", "b"):
        path = _config(tiny_dataset, 3, output=f"det_{name}")
        assert main(["train", "--config", str(path), "--no-progress", "--restart"]) == 0
        losses.append([r["total"] for r in csv.DictReader(open(tiny_dataset / f"det_{name}" / "log.csv"))])
    assert losses[0] == losses[1]


def _augmented_trainer(root, output: str, augment: dict):
    """A 2-step Trainer with intensity augmentation: features are then recomputed every step."""

    path = _config(root, 2, output=output)
    cfg = yaml.safe_load(path.read_text())
    cfg["train"]["augment"] = augment
    path.write_text(yaml.safe_dump(cfg))
    trainer = Trainer(load_config(path), resume=False, log=lambda *a: None)
    assert not trainer.cache_features
    return trainer


def test_intensity_augmentation_recomputes_features_and_trains(tiny_dataset):
    trainer = _augmented_trainer(tiny_dataset, "gamma", {"gamma": 0.5})
    image = trainer._image(trainer.train_set[0])
    gammas = {float(trainer._gamma(image).sum()) for _ in range(5)}
    assert len(gammas) == 5  # a different contrast every time
    trainer.run(progress=False)
    assert (tiny_dataset / "gamma" / "model.pt").is_file()


def test_flip_augmentation_trains_on_the_subjects_mirrored_left_right(tiny_dataset):
    path = _config(tiny_dataset, 2, output="flip")
    cfg = yaml.safe_load(path.read_text())
    cfg["train"]["augment"] = {"flip": 1.0}  # every pair mirrored
    path.write_text(yaml.safe_dump(cfg))
    trainer = Trainer(load_config(path), resume=False, log=lambda *a: None)
    assert trainer.mirror_axis == 0 and trainer.cache_features  # the atlas grid is RAS
    for record, mirrored in zip(trainer.train_set, trainer.mirrored_set):
        assert mirrored["id"] == record["id"] + "~mirrored"
        for key in ("image", "mask", "labels"):
            np.testing.assert_array_equal(mirrored[key], record[key][::-1])
    trainer.run(progress=False)
    seen = set(trainer._features)  # whose features the network saw: mirrored training, original validation
    val_ids = {r["id"] for r in trainer.val_set}
    assert seen - val_ids and all(k.endswith("~mirrored") for k in seen - val_ids)
    cfg["train"]["augment"] = {"flip": 1.5}
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(UniregError, match=r"train.augment.flip must be a probability in \[0, 1\], not 1.5"):
        load_config(path)  # before any data is prepared


def test_unknown_config_key_is_named(tiny_dataset, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"data": {"images": "x", "n_trian": 3}, "output": "o"}))
    with pytest.raises(UniregError, match="unknown config key 'data.n_trian'"):
        load_config(path)


def _log_column(run, column):
    return [(int(r["step"]), r[column]) for r in csv.DictReader(open(run / "log.csv"))]


def test_stops_at_a_validation_plateau_and_ships_the_best_weights(tiny_dataset):
    # min_delta 1.0: no validation can beat the first one, so the second one is the plateau
    path = _config(tiny_dataset, 20, output="plateau")
    cfg = yaml.safe_load(path.read_text())
    cfg["train"].update(validate_every=1, plateau={"patience": 1, "min_delta": 1.0}, val_io_steps=3)
    path.write_text(yaml.safe_dump(cfg))
    run = tiny_dataset / "plateau"
    assert main(["train", "--config", str(path), "--no-progress", "--restart"]) == 0
    card = json.loads((run / "model_card.json").read_text())
    assert (card["steps"], card["stopped"], card["best_step"]) == (2, "plateau", 1)
    assert [r["step"] for r in card["learning_curve"]] == [1, 2]
    assert all({"val_dice", "val_dice_affine", "val_dice_io"} <= set(r) for r in card["learning_curve"])
    table = (run / "model_card.md").read_text()
    assert "| 1 |" in table and "| 2 |" in table and "network + IO" in table
    assert (run / "learning_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the shipped model is step 1's (best.pt), not the last step's
    import torch

    from unireg.model import load_checkpoint, model_state

    shipped, _ = load_checkpoint(run / "model.pt")
    best = torch.load(run / "best.pt", weights_only=False)
    assert all(torch.equal(v, best[k]) for k, v in model_state(shipped).items())
    # the same command again finds the run finished: no further steps
    assert main(["train", "--config", str(path), "--no-progress"]) == 0
    assert json.loads((run / "model_card.json").read_text())["steps"] == 2


def _plateau_config(root, output: str, drops: int):
    path = _config(root, 20, output=output)
    cfg = yaml.safe_load(path.read_text())
    # min_delta 1.0: every validation after the first is stale, so each one is a plateau
    plateau = {"patience": 1, "min_delta": 1.0, "lr_factor": 0.5, "lr_drops": drops}
    cfg["train"].update(validate_every=1, learning_rate=0.001, plateau=plateau)
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_a_plateau_drops_the_learning_rate_until_its_drops_are_spent(tiny_dataset):
    path = _plateau_config(tiny_dataset, "drops", drops=2)
    run = tiny_dataset / "drops"
    assert main(["train", "--config", str(path), "--no-progress", "--restart"]) == 0
    card = json.loads((run / "model_card.json").read_text())
    # step 1 is the best; the plateaus at steps 2 and 3 halve the rate, the one at step 4 stops
    assert (card["steps"], card["stopped"], card["best_step"]) == (4, "plateau", 1)
    assert card["lr_drops"] == [{"step": 2, "learning_rate": 0.0005}, {"step": 3, "learning_rate": 0.00025}]
    assert [(s, float(v)) for s, v in _log_column(run, "learning_rate")] == [
        (1, 0.001),
        (2, 0.001),
        (3, 0.0005),
        (4, 0.00025),
    ]
    assert "Learning rate x 0.5 at step 2 (to 0.0005)" in (run / "model_card.md").read_text()
    # the finished run, given one more drop, resumes past its plateau exactly as a run that had it all along
    more = yaml.safe_load(path.read_text())
    more["train"]["plateau"]["lr_drops"] = 3
    path.write_text(yaml.safe_dump(more))
    assert main(["train", "--config", str(path), "--no-progress"]) == 0
    straight = _plateau_config(tiny_dataset, "drops_straight", drops=3)
    assert main(["train", "--config", str(straight), "--no-progress", "--restart"]) == 0
    for column in ("total", "learning_rate", "val_dice"):
        assert _log_column(run, column) == _log_column(tiny_dataset / "drops_straight", column)
    assert json.loads((run / "model_card.json").read_text())["steps"] == 5


def test_a_best_found_after_a_drop_keeps_the_drops_that_were_spent(tiny_dataset):
    # the rule's bookkeeping through a real trainer: best, plateau and drop, a new best at the lower
    # rate, then a plateau again, which must stop the run (1 drop allowed), not drop a second time
    path = _plateau_config(tiny_dataset, "drops_kept", drops=1)
    cfg = load_config(path)
    cfg["train"]["plateau"]["min_delta"] = 0.01
    trainer = Trainer(cfg, resume=False, log=lambda *_: None)
    decisions = []
    for step, val_dice in enumerate([0.50, 0.50, 0.55, 0.55], start=1):
        trainer.step = step
        decisions.append(trainer._plateau(val_dice))
    assert decisions == [False, False, False, True]
    assert trainer.best["step"] == 3 and trainer.best["lr_drops"] == [{"step": 2, "learning_rate": 0.0005}]
    assert trainer.learning_rate == 0.0005


def test_a_learning_rate_factor_outside_0_1_is_an_error(tiny_dataset):
    path = _plateau_config(tiny_dataset, "bad_factor", drops=1)
    cfg = yaml.safe_load(path.read_text())
    cfg["train"]["plateau"]["lr_factor"] = 2.0
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(UniregError, match="lr_factor must be between 0 and 1"):
        load_config(path)


def test_sigterm_stops_and_the_resumed_run_equals_an_unstopped_one(tiny_dataset):
    """Stopped wherever SIGTERM lands, then resumed: every logged number is the same as a straight run."""
    import os
    import signal
    import subprocess
    import sys
    import time

    steps = 12
    straight = _config(tiny_dataset, steps, output="straight")
    assert main(["train", "--config", str(straight), "--no-progress", "--restart"]) == 0
    path = tiny_dataset / "stopped.yaml"
    cfg = yaml.safe_load(straight.read_text())
    cfg["output"] = "stopped"
    path.write_text(yaml.safe_dump(cfg))
    run = tiny_dataset / "stopped"
    proc = subprocess.Popen(
        [sys.executable, "-m", "unireg", "train", "--config", str(path), "--no-progress", "--restart"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if (run / "log.csv").is_file() and len((run / "log.csv").read_text().splitlines()) >= 3:  # 2 steps done
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    stopped_at = len(_log_column(run, "total"))
    assert 2 <= stopped_at < steps and f"stopped at step {stopped_at}; run the same command to resume" in out
    assert not (run / "model.pt").exists()
    assert main(["train", "--config", str(path), "--no-progress"]) == 0
    for column in ("total", "dice", "val_dice"):
        assert _log_column(run, column) == _log_column(tiny_dataset / "straight", column)


def test_random_remap_is_the_piecewise_linear_curve_through_its_knots():
    import torch

    from unireg.train import random_remap

    values = np.array([0.0, 0.9, 0.2, 0.6, 1.0, 0.1])  # non-monotone: the tissue order changes
    x = torch.tensor([0.0, 0.2, 0.1, 0.5, 0.9, 1.0, 1.3], dtype=torch.float64)
    expected = np.interp(np.clip(x.numpy(), 0, 1), np.linspace(0, 1, 6), values)
    np.testing.assert_allclose(random_remap(x, values).numpy(), expected, atol=1e-12)


def test_remap_augmentation_changes_only_what_the_network_sees(tiny_dataset):
    trainer = _augmented_trainer(tiny_dataset, "remap", {"remap": 1.0})
    image = trainer._image(trainer.train_set[0])
    remapped = [trainer._remap(image) for _ in range(4)]
    assert all(float((r - image).abs().max()) > 0.05 for r in remapped)
    assert all(float(r[image == 0].abs().max()) == 0.0 for r in remapped)  # background stays 0
    trainer.run(progress=False)
    assert (tiny_dataset / "remap" / "model.pt").is_file()


def test_snapshots_are_loadable_checkpoints_of_their_step(tiny_dataset):
    import torch

    from unireg.model import model_state

    path = _config(tiny_dataset, 4, output="snap")
    cfg = yaml.safe_load(path.read_text())
    cfg["train"].update(snapshot_every=2, checkpoint_every=1)
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", "--config", str(path), "--no-progress", "--restart"]) == 0
    run = tiny_dataset / "snap"
    assert sorted(p.name for p in (run / "snapshots").glob("*.pt")) == ["step_000002.pt", "step_000004.pt"]
    model, payload = load_checkpoint(run / "snapshots" / "step_000002.pt")
    card = payload["model_card"]
    assert (card["steps"], card["best_step"], card["stopped"]) == (2, 2, "snapshot")
    logged = dict(_log_column(run, "val_dice"))
    assert card["validation"]["val_dice"] == pytest.approx(float(logged[2]))
    assert card["device"] == "cpu"
    # the last snapshot holds the last step's weights (last.pt's)
    last = torch.load(run / "last.pt", weights_only=False)
    final, _ = load_checkpoint(run / "snapshots" / "step_000004.pt")
    assert all(torch.equal(v, last["model"][k]) for k, v in model_state(final).items())


def test_finish_ships_a_stopped_run_without_training(tiny_dataset, capsys):
    path = _config(tiny_dataset, 6, output="tofinish")
    run = tiny_dataset / "tofinish"
    assert main(["train", "--config", str(path), "--no-progress", "--restart", "--finish"]) == 1
    assert "nothing to finish" in capsys.readouterr().err
    # a run stopped after step 3 (as SIGTERM leaves it): last.pt, no model.pt
    trainer = Trainer(load_config(path), resume=False, log=lambda *_: None)
    step = trainer.train_step

    def stop_after_three():
        row = step()
        if trainer.step == 3:
            trainer.request_stop()
        return row

    trainer.train_step = stop_after_three
    assert trainer.run(progress=False)["stopped"] == "interrupted"
    assert not (run / "model.pt").exists()
    assert main(["train", "--config", str(path), "--no-progress", "--finish"]) == 0
    card = json.loads((run / "model_card.json").read_text())
    assert (card["steps"], card["best_step"], card["stopped"], card["device"]) == (3, 2, "finished", "cpu")
    assert card["validation"]["val_dice"] == pytest.approx(float(dict(_log_column(run, "val_dice"))[2]))
    assert len(_log_column(run, "total")) == 3  # no step was added
    load_checkpoint(run / "model.pt")


def test_a_cascade_trains_validates_with_io_and_registers(tiny_dataset):
    """model.cascade 2: both stages learn, validation runs its instance optimisation from the
    cascade's composed field, and the shipped model registers through unireg register."""
    import torch

    path = _config(
        tiny_dataset,
        3,
        output="cascade",
        model={"extractor": "mind", "channels": [8, 16, 16], "cascade": 2},
    )
    cfg = yaml.safe_load(path.read_text())
    cfg["train"].update(val_io_steps=3)
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", "--config", str(path), "--no-progress"]) == 0
    run = tiny_dataset / "cascade"
    rows = [r for r in csv.DictReader(open(run / "log.csv")) if r["val_dice"]]
    assert rows and all(float(r["val_dice_io"]) > 0 for r in rows)
    model, payload = load_checkpoint(run / "model.pt")
    assert model.cascade == 2 and payload["config"]["cascade"] == 2
    fresh = build_model(payload["config"])
    for name in ("unet", "refine"):  # both stages moved away from their initialisation
        trained = getattr(model, name).state_dict()
        assert any(not torch.equal(v, fresh.state_dict()[f"{name}.{k}"]) for k, v in trained.items())
    subject = run / "cache" / "s0_T1" / "preproc.nii.gz"  # on the atlas grid
    out = tiny_dataset / "cascade_reg"
    atlas = tiny_dataset / "atlas"
    args = ["register", "--fixed", str(subject), "--moving", str(atlas / "atlas.nii.gz")]
    args += ["--moving-labels", str(atlas / "atlas_labels.nii.gz"), "--out", str(out), "--model", str(run / "model.pt")]
    assert main([*args, "--instance-opt", "3"]) == 0
    info = json.loads((out / "registration.json").read_text())
    assert info["instance_opt_steps"] == 3 and info["jacobian"]["folding_percent"] == 0.0
    assert (out / "warped_labels.nii.gz").is_file()


def test_a_run_can_start_from_a_trained_checkpoint(tiny_dataset, capsys):
    """train.init: a new run starts from a trained model's weights, validates them as its step 0,
    records them in its card, keeps them through a resume, and refuses a checkpoint of another
    architecture with one line that says what differs."""
    import torch

    from unireg.model import model_state

    assert main(["train", "--config", str(_config(tiny_dataset, 2, output="base")), "--no-progress"]) == 0
    base = tiny_dataset / "base"
    base_card = json.loads((base / "model_card.json").read_text())
    path = _config(tiny_dataset, 1, output="further", train={"steps": 1, "validate_every": 2, "val_pairs": 2})
    cfg = yaml.safe_load(path.read_text())
    cfg["train"]["init"] = "base/model.pt"  # relative to the config, like the data paths
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", "--config", str(path), "--no-progress"]) == 0
    run = tiny_dataset / "further"
    rows = list(csv.DictReader(open(run / "log.csv")))
    assert [int(r["step"]) for r in rows] == [0, 1]
    assert rows[0]["total"] == "" and float(rows[0]["val_dice"]) == pytest.approx(base_card["validation"]["val_dice"])
    card = json.loads((run / "model_card.json").read_text())
    digest = (base / "model.pt.sha256").read_text().split()[0]
    assert card["init"] == {"checkpoint": str(base / "model.pt"), "sha256": digest, "steps": base_card["best_step"]}
    assert "Started from model.pt" in (run / "model_card.md").read_text()
    # step 1 (a validation) moved the weights; resumed to step 2, the step-0 row stays the only one
    trained, _ = load_checkpoint(base / "model.pt")
    last = torch.load(run / "last.pt", weights_only=False)
    assert any(not torch.equal(v, last["model"][k]) for k, v in model_state(trained).items())
    cfg["train"]["steps"] = 2
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", "--config", str(path), "--no-progress"]) == 0
    assert [int(r["step"]) for r in csv.DictReader(open(run / "log.csv"))] == [0, 1, 2]
    card = json.loads((run / "model_card.json").read_text())
    assert card["init"]["sha256"] == digest
    # a run from a run from trained weights counts the whole lineage: its init's steps and theirs
    cfg.update(output="third")
    cfg["train"].update(init="further/model.pt", steps=1)
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", "--config", str(path), "--no-progress"]) == 0
    third = json.loads((tiny_dataset / "third" / "model_card.json").read_text())
    assert third["init"]["steps"] == card["best_step"] + base_card["best_step"]
    # another architecture: one line naming what differs, nothing trained
    cfg.update(output="misfit", model={"extractor": "mobilenet_v1_025", "channels": [8, 16, 16], "flow_stride": 1})
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", "--config", str(path), "--no-progress"]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "does not fit the recipe's model" in err and "flow_stride 2 (the recipe: 1)" in err and "model.pt" in err
    cfg["train"]["init"] = "default"  # the packaged model: MIND-SSC, a cascade of 3, wider UNets
    cfg["model"]["flow_stride"] = 2
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", "--config", str(path), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "extractor mind (the recipe: mobilenet_v1_025)" in err and "cascade 3 (the recipe: 1)" in err
    assert not (tiny_dataset / "misfit" / "log.csv").exists()


def test_a_cascade_grows_by_a_stage_from_a_smaller_checkpoint_with_its_stages_frozen(tiny_dataset, capsys):
    """train.init of a cascade of 1 into a recipe's cascade of 2: stage 1 keeps the checkpoint's
    weights, stage 2 starts as a copy of it; with train.frozen_stages 1 only stage 2 learns."""
    import torch

    model = {"extractor": "mind", "channels": [8, 16, 16]}
    assert main(["train", "--config", str(_config(tiny_dataset, 2, output="one", model=model)), "--no-progress"]) == 0
    path = _config(tiny_dataset, 2, output="grown", model={**model, "cascade": 2})
    cfg = yaml.safe_load(path.read_text())
    cfg["train"].update(init="one/model.pt", frozen_stages=1)
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", "--config", str(path), "--no-progress"]) == 0
    assert "new stages [2] copy its stage 1" in capsys.readouterr().out
    base, _ = load_checkpoint(tiny_dataset / "one" / "model.pt")
    grown = build_model({**model, "cascade": 2})
    grown.load_state_dict(torch.load(tiny_dataset / "grown" / "last.pt", weights_only=False)["model"], strict=False)
    (base_stage,), (stage1, stage2) = base.stage_modules(), grown.stage_modules()
    as_stage = base_stage.state_dict()
    assert all(torch.equal(stage1.state_dict()[k], v) for k, v in as_stage.items())  # frozen: the checkpoint's
    assert stage2.state_dict().keys() == as_stage.keys()
    assert any(not torch.equal(stage2.state_dict()[k], v) for k, v in as_stage.items())  # the copy learned
    card = json.loads((tiny_dataset / "grown" / "model_card.json").read_text())
    assert (
        card["init"]["cascade"] == 1
        and "a cascade of 1 grown" in (tiny_dataset / "grown" / "model_card.md").read_text()
    )
    # a grown stage must fit too, and frozen_stages must leave a stage to train
    cfg["train"]["frozen_stages"] = 2
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(
        UniregError, match=r"train.frozen_stages must be a whole number from 0 to model.cascade - 1 = 1, not 2"
    ):
        load_config(path)
    cfg["train"].update(frozen_stages=1, init=None)
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(UniregError, match="train.frozen_stages needs train.init"):
        load_config(path)
    cfg["train"].update(frozen_stages=0, init="one/model.pt")
    cfg.update(output="misgrown", model={**model, "cascade": 2, "channels": [8, 16, 32]})
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", "--config", str(path), "--no-progress"]) == 1
    assert "layer shapes (model.channels or model.cascade)" in capsys.readouterr().err


def test_every_shipped_recipe_loads_and_an_init_recipe_fits_its_checkpoint():
    from pathlib import Path

    from unireg.model import architecture

    recipes = sorted((Path(__file__).resolve().parents[1] / "config").glob("train_*.yaml"))
    assert len(recipes) > 10
    packaged = architecture(load_checkpoint()[0])
    for recipe in recipes:
        cfg = load_config(recipe)
        if cfg["train"]["init"] == "default":
            assert architecture(build_model(cfg["model"])) == packaged, recipe.name
            assert cfg["data"]["split_seed"] == 0 and (cfg["data"]["n_train"], cfg["data"]["n_val"]) == (30, 10)
