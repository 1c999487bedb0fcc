"""PPL checkpoint selection: a validation split outside the generator's data and the test set, held-out
victims, the score and the choice, and the script end to end."""

import json

import pytest
import torch

from datamodules import FashionMNISTDataModule
from models.ppl.selection import (
    checkpoint_score,
    select_checkpoint,
    train_selection_victims,
    validation_split,
)


@pytest.fixture
def retrieval_dm(fashion_mnist_dir):
    dm = FashionMNISTDataModule(
        data_dir=str(fashion_mnist_dir), split="retrieval", num_train=32, num_query=16, download=False
    )
    dm.setup("fit")
    return dm


def test_validation_split_avoids_the_generators_training_images_and_the_test_set(retrieval_dm):
    dm = retrieval_dm
    split = validation_split(dm, num_query=20, num_database=60, seed=1)
    train_rows = set(dm.train_set.indices.tolist())
    test_rows = set(dm.query_set.indices.tolist())
    q, d = set(split["query"].tolist()), set(split["database"].tolist())
    assert len(q) == 20 and len(d) == 60 and not q & d
    assert not (q | d) & train_rows and not (q | d) & test_rows
    assert (q | d) <= set(dm.database_set.indices.tolist())
    assert torch.equal(validation_split(dm, 20, 60, seed=1)["query"], split["query"])  # seeded
    assert not torch.equal(validation_split(dm, 20, 60, seed=2)["query"], split["query"])
    with pytest.raises(ValueError, match="outside the generator's training subset"):
        validation_split(dm, num_query=50, num_database=60)
    fresh = FashionMNISTDataModule(data_dir=str(dm.data_dir), split="retrieval", num_train=32, download=False)
    with pytest.raises(RuntimeError, match="setup"):
        validation_split(fresh)


def test_score_and_choice_follow_the_victims_and_the_quality_floor(retrieval_dm):
    torch.manual_seed(0)
    split = validation_split(retrieval_dm, num_query=20, num_database=70)
    victims = train_selection_victims(split, archs=("mlp",), bits=8, max_epochs=1)
    identity = checkpoint_score(lambda x: x, split, victims)
    # no protection: the released images are the clean ones, every scenario is C->C
    m = identity["map"]["mlp"]
    assert m["C->A"] == pytest.approx(m["C->C"]) and m["A->A"] == pytest.approx(m["C->C"])
    assert identity["score"] == pytest.approx(1.0) and identity["quality"]["ssim"] == pytest.approx(1.0)
    noise = torch.Generator().manual_seed(0)

    class Model:
        def __init__(self, eps):
            self.eps = eps

        def eval(self):
            return self

        def protect(self, x):
            return (x + self.eps * torch.randn(x.shape, generator=noise)).clamp(0, 1)

    models = {"none": Model(0.0), "mild": Model(0.1), "wrecked": Model(3.0)}
    result = select_checkpoint(list(models), models.__getitem__, split, victims, min_ssim=0.2)
    rows = {r["ckpt"]: r for r in result["rows"]}
    assert rows["wrecked"]["quality"]["ssim"] < 0.2  # the most "private" destroys the images: not chosen
    eligible = [k for k, r in rows.items() if r["quality"]["ssim"] >= 0.2]
    assert result["chosen"] == min(eligible, key=lambda k: rows[k]["score"])
    assert select_checkpoint(["none"], models.__getitem__, split, victims, min_ssim=1.1)["chosen"] is None
    with pytest.raises(ValueError, match="no candidate"):
        select_checkpoint([], models.__getitem__, split, victims)


def test_select_script_end_to_end(fashion_mnist_dir, tiny_ppl, tmp_path, capsys):
    import importlib.util

    from conftest import REPO_ROOT
    from fixtures import quiet_trainer

    spec = importlib.util.spec_from_file_location("ppl_select", REPO_ROOT / "scripts" / "ppl_select.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    ckpts = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = tiny_ppl(bits=16)
        trainer = quiet_trainer(max_steps=1, limit_val_batches=0, default_root_dir=str(tmp_path))
        dm = FashionMNISTDataModule(
            data_dir=str(fashion_mnist_dir),
            split="retrieval",
            num_train=32,
            num_query=16,
            batch_size=16,
            download=False,
        )
        trainer.fit(model, datamodule=dm)
        path = tmp_path / f"c{seed}.ckpt"
        trainer.save_checkpoint(path)
        ckpts.append(str(path))
    out = tmp_path / "sel"
    data = [f"data.init_args.data_dir={fashion_mnist_dir}", "data.init_args.num_train=32"]
    data += ["data.init_args.download=false"]
    argv = ["--ckpts", *ckpts, "--out", str(out), "--num-query", "16", "--num-database", "60"]
    argv += ["--victims", "mlp", "--victim-epochs", "1", "--min-ssim", "0"]
    argv += [a for pair in data for a in ("--data-arg", pair)]
    result = script.main(argv)
    assert "victims trained" in capsys.readouterr().out
    # a second run on the same split reuses the held-out victims (they do not depend on the candidates)
    again = script.main(argv)
    assert "victims loaded" in capsys.readouterr().out
    assert [r["map"] for r in again["rows"]] == [r["map"] for r in result["rows"]]
    saved = json.loads((out / "selection.json").read_text())
    assert saved["chosen"] == result["chosen"] and saved["chosen"] in ckpts
    assert [r["step"] for r in saved["rows"]] == [1, 1]
    assert all(0 <= r["map"]["mlp"]["C->C"] <= 1 for r in saved["rows"])
    assert "chosen among SSIM" in (out / "selection.md").read_text()
    with pytest.raises(SystemExit, match="no such checkpoint"):
        script.main(["--ckpts", str(tmp_path / "missing.ckpt"), "--out", str(out)])
