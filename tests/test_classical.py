import math

import numpy as np
import pytest
import torch

from covidlens.config import OptimizerConfig, TrainConfig
from covidlens.data.cache import CachedImages
from covidlens.errors import CovidlensError
from covidlens.models import MODELS, create_model
from covidlens.models.classical import (
    MLP,
    LinearSVM,
    OneVsAllHingeLoss,
    SoftmaxMSELoss,
    make_linear_svm,
    make_mlp,
)
from covidlens.models.registry import model_option_names
from covidlens.train.trainer import fit, predict_proba, training_loss

CPU = torch.device("cpu")


def paper_rule(w, b, x, label, c, epsilon, epochs):
    """Paper 003 Eq. 3.1 / 3.3 for every one-vs-all class, by hand; the bias follows the hinge (b += eps C y)."""
    w, b = [list(row) for row in w], list(b)
    for k in range(len(w)):
        y = 1.0 if k == label else -1.0
        score = sum(wi * xi for wi, xi in zip(w[k], x, strict=True)) + b[k]
        if 1 - y * score > 0:
            w[k] = [wi - epsilon * (wi / epochs - c * y * xi) for wi, xi in zip(w[k], x, strict=True)]
            b[k] = b[k] + epsilon * c * y
        else:
            w[k] = [wi - epsilon * wi / epochs for wi in w[k]]
    return w, b


W0 = [[0.5, -1.0, 2.0, 0.0], [3.0, 0.0, 1.0, 1.0], [-0.5, 0.25, 0.0, -1.0]]
B0 = [0.1, -0.2, 0.3]
IMAGES = [[0.2, 0.4, 0.6, 0.8], [1.0, 0.0, 0.5, 0.5]]
LABELS = [1, 0]
C, EPSILON, EPOCHS = 0.5, 0.1, 10


def sgd_step(images: list[list[float]], labels: list[int]) -> LinearSVM:
    svm = make_linear_svm(3, 4, c=C, epsilon=EPSILON, epochs=EPOCHS)
    svm.double()
    with torch.no_grad():
        svm.linear.weight.copy_(torch.tensor(W0, dtype=torch.float64))
        svm.linear.bias.copy_(torch.tensor(B0, dtype=torch.float64))
    optimizer = torch.optim.SGD(svm.parameters(), lr=1.0, momentum=0.0)
    x = torch.tensor(images, dtype=torch.float64).reshape(len(images), 1, 2, 2)
    svm.training_loss(svm(x), torch.tensor(labels)).backward()
    optimizer.step()
    return svm


def test_svm_sgd_step_is_the_papers_update_rule():
    # image 0 (class 1): class 1 scores 3*0.2 + 0.6 + 0.8 - 0.2 = 1.8, so y s >= 1 and only the decay applies
    # (Eq. 3.3); classes 0 and 2 violate their margin (Eq. 3.1).
    svm = sgd_step(IMAGES[:1], LABELS[:1])
    w, b = paper_rule(W0, B0, IMAGES[0], LABELS[0], C, EPSILON, EPOCHS)
    assert w[1] == pytest.approx([wi * (1 - EPSILON / EPOCHS) for wi in W0[1]])  # the no-violation branch
    assert w[0] != pytest.approx([wi * (1 - EPSILON / EPOCHS) for wi in W0[0]])  # the violation branch
    np.testing.assert_allclose(svm.linear.weight.detach().numpy(), w, rtol=0, atol=1e-12)
    np.testing.assert_allclose(svm.linear.bias.detach().numpy(), b, rtol=0, atol=1e-12)


def test_svm_batch_step_is_the_mean_of_the_per_image_rules():
    svm = sgd_step(IMAGES, LABELS)
    rules = [paper_rule(W0, B0, x, label, C, EPSILON, EPOCHS) for x, label in zip(IMAGES, LABELS, strict=True)]
    np.testing.assert_allclose(svm.linear.weight.detach().numpy(), np.mean([r[0] for r in rules], axis=0), atol=1e-12)
    np.testing.assert_allclose(svm.linear.bias.detach().numpy(), np.mean([r[1] for r in rules], axis=0), atol=1e-12)


