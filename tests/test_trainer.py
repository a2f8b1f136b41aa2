import numpy as np
import pytest
import torch
from torch import nn

from covidlens.config import SchedulerConfig, TrainConfig
from covidlens.data.cache import CachedImages
from covidlens.train.trainer import fit, make_scheduler, predict_proba, recompute_batchnorm

CPU = torch.device("cpu")


def toy_data(n: int = 48, seed: int = 0):
    """Bright-centre images are class 1, dark-centre class 0: learnable in a few epochs."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n).astype(np.int64)
    images = rng.integers(0, 60, (n, 16, 16)).astype(np.uint8)
    images[labels == 1, 5:11, 5:11] += 150
    return CachedImages(images), labels


def small_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(16, 2),
    )


def test_fit_restores_the_best_validation_epoch():
    source, labels = toy_data()
    train, val = np.arange(32), np.arange(32, 48)
    config = TrainConfig(epochs=6, batch_size=8, monitor="val_loss", restore_best=True)
    config.optimizer.lr = 0.05
    torch.manual_seed(0)
    model = small_net()
    result = fit(model, source, labels, train, val, config, channels=1, seed=0, device=CPU)
    history = result.history
    assert list(history["epoch"]) == list(range(1, 7))
    assert result.best_epoch == int(history.loc[history["val_loss"].idxmin(), "epoch"])
    probs = torch.from_numpy(predict_proba(model, source, val, 8, 1, CPU))
    loss = nn.functional.nll_loss(torch.log(probs), torch.from_numpy(labels[val]))
    assert float(loss) == pytest.approx(history["val_loss"].min(), rel=1e-5)


def test_same_seed_same_history():
    source, labels = toy_data()
    runs = []
    for _ in range(2):
        torch.manual_seed(1)
        config = TrainConfig(epochs=2, batch_size=8)
        runs.append(
            fit(small_net(), source, labels, np.arange(32), np.arange(32, 48), config, 1, 5, CPU).history
        )
    assert runs[0].equals(runs[1])


def test_precise_batchnorm_statistics_equal_the_data_mean():
    source, labels = toy_data()
    model = small_net()
    rows = np.arange(48)
    recompute_batchnorm(model, source, rows, batch_size=16, channels=1, device=CPU)
    with torch.no_grad():
        x = torch.from_numpy(source.get(rows).astype(np.float32)[:, None] / 255)
        conv_out = model[0](x)
    expected = conv_out.mean(dim=(0, 2, 3))
    torch.testing.assert_close(model[1].running_mean, expected, rtol=1e-4, atol=1e-5)
    assert model[1].momentum == 0.1  # restored


def test_plateau_lowers_the_rate_on_the_patience_th_flat_epoch_like_keras():
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = make_scheduler(
        optimizer, SchedulerConfig(name="plateau", factor=0.5, patience=3, min_delta=1e-4)
    )
    rates = []
    for loss in [1.0, 1.0, 1.00005, 0.99995, 0.5]:
        scheduler.step(loss)
        rates.append(optimizer.param_groups[0]["lr"])
    # epoch 1 sets the best; epochs 2-4 improve by <= 1e-4, so the rate halves after the third of them
    assert rates == [1.0, 1.0, 1.0, 0.5, 0.5]
