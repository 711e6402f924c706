"""The meta-learners on models of the user's own (issue 20): torchvision's ResNet-18 and MobileNetV3-small and an
MLP with stock BatchNorm. Each must get the true meta-gradient (vmap and the per-task loop agree in float64) and
meta-train, adapt and evaluate; what cannot work is refused in one line."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision
from torch import nn

from metaticket import ANIL, BOIL, MetaLearner, convert
from metaticket.meta.modules import ModelChanged
from metaticket.tasks import Tasks


def own_mlp() -> nn.Module:
    """What a user writes: torch's own BatchNorm1d (one without running statistics, one with)."""
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.BatchNorm1d(32, track_running_stats=False), nn.ReLU(),
                         nn.Linear(32, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 5))


# name: (builder, image shape, classifier module)
MODELS = {
    "mlp": (own_mlp, (1, 8, 8), "7"),
    "resnet18": (lambda: torchvision.models.resnet18(num_classes=5), (3, 16, 16), "fc"),
    "mobilenet_v3_small": (lambda: torchvision.models.mobilenet_v3_small(num_classes=5), (3, 16, 16), "classifier.3"),
}


def tasks(shape: tuple[int, ...], batch: int = 2, dtype: torch.dtype = torch.float32) -> Tasks:
    g = torch.Generator().manual_seed(0)
    y = torch.arange(5).repeat(batch, 1)
    return Tasks(torch.randn(batch, 5, *shape, generator=g, dtype=dtype), y,
                 torch.randn(batch, 5, *shape, generator=g, dtype=dtype), y.clone())


def build(name: str, method: str) -> nn.Module:
    make, _, head = MODELS[name]
    torch.manual_seed(0)
    model = make()
    if method == "metaticket":
        convert(model, mask="threshold", keep_dense=[head], generator=torch.Generator().manual_seed(1))
    return model


def check_meta_gradient_and_training(name: str, method: str, first_order: bool) -> None:
    """vmap and the per-task loop give the same float64 meta-gradient; then 2 meta-steps, evaluate and adapt."""
    shape = MODELS[name][1]
    batch = tasks(shape, dtype=torch.float64)
    grads = {}
    for mode in ("loop", "vmap"):
        with pytest.warns(ModelChanged, match="task-statistics BatchNorm"):
            learner = MetaLearner(build(name, method), method=method, vectorize=mode, first_order=first_order)
        learner.double().eval()  # eval: dropout off, so both paths compute the same function
        learner.meta_gradient(batch, steps=1, first_order=first_order)
        grads[mode] = {n: p.grad.clone() for n, p in learner.named_parameters() if p.grad is not None}
    assert grads["loop"] and grads["loop"].keys() == grads["vmap"].keys()
    for n, lo in grads["loop"].items():  # float64: rounding differs by < 1e-10 relative, a wrong gradient by ~1e-2
        assert float((grads["vmap"][n] - lo).norm()) <= 1e-7 * float(lo.norm()) + 1e-14, n
    with pytest.warns(ModelChanged):
        learner = MetaLearner(build(name, method), method=method, outer_lr=1e-3 if method == "maml" else 1.0,
                              first_order=first_order)
    small = tasks(shape)
    for _ in range(2):
        out = learner.meta_step(small)
        assert math.isfinite(out["loss"]) and 0 <= out["acc"] <= 1
    loss, acc = learner.evaluate(small)
    assert loss.shape == (2,) and torch.isfinite(loss).all() and acc.shape == (2,)
    assert len(learner.adapt(small)) == 2


@pytest.mark.parametrize("method", ["maml", "metaticket"])
def test_own_mlp_with_stock_batchnorm_gets_the_true_second_order_meta_gradient(method):
    check_meta_gradient_and_training("mlp", method, first_order=False)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["maml", "metaticket"])
@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small"])
def test_torchvision_models_meta_train_first_order(name, method):
    """15-190 s each on 2 cores (vmap over MobileNet's depthwise convs in float64 is the slowest): slow."""
    check_meta_gradient_and_training(name, method, first_order=True)


def test_torchvision_resnet18_meta_steps_adapts_and_evaluates():
    """The crash users met at the first evaluation (BatchNorm running statistics in a functional call), fast."""
    with pytest.warns(ModelChanged, match="replaced 20 BatchNorm layer"):
        learner = MetaLearner(build("resnet18", "maml"), method="maml", first_order=True, outer_lr=1e-3)
    small = tasks((3, 16, 16), batch=1)
    assert math.isfinite(learner.meta_step(small)["loss"])
    loss, acc = learner.evaluate(small)  # adapts 3 steps per task, then scores the queries
    assert loss.shape == (1,) and torch.isfinite(loss).all()
    # the module behaviour on a real torchvision model: what parameters() means, modes, a state round trip
    assert len(list(learner.parameters())) == len(list(learner.model.parameters())) == 62  # MAML learns all
    assert not learner.eval().twin.training and learner.train().model.training
    with pytest.warns(ModelChanged):
        again = MetaLearner(build("resnet18", "maml"), method="maml", first_order=True, outer_lr=1e-3)
    again.load_state_dict(learner.state_dict())
    assert again.step == 1 and torch.equal(again.model.fc.weight, learner.model.fc.weight)
    assert again.optimizer.state_dict()["state"].keys() == learner.optimizer.state_dict()["state"].keys()


