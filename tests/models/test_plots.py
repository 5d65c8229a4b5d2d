from models.cli import main
from models.plots import DRIFT_CURVE_FILE, HEATMAP_FILE, LOSS_CURVE_FILE
from models.train import TrainConfig, Trainer

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_training_draws_the_pictures_and_plot_redraws_them(small_corpus, tmp_path, capsys):
    cfg = TrainConfig(
        model="bigram", data=str(small_corpus), out=str(tmp_path), max_steps=20,
        eval_interval=10, eval_iters=2, device="cpu", learning_rate=0.1,
    )  # fmt: skip
    Trainer(cfg).train()
    pictures = [tmp_path / name for name in (LOSS_CURVE_FILE, DRIFT_CURVE_FILE, HEATMAP_FILE)]
    for picture in pictures:
        assert picture.read_bytes().startswith(PNG_MAGIC)
        picture.unlink()
    assert main(["plot", str(tmp_path)]) == 0
    assert capsys.readouterr().out.split() == [str(p) for p in pictures]
    assert all(p.read_bytes().startswith(PNG_MAGIC) for p in pictures)


def test_plot_on_a_folder_without_a_log_fails_clearly(tmp_path, capsys):
    assert main(["plot", str(tmp_path)]) == 2
    assert "no train_log.jsonl" in capsys.readouterr().err
