import copy

import numpy as np
import pytest
import torch
from torch import nn

from covidlens.config import SchedulerConfig, TrainConfig
from covidlens.data.cache import CachedImages
from covidlens.train import trainer
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


def fit_with_scripted_validation(monkeypatch, scores, monitor, restore_best=True):
    """Fit small_net while validation returns `scores` ((loss, accuracy) per epoch); the weights after each
    epoch are recorded, so the test can tell which epoch the model ends holding."""
    script = iter(scores)
    monkeypatch.setattr(trainer, "_evaluate", lambda *args, **kwargs: next(script))
    source, labels = toy_data()
    config = TrainConfig(epochs=len(scores), batch_size=8, monitor=monitor, restore_best=restore_best)
    config.optimizer.lr = 0.05
    torch.manual_seed(0)
    model = small_net()
    states = []
    result = fit(
        model, source, labels, np.arange(32), np.arange(32, 48), config, channels=1, seed=0, device=CPU,
        on_epoch=lambda record: states.append(copy.deepcopy(model.state_dict())),
    )
    held = [
        epoch
        for epoch, state in enumerate(states, start=1)
        if all(torch.equal(state[key], value) for key, value in model.state_dict().items())
    ]
    assert held == [result.best_epoch]  # every epoch changed the weights, so exactly one matches
    assert list(result.history["val_loss"]) == [loss for loss, _ in scores]
    return result.best_epoch


# (loss, accuracy) per epoch
SCRIPT = [(1.0, 0.50), (0.5, 0.40), (0.7, 0.80), (0.6, 0.70), (0.5, 0.90), (0.4, 0.85)]


@pytest.mark.parametrize(
    ("monitor", "scores", "best"),
    [
        ("val_loss", SCRIPT, 6),
        ("val_loss", [(1.0, 0.5), (0.8, 0.5), (0.8, 0.9), (0.9, 0.9)], 2),  # a tie is no improvement
        ("val_accuracy", SCRIPT, 5),
        ("val_accuracy", [(1.0, 0.5), (0.8, 0.6), (0.7, 0.6), (0.9, 0.55)], 2),
        # SaveBest: epoch 2 is a loss record only, 3 an accuracy record only, 4 beats epoch 1 on both but
        # neither all-time record, 5 ties the lowest loss, 6 misses the highest accuracy: epoch 1 stays
        ("val_loss_and_accuracy", SCRIPT, 1),
        ("val_loss_and_accuracy", SCRIPT + [(0.3, 0.95), (0.35, 0.99)], 7),
        ("val_loss_and_accuracy", [(1.0, 0.5), (0.9, 0.6), (0.8, 0.55), (0.7, 0.7)], 4),
    ],
)
def test_the_monitor_decides_which_epoch_is_restored(monkeypatch, monitor, scores, best):
    assert fit_with_scripted_validation(monkeypatch, scores, monitor) == best


def test_without_restore_best_the_last_epoch_is_kept(monkeypatch):
    assert fit_with_scripted_validation(monkeypatch, SCRIPT, "val_loss_and_accuracy", restore_best=False) == 6