@pytest.mark.slow
@pytest.mark.parametrize("method", ["maml", "metaticket"])
def test_torchvision_resnet18_gets_the_true_second_order_meta_gradient(method):
    """Second order through ResNet-18 in float64: 30-50 s each on 2 cores, so slow."""
    check_meta_gradient_and_training("resnet18", method, first_order=False)


@pytest.mark.parametrize("method", ["maml", "metaticket"])
def test_mobilenet_v3_second_order_is_refused_naming_its_hardsigmoid(method):
    model = build("mobilenet_v3_small", method)
    before = {n: type(m) for n, m in model.named_modules()}
    with pytest.raises(ValueError, match=r"module 'features\.1\.block\.1\."
                                                                     r"scale_activation' \(Hardsigmoid\) has no "
                                                                     r"second derivative.*first_order=True"):
        MetaLearner(model, method=method)
    assert {n: type(m) for n, m in model.named_modules()} == before  # refused: nothing replaced


def test_a_stock_batchnorm_under_vmap_is_what_the_replacement_fixes():
    """The control: torch's fused batch_norm under vmap gives a wrong second-order meta-gradient."""
    from torch.func import functional_call, grad, vmap

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8, track_running_stats=False), nn.ReLU(),
                          nn.Linear(8, 3)).double()
    params = dict(model.named_parameters())
    x, y = torch.randn(2, 6, 6, dtype=torch.float64), torch.arange(3).repeat(2, 2)

    def query_loss(p: dict, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
        def support(q: dict) -> torch.Tensor:
            return nn.functional.cross_entropy(functional_call(model, q, (xs,)), ys)

        g = grad(support)(p)
        adapted = {k: v - 0.4 * g[k] for k, v in p.items()}
        return nn.functional.cross_entropy(functional_call(model, adapted, (xs,)), ys)

    looped = torch.autograd.grad(sum(query_loss(params, x[i], y[i]) for i in range(2)), list(params.values()))
    mapped = torch.autograd.grad(vmap(lambda a, b: query_loss(params, a, b))(x, y).sum(), list(params.values()))
    worst = max(float((m - lo).norm() / lo.norm()) for m, lo in zip(mapped, looped))
    assert worst > 1e-3, "torch's vmap batch_norm double backward is right now: the replacement could be dropped"


def test_head_argument_and_empty_parameter_sets():
    def classifier_model() -> nn.Module:
        model = nn.Module()
        model.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU())
        model.classifier = nn.Linear(16, 5)
        model.forward = lambda x: model.classifier(model.body(x))
        return model

    anil = ANIL(classifier_model())  # no module called head: the last Linear is the head
    assert anil.inner_names == ["classifier.weight", "classifier.bias"]
    boil = BOIL(classifier_model(), head="classifier")
    assert "classifier.weight" not in boil.inner_names and "body.1.weight" in boil.inner_names
    assert ANIL(classifier_model(), head=lambda n: n.startswith("body.1")).inner_names == ["body.1.weight",
                                                                                       "body.1.bias"]
    with pytest.raises(ValueError, match="head='fc' is not a module of the model"):
        ANIL(classifier_model(), head="fc")
    with pytest.raises(ValueError, match="adapts the head .* but no parameter of the model is there"):
        ANIL(classifier_model(), head=lambda n: False)
    with pytest.raises(ValueError, match="module '0' .*BatchNorm3d.* updates running statistics"):
        MetaLearner(nn.Sequential(nn.BatchNorm3d(2), nn.Flatten(), nn.Linear(8, 5)), method="maml")
    with pytest.raises(ValueError, match="uninitialized .*lazy"):
        MetaLearner(nn.Sequential(nn.Flatten(), nn.LazyLinear(5)), method="maml")