def test_mlp_loss_is_half_the_squared_error_of_softmax_and_one_hot():
    outputs = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]]
    targets = [2, 0]
    expected = 0.0
    for row, target in zip(outputs, targets, strict=True):
        exps = [math.exp(v) for v in row]
        probs = [e / sum(exps) for e in exps]
        expected += sum((p - (1.0 if k == target else 0.0)) ** 2 for k, p in enumerate(probs))
    expected /= 2 * len(outputs)  # Eq. 3.6: 1 / 2N
    loss = SoftmaxMSELoss()(torch.tensor(outputs, dtype=torch.float64), torch.tensor(targets))
    assert float(loss) == pytest.approx(expected, rel=1e-12)


def test_registered_models_use_the_papers_settings_and_the_trainer_picks_their_losses():
    for name, loss_type in (("LinearSVM", OneVsAllHingeLoss), ("MLP", SoftmaxMSELoss)):
        spec = MODELS.get(name)
        assert (spec.family, spec.paper, spec.input_size) == ("classical", "003", 88)
        for in_chans in (1, 3):
            model = create_model(name, num_classes=4, in_chans=in_chans)
            assert model.in_features == in_chans * 88 * 88
            assert model(torch.rand(2, in_chans, 88, 88)).shape == (2, 4)
            with pytest.raises(ValueError, match="takes"):
                model(torch.rand(2, in_chans, 64, 64))
        assert isinstance(training_loss(model, TrainConfig()), loss_type)
        with pytest.raises(CovidlensError, match="no pretrained weights"):
            create_model(name, num_classes=4, pretrained=True)
    svm = create_model("LinearSVM", num_classes=4, in_chans=1)
    assert (svm.c, svm.epsilon, svm.epochs) == (0.01, 0.0001, 100)
    assert not svm.linear.weight.any() and not svm.linear.bias.any()
    mlp = create_model("MLP", num_classes=4, in_chans=1)
    assert isinstance(mlp, MLP)
    assert [m.out_features for m in mlp.modules() if isinstance(m, torch.nn.Linear)] == [512, 512, 4]
    assert sum(isinstance(m, torch.nn.Sigmoid) for m in mlp.modules()) == 2


def left_right_images(n: int = 48, seed: int = 0) -> tuple[CachedImages, np.ndarray]:
    """16 x 16 noise; class 0 has a bright left half, class 1 a bright right half."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n, dtype=np.int64) % 2
    images = rng.integers(0, 60, (n, 16, 16)).astype(np.uint8)
    images[labels == 0, :, :8] += 150
    images[labels == 1, :, 8:] += 150
    return CachedImages(images), labels


@pytest.mark.parametrize(
    ("model_factory", "channels", "optimizer"),
    [
        # lr 1 with plain SGD: each step is the paper's rule with this epsilon
        (
            lambda: make_linear_svm(2, 16 * 16, c=1.0, epsilon=0.01, epochs=5),
            1,
            OptimizerConfig(name="sgd", lr=1.0, momentum=0.0),
        ),
        # a larger step saturates the softmax, where its squared error has almost no gradient
        (lambda: make_mlp(2, 3 * 16 * 16), 3, OptimizerConfig(name="adam", lr=0.001)),
    ],
    ids=["svm", "mlp"],
)
def test_trains_through_the_trainer_on_a_separable_toy_set(model_factory, channels, optimizer):
    source, labels = left_right_images()
    train, val = np.arange(32), np.arange(32, 48)
    config = TrainConfig(epochs=5, batch_size=8, optimizer=optimizer, restore_best=False, device="cpu")
    torch.manual_seed(0)
    model = model_factory()
    result = fit(model, source, labels, train, val, config, channels=channels, seed=0, device=CPU)
    assert result.history["train_accuracy"].iloc[-1] > 0.9
    probs = predict_proba(model, source, train, 8, channels, CPU)
    assert (probs.argmax(1) == labels[train]).mean() > 0.9


def test_options_reach_the_builders_and_are_checked_against_their_signatures():
    svm = create_model("LinearSVM", num_classes=4, in_chans=1, options={"c": 1, "epsilon": 0.001, "epochs": 20})
    assert (svm.c, svm.epsilon, svm.epochs) == (1.0, 0.001, 20) and isinstance(svm.c, float)
    mlp = create_model("MLP", num_classes=3, in_chans=1, options={"hidden": 16})
    assert [m.out_features for m in mlp.modules() if isinstance(m, torch.nn.Linear)] == [16, 16, 3]
    assert model_option_names("LinearSVM") == ["c", "epsilon", "epochs", "height", "width"]
    assert model_option_names("MLP") == ["hidden", "height", "width"] and model_option_names("CORONet") == []
    with pytest.raises(CovidlensError, match="LinearSVM has no option C, lr; its options are c, epsilon, epochs"):
        create_model("LinearSVM", num_classes=4, options={"C": 0.1, "lr": 1})
    with pytest.raises(CovidlensError, match="CORONet has no option width; it takes no options"):
        create_model("CORONet", num_classes=4, options={"width": 2})
    with pytest.raises(CovidlensError, match="model.options.hidden: 'wide' is not a valid int for MLP"):
        create_model("MLP", num_classes=4, options={"hidden": "wide"})
    with pytest.raises(CovidlensError, match="model.options.epochs: 2.5 is not a valid int"):
        create_model("LinearSVM", num_classes=4, options={"epochs": 2.5})
    with pytest.raises(CovidlensError, match="model.options.epochs: 0 must be above 0"):
        create_model("LinearSVM", num_classes=4, options={"epochs": 0})
    with pytest.raises(CovidlensError, match="model.options.drop_rate: not an option; .* model.drop_rate"):
        create_model("MLP", num_classes=4, options={"drop_rate": 0.5})


def test_timm_models_get_their_options_unchecked_and_refuse_unknown_ones():
    assert model_option_names("test_resnet") is None
    model = create_model("test_resnet", num_classes=3, in_chans=1, options={"global_pool": "max"})
    assert model.global_pool.pool_type == "max"
    with pytest.raises(CovidlensError, match="timm's test_resnet does not take no_such_option"):
        create_model("test_resnet", num_classes=3, options={"no_such_option": 1})


def test_batch_of_one_trains_the_svm_image_by_image_as_the_paper_loops():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 2, 2)).astype(np.uint8)  # an odd count: no image is left out
    labels = np.array([0, 1, 2, 1, 0])
    c, epsilon, epochs = 0.5, 0.1, 10
    config = TrainConfig(
        epochs=1, batch_size=1, optimizer=OptimizerConfig(name="sgd", lr=1.0, momentum=0.0), restore_best=False
    )
    svm = create_model("LinearSVM", num_classes=3, in_chans=1, options={"c": c, "epsilon": epsilon, "epochs": epochs})
    svm.in_features = 4  # the 88 px layer swapped for a 2 x 2 one, started at zero as the paper does
    svm.linear = torch.nn.Linear(4, 3)
    torch.nn.init.zeros_(svm.linear.weight)
    torch.nn.init.zeros_(svm.linear.bias)
    rows = np.arange(5)
    fit(svm, CachedImages(images), labels, rows, rows, config, channels=1, seed=3, device=CPU)
    order = torch.randperm(5, generator=torch.Generator().manual_seed(3)).numpy()  # the trainer's epoch order
    w, b = [[0.0] * 4 for _ in range(3)], [0.0] * 3
    for row in order:
        w, b = paper_rule(w, b, (images[row].reshape(-1) / 255.0).tolist(), int(labels[row]), c, epsilon, epochs)
    np.testing.assert_allclose(svm.linear.weight.detach().numpy(), w, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(svm.linear.bias.detach().numpy(), b, rtol=1e-5, atol=1e-7)


def test_flattening_models_are_sized_by_the_runs_input_unless_the_options_say_otherwise():
    svm = create_model("LinearSVM", num_classes=4, in_chans=1, input_shape=(50, 70))
    assert svm.linear.in_features == 50 * 70
    mlp = create_model("MLP", num_classes=4, in_chans=2, input_shape=(50, 70), options={"height": 10, "width": 10})
    assert mlp.hidden1[0].in_features == 2 * 10 * 10
    assert create_model("MLP", num_classes=4, in_chans=1).hidden1[0].in_features == 88 * 88