def test_the_learner_moves_trains_evaluates_and_saves_like_a_module():
    with pytest.warns(ModelChanged):
        learner = MetaLearner(build("mlp", "metaticket"), method="metaticket", outer_lr=1.0)
    batch = tasks((1, 8, 8))
    learner.meta_step(batch)  # optimizer state (momentum) exists now
    assert [n for n, _ in learner.named_parameters()] == learner.outer_names
    assert all(n.endswith("scores") for n, _ in learner.named_parameters())
    learner.double()  # after construction: model, twin and optimizer state move together
    assert all(p.dtype == torch.float64 for p in learner.model.parameters())
    assert all(b.dtype == torch.float64 for b in learner.twin.buffers()) or not list(learner.twin.buffers())
    momentum = [s["momentum_buffer"] for s in learner.optimizer.state.values()]
    assert momentum and all(m.dtype == torch.float64 for m in momentum)
    double = tasks((1, 8, 8), dtype=torch.float64)
    assert math.isfinite(learner.meta_step(double)["loss"])
    learner.eval()
    assert not learner.model.training and not learner.twin.training
    state = learner.state_dict()
    assert {"model", "optimizer", "scheduler", "step", "iterand"} <= state.keys() and state["step"] == 2
    with pytest.warns(ModelChanged):
        again = MetaLearner(build("mlp", "metaticket"), method="metaticket", outer_lr=1.0).double()
    again.load_state_dict(state)
    assert again.step == 2
    for (n, a), (_, b) in zip(learner.model.state_dict().items(), again.model.state_dict().items()):
        assert torch.equal(a, b), n


def test_tasks_from_an_image_folder_and_meta_test_with_a_ci(tmp_path):
    from PIL import Image

    from metaticket import MAML, build_model, class_images, meta_test, sampler_from_dataset

    rng = torch.Generator().manual_seed(0)
    for c in range(6):  # an ImageFolder: one folder per class, images of different sizes (resized on the way)
        (tmp_path / f"class{c}").mkdir()
        for i in range(5):
            side = 20 + i
            pixels = (torch.rand(side, side, 3, generator=rng) * 40 + 30 * c).to(torch.uint8).numpy()
            Image.fromarray(pixels).save(tmp_path / f"class{c}" / f"{i}.png")
    folder = torchvision.datasets.ImageFolder(str(tmp_path))
    images, labels = class_images(folder, image_size=16)
    assert images.shape == (6, 5, 3, 16, 16) and images.dtype == torch.uint8 and labels == list(range(6))
    train = sampler_from_dataset(folder, ways=3, shots=1, queries=2, classes=[0, 1, 2, 3], image_size=16)
    test = sampler_from_dataset(folder, ways=3, shots=1, queries=2, classes=[3, 4, 5], image_size=16, seed=7)
    batch = train.sample(2)
    assert batch.support_x.shape == (2, 3, 3, 16, 16) and batch.query_y.tolist() == [[0, 0, 1, 1, 2, 2]] * 2
    learner = MAML(build_model("conv4", num_classes=3, in_channels=3, image_size=16, channels=4), first_order=True)
    learner.meta_step(batch)
    score = meta_test(learner, test, n_tasks=20, batch=8)
    assert score["tasks"] == 20 and 0 <= score["accuracy"] <= 100 and score["ci95"] >= 0
    # tensors in [0, 1] (a dataset with ToTensor()) give the same uint8 images as PIL input
    as_float = [(torchvision.transforms.functional.to_tensor(folder[i][0]), folder[i][1]) for i in range(len(folder))]
    again, _ = class_images(as_float, image_size=16)
    assert torch.equal(again, images)
    with pytest.raises(Exception, match="classes \\[9\\] have no images"):
        sampler_from_dataset(folder, ways=2, shots=1, queries=1, classes=[9], image_size=16)


def test_a_ticket_of_an_own_model_round_trips_with_its_build_function(tmp_path):
    from metaticket import MetaTicket, export_ticket, load_ticket, ticket_info
    from metaticket.errors import MetaticketError

    def make(seed: int = 0) -> nn.Module:
        torch.manual_seed(seed)  # the same untrained values on every call
        model = own_mlp()
        return convert(model, mask="threshold", keep_dense=["7"], generator=torch.Generator().manual_seed(seed))

    with pytest.warns(ModelChanged):
        learner = MetaTicket(make(), outer_lr=1.0)
    for _ in range(3):
        learner.meta_step(tasks((1, 8, 8)))
    path = tmp_path / "own.ticket"
    report = export_ticket(learner.model, None, path, build=make)
    assert report["mask_bits"] > 0 and ticket_info(path)["config"] is None
    rebuilt = load_ticket(path, build=make)
    x = torch.randn(10, 1, 8, 8)
    assert torch.equal(rebuilt(x), learner.model.eval()(x))
    with pytest.raises(MetaticketError, match="holds a model of your own: pass build="):
        load_ticket(path)
    with pytest.raises(MetaticketError, match="build\\(\\) regenerates other weights"):
        load_ticket(path, build=lambda: make(seed=1))
    seeds = iter(range(1, 10))
    with pytest.raises(MetaticketError, match="gives other values on every call"):
        export_ticket(learner.model, None, tmp_path / "x.ticket", build=lambda: make(seed=next(seeds)))
