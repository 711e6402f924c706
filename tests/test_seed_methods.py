"""Slot Machines, fixed random masks with layer-wise ratios, and the IteRand approximation benchmark (issue 7)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import MEAN, REPO, STD, bench, events, plan, run, snapshot, toy_data

from metaticket.baselines.methods import method_label, method_of
from metaticket.baselines.train import trainable
from metaticket.config import dump_config, load_config
from metaticket.core.randommask import (
    RATIOS,
    MaskedConv2d,
    MaskedLinear,
    apply_random_masks,
    draw_mask,
    layer_sparsities,
    prunable_layers,
)
from metaticket.core.slots import SlotConv2d, SlotLinear, freeze_slots, index_bits, slot_index, slot_layers
from metaticket.core.supermask import SupermaskConv2d, rerandomize, sparsity_report
from metaticket.errors import MetaticketError
from metaticket.models import build_model, list_models
from metaticket.models.registry import make_layers
from metaticket.runs.checkpoint import save_atomic
from metaticket.runs.factory import build_classifier, from_slot_run
from metaticket.runs.monitor import Monitor
from metaticket.runs.supervised import train_supervised
from metaticket.runs.ticket import export_ticket, load_ticket, pack_index, same_outputs, unpack_index


# ------------------------------------------------------------------------------------------ Slot Machines
def test_greedy_slot_picks_the_value_of_the_highest_score():
    layer = SlotLinear(6, 5, slots=4, select="greedy", generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        layer.scores.copy_(torch.randn(layer.scores.shape, generator=torch.Generator().manual_seed(1)))
    best = layer.scores.argmax(0)
    expected = torch.stack([layer.values[best[i, j], i, j] for i in range(5) for j in range(6)]).view(5, 6)
    assert torch.equal(layer.selected_weight().detach(), expected)
    x = torch.randn(3, 6)
    assert torch.allclose(layer(x), x @ expected.T + layer.bias)
    # the four values are distinct draws from the layer's init distribution
    assert layer.values.shape == (4, 5, 6) and layer.values.unique().numel() == 4 * 5 * 6


def test_straight_through_gradient_reaches_every_score_as_dL_dw_times_the_value():
    layer = SlotConv2d(3, 4, 3, padding=1, slots=8, generator=torch.Generator().manual_seed(0))
    x = torch.randn(2, 3, 5, 5)
    layer(x).pow(2).sum().backward()
    # reference: dL/dw of the same conv with the selected weight
    w = layer.weight.clone().requires_grad_()
    torch.nn.functional.conv2d(x, w, None, padding=1).pow(2).sum().backward()
    grad_w = w.grad.view(4, -1)
    assert layer.scores.grad is not None and bool((layer.scores.grad != 0).all())
    assert torch.allclose(layer.scores.grad, grad_w.unsqueeze(0) * layer.values, atol=1e-5)
    assert layer.values.grad is None and not layer.values.requires_grad  # the values never learn


def test_sampled_slots_follow_the_scores_in_training_and_are_greedy_in_eval():
    scores = torch.tensor([[1.0], [3.0], [0.0], [4.0]]).repeat(1, 20000)  # p = 0.125, 0.375, 0, 0.5
    torch.manual_seed(0)
    picks = slot_index(scores, "sampled", training=True)
    freq = torch.bincount(picks, minlength=4).float() / picks.numel()
    assert torch.allclose(freq, torch.tensor([0.125, 0.375, 0.0, 0.5]), atol=0.01)
    assert bool((slot_index(scores, "sampled", training=False) == 3).all())
    assert bool((slot_index(scores, "greedy", training=True) == 3).all())


def test_sampled_slots_pass_the_straight_through_gradient_of_the_drawn_weight_to_every_score():
    layer = SlotLinear(7, 5, slots=4, select="sampled", generator=torch.Generator().manual_seed(0)).train()
    x = torch.randn(3, 7)
    torch.manual_seed(1)
    w = layer.selected_weight()  # this forward pass's draw, with the straight-through path to the scores
    drawn = w.detach()
    assert not torch.equal(drawn, layer.weight)  # a draw, not the greedy choice (fails for greedy selection)
    assert bool((layer.values == drawn.unsqueeze(0)).any(0).all())  # every entry is one of its K values
    torch.nn.functional.linear(x, w, layer.bias).pow(2).sum().backward()
    ref = drawn.clone().requires_grad_()
    torch.nn.functional.linear(x, ref, layer.bias).pow(2).sum().backward()
    assert torch.allclose(layer.scores.grad, ref.grad.unsqueeze(0) * layer.values, atol=1e-5)
    assert bool((layer.scores.grad != 0).all())


@pytest.mark.parametrize("name", ["mlp", "conv4", "conv6", "resnet18"])
def test_every_model_has_a_slot_variant_through_the_layer_factories(name):
    layers = make_layers(supermask=False, slots=2, dense_head=False, generator=torch.Generator().manual_seed(0),
                         norm="batch", norm_affine=False)
    kwargs = dict(num_classes=5, in_channels=1 if name in ("mlp", "conv4") else 3, layers=layers, width=0.25)
    kwargs["image_size"] = 28 if name in ("mlp", "conv4") else 32
    model = build_model(name, **kwargs)
    kinds = {type(m) for m in model.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))}
    assert not kinds, f"plain layers left in the slot variant of {name}: {kinds}"
    assert len(list(slot_layers(model))) >= 2
    x = torch.randn(2, kwargs["in_channels"], kwargs["image_size"], kwargs["image_size"])
    model(x).sum().backward()
    assert all(layer.scores.grad is not None for _, layer in slot_layers(model))


def test_slot_training_changes_only_scores_and_freezing_keeps_the_function(tmp_path):
    config = load_config(REPO / "configs" / "cifar10" / "conv6_slot_k8_greedy.yaml",
                         ["model.width=0.125", "data.image_size=16"])
    model = build_classifier(config, 4)
    before = snapshot(model)
    p = plan("slot", epochs=1)
    train_supervised(model, toy_data(), toy_data(32, 1), MEAN, STD, p, tmp_path, Monitor(tmp_path, quiet=True),
                     torch.device("cpu"))
    after = snapshot(model)
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved and all(k.endswith("scores") or "running_" in k or "num_batches" in k for k in moved)
    assert not any(k.endswith("values") for k in moved)
    x = torch.randn(4, 3, 16, 16)
    model.eval()
    y = model(x)
    frozen = freeze_slots(model)
    assert not list(slot_layers(frozen)) and torch.allclose(frozen(x), y, atol=1e-6)
    assert all(p.requires_grad for p in frozen.parameters() if p.dim() > 1)  # fine-tunable weights


@pytest.mark.parametrize("k", [2, 3, 8, 9])
def test_slot_ticket_stores_ceil_log2_k_bits_per_connection(k, tmp_path):
    index = torch.randint(0, k, (1001,), generator=torch.Generator().manual_seed(k))
    packed = pack_index(index, k)
    assert packed.numel() == math.ceil(1001 * math.ceil(math.log2(k)) / 8) == math.ceil(1001 * index_bits(k) / 8)
    assert torch.equal(unpack_index(packed, 1001, k), index)
    config = load_config(REPO / "configs" / "cifar10" / "conv6_slot_k8_greedy.yaml",
                         [f"model.slots={k}", "model.width=0.125"])
    model = build_classifier(config, 10)
    with torch.no_grad():
        for _, layer in slot_layers(model):
            layer.scores.normal_()
    report = export_ticket(model, config, tmp_path / "s.ticket", num_classes=10)
    connections = sum(layer.scores[0].numel() for _, layer in slot_layers(model))
    assert report["slot_bits"] == connections * index_bits(k)
    assert report["bytes"] < connections * index_bits(k) / 8 + 12_000  # bits + config/head/overhead
    loaded = load_ticket(tmp_path / "s.ticket")
    assert same_outputs(model, loaded, torch.randn(3, 3, 32, 32)) == 0.0


# ------------------------------------------------------------------------------------------ random masks
SHAPES = [torch.Size(s) for s in ([64, 3, 3, 3], [64, 64, 3, 3], [128, 64, 3, 3], [128, 128, 3, 3],
                                  [256, 128, 3, 3], [256, 256, 3, 3], [256, 4096], [256, 256], [10, 256])]


def overall(shapes: list[torch.Size], per_layer: list[float]) -> float:
    return sum(s * n.numel() for s, n in zip(per_layer, shapes)) / sum(n.numel() for n in shapes)


@pytest.mark.parametrize("ratios", RATIOS)
@pytest.mark.parametrize("sparsity", [0.5, 0.8, 0.9, 0.99])
def test_each_ratio_rule_reaches_the_requested_overall_sparsity(ratios, sparsity):
    per_layer = layer_sparsities(SHAPES, sparsity, ratios)
    assert all(0.0 <= s < 1.0 or s == 1.0 - 0.0 for s in per_layer) and len(per_layer) == len(SHAPES)
    assert overall(SHAPES, per_layer) == pytest.approx(sparsity, abs=0.005)


def test_ratio_rules_give_their_documented_per_layer_sparsities():
    d = 0.2  # sparsity 0.8
    uniform = layer_sparsities(SHAPES, 0.8, "uniform")
    assert uniform == pytest.approx([0.8] * len(SHAPES))
    # ER / ERK: density proportional to (c_in + c_out) / (c_in c_out) [+ kernel dims], capped at 1
    for rule in ("er", "erk"):
        dens = [1 - s for s in layer_sparsities(SHAPES, 0.8, rule)]
        raw = [(s[0] + s[1] + (sum(s[2:]) if rule == "erk" else 0)) /
               (s.numel() if rule == "erk" else s[0] * s[1]) for s in SHAPES]
        free = [i for i, x in enumerate(dens) if x < 1.0]
        ratio = [dens[i] / raw[i] for i in free]
        assert max(ratio) == pytest.approx(min(ratio), rel=1e-9)
        assert dens[0] == 1.0  # the first conv (3 input channels) is kept dense at 80% overall sparsity
    # balanced: the same number of kept weights in every layer that is not dense
    dens = [1 - s for s in layer_sparsities(SHAPES, 0.8, "balanced")]
    kept = [x * s.numel() for x, s in zip(dens, SHAPES)]
    free = [k for k, x in zip(kept, dens) if x < 1.0]
    assert max(free) == pytest.approx(min(free), rel=1e-9)
    assert all(k <= min(free) + 1e-6 for k, x in zip(kept, dens) if x == 1.0)
    # pyramidal: d_l = r ** l, so densities fall geometrically with depth
    dens = [1 - s for s in layer_sparsities(SHAPES, 0.8, "pyramidal")]
    r = dens[0]
    assert dens == pytest.approx([r ** (i + 1) for i in range(len(SHAPES))], rel=1e-9)
    assert overall(SHAPES, [1 - x for x in dens]) == pytest.approx(1 - d, abs=1e-6)


def test_unknown_rule_and_bad_sparsity_are_refused():
    with pytest.raises(ValueError, match="known: uniform, er, erk, balanced, pyramidal"):
        layer_sparsities(SHAPES, 0.5, "random")
    with pytest.raises(ValueError, match="fraction pruned"):
        layer_sparsities(SHAPES, 1.0, "erk")


@pytest.mark.parametrize("ratios", RATIOS)
@pytest.mark.parametrize("arch", ["conv6", "resnet18"])
def test_random_masks_on_real_models_match_the_rule_per_layer_and_overall(ratios, arch):
    config = load_config(REPO / "configs" / "cifar10" / f"{arch}_randommask.yaml",
                         [f"model.ratios={ratios}", "model.random_sparsity=0.9", "model.width=0.25"])
    model = build_classifier(config, 10)
    layers = list(prunable_layers(model))
    assert all(isinstance(m, (MaskedLinear, MaskedConv2d)) for _, m in layers)
    expected = layer_sparsities([m.weight.shape for _, m in layers], 0.9, ratios)
    report = sparsity_report(model)
    for (name, layer), want in zip(layers, expected):
        n = layer.weight.numel()
        assert report["layers"][name] == pytest.approx(want, abs=0.5 / n + 1e-9)  # exact up to rounding
    assert report["overall"] == pytest.approx(0.9, abs=0.005)
    dense = build_classifier(load_config(REPO / "configs" / "cifar10" / f"{arch}_dense.yaml", ["model.width=0.25"]),
                             10)  # the same seed draws the same weights; the masked ones are scaled to the fan-in
    for (_, layer), (_, plain) in zip(layers, prunable_layers(dense)):
        assert torch.allclose(layer.weight, plain.weight / float(layer.fixed_mask.mean()) ** 0.5)
    again = build_classifier(config, 10)  # drawn from run.seed: the same masks
    assert all(torch.equal(a.fixed_mask, b.fixed_mask) for (_, a), (_, b) in zip(layers, prunable_layers(again)))


def test_weights_train_under_the_fixed_mask_and_the_mask_never_changes(tmp_path):
    config = load_config(REPO / "configs" / "cifar10" / "conv6_randommask.yaml",
                         ["model.width=0.125", "data.image_size=16", "model.ratios=balanced"])
    model = build_classifier(config, 4)
    before = snapshot(model)
    train_supervised(model, toy_data(), toy_data(32, 1), MEAN, STD, plan("randommask", epochs=1), tmp_path,
                     Monitor(tmp_path, quiet=True), torch.device("cpu"))
    after = snapshot(model)
    for key in before:
        if key.endswith("fixed_mask"):
            assert torch.equal(before[key], after[key])
        elif key.endswith("weight") and key.replace("weight", "fixed_mask") in before:
            assert not torch.equal(before[key], after[key])
    # pruned weights never reach the output: masked layers compute with weight * mask
    name, layer = next(iter(prunable_layers(model)))
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        ref = layer(x)
        layer.weight[layer.fixed_mask == 0] += 100.0
        assert torch.equal(layer(x), ref)


def test_edgepopup_inside_a_random_mask_only_keeps_weights_the_mask_allows(tmp_path):
    config = load_config(REPO / "configs" / "cifar10" / "conv6_randommask_edgepopup.yaml",
                         ["model.width=0.125", "data.image_size=16"])
    model = build_classifier(config, 4)
    learned = trainable(model, "randommask", "scores")
    assert learned and all(p.dim() > 1 for p in learned)
    train_supervised(model, toy_data(), toy_data(32, 1), MEAN, STD,
                     plan("randommask", epochs=1, randommask_learns="scores"), tmp_path,
                     Monitor(tmp_path, quiet=True), torch.device("cpu"))
    for _, layer in prunable_layers(model):
        assert isinstance(layer, SupermaskConv2d | torch.nn.Linear)
        if isinstance(layer, SupermaskConv2d):
            hard = layer.hard_mask()
            assert bool((hard <= layer.source).all())  # inside the random mask
            assert int(hard.sum()) == round(0.5 * int(layer.source.sum()))  # popup_sparsity of its survivors
    # the frozen weights are the seed's draw scaled to the random mask's fan-in, 1 / sqrt(1 - s_l)
    fresh = build_classifier(config, 4)
    plain = build_classifier(load_config(REPO / "configs" / "cifar10" / "conv6_edgepopup.yaml",
                                         ["model.width=0.125", "data.image_size=16"]), 4)
    for (_, a), (_, b) in zip(prunable_layers(fresh), prunable_layers(plain)):
        density = float(a.source.mean())
        assert torch.allclose(a.weight, b.weight / density ** 0.5, rtol=1e-5)
    assert sparsity_report(model)["overall"] == pytest.approx(1 - 0.2 * 0.5, abs=0.005)


def test_scale_fan_scales_weights_and_iterand_redraws_and_survives_a_ticket(tmp_path):
    """model.scale_fan (edge-popup's scaled init): weights and IteRand's re-draws times 1 / sqrt(1 - sparsity)."""
    opts = ["model.width=0.125", "model.sparsity=0.9"]
    cfg = REPO / "configs" / "cifar10" / "conv6_iterand.yaml"
    plain = build_classifier(load_config(cfg, opts), 10)
    config = load_config(cfg, [*opts, "model.scale_fan=true"])
    scaled = build_classifier(config, 10)
    pairs = [(a, b) for (_, a), (_, b) in zip(prunable_layers(plain), prunable_layers(scaled))
             if isinstance(a, SupermaskConv2d)]
    assert pairs
    for a, b in pairs:
        assert torch.allclose(b.weight, a.weight / math.sqrt(0.1), rtol=1e-6)
    # IteRand re-draws every pruned weight (rate 1) at the scaled std, not at the plain Kaiming std
    rerandomize(scaled, 1.0, torch.Generator().manual_seed(1))
    layer = pairs[-1][1]
    redrawn = layer.weight[layer.hard_mask() == 0]
    kaiming = math.sqrt(2.0 / (layer.weight[0].numel()))
    assert float(redrawn.std()) == pytest.approx(kaiming / math.sqrt(0.1), rel=0.05)
    export_ticket(scaled, config, tmp_path / "s.ticket", num_classes=10)
    assert same_outputs(scaled, load_ticket(tmp_path / "s.ticket"), torch.randn(2, 3, 32, 32)) == 0.0
    for method in ("dense", "slot", "randommask"):
        with pytest.raises(MetaticketError, match="model.scale_fan"):
            build_classifier(load_config(cfg, ["model.width=0.125", "model.scale_fan=true", f"train.method={method}",
                                               "train.rerand_every=0", "model.random_sparsity=0.5"]), 10)


def test_random_mask_ticket_round_trip(tmp_path):
    for extra in (["train.randommask_learns=weights"], ["train.randommask_learns=scores"]):
        config = load_config(REPO / "configs" / "cifar10" / "conv6_randommask_edgepopup.yaml",
                             ["model.width=0.125", *extra])
        model = build_classifier(config, 10)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.01 * torch.randn_like(p))
        export_ticket(model, config, tmp_path / "r.ticket", num_classes=10)
        assert same_outputs(model, load_ticket(tmp_path / "r.ticket"), torch.randn(2, 3, 32, 32)) == 0.0


@pytest.mark.parametrize("arch", ["conv6", "resnet18"])
def test_fine_tuning_starts_from_the_values_the_slot_run_chose(arch, tmp_path):
    """train.init_from: a dense model holding the greedy choice computes what the slot network computes."""
    slot_cfg = load_config(REPO / "configs" / "cifar10" / ("conv6_slot_k8_greedy.yaml" if arch == "conv6" else
                                                          "resnet18_slot_k8_greedy.yaml"), ["model.width=0.125"])
    slot_net = build_classifier(slot_cfg, 10)
    with torch.no_grad():
        for name, p in slot_net.named_parameters():
            if name.endswith("scores"):
                p.add_(torch.randn_like(p))  # another choice than the init's
        for name, b in slot_net.named_buffers():
            if name.endswith("running_var"):
                b.uniform_(0.5, 2.0)
    run_dir = tmp_path / "slot"
    (run_dir / "checkpoints").mkdir(parents=True)
    dump_config(slot_cfg, run_dir / "config.yaml")
    save_atomic({"model": slot_net.state_dict()}, run_dir / "checkpoints" / "last.pt")
    dense_yaml = REPO / "configs" / "cifar10" / f"{arch}_dense.yaml"
    config = load_config(dense_yaml, ["model.width=0.125", f"train.init_from={run_dir}"])
    model = from_slot_run(config, 10, run_dir)
    assert trainable(model, "dense") and not list(slot_layers(model))
    x = torch.randn(3, 3, 32, 32)
    assert torch.allclose(model.eval()(x), slot_net.eval()(x), atol=1e-5)
    fresh = build_classifier(config, 10).eval()
    assert not torch.allclose(fresh(x), slot_net(x), atol=1e-3)  # the test can fail: a fresh draw differs
    for extra, words in [(["model.width=0.25"], "same model"), (["train.method=edgepopup"], "train.method: dense")]:
        with pytest.raises(MetaticketError, match=words):
            from_slot_run(load_config(dense_yaml, ["model.width=0.125", *extra]), 10, run_dir)
    with pytest.raises(MetaticketError, match="not a run folder"):
        from_slot_run(config, 10, tmp_path / "nowhere")


def test_draw_mask_keeps_an_exact_count():
    m = draw_mask(torch.Size([7, 11]), 0.3, torch.Generator().manual_seed(0))
    assert int(m.sum()) == round(0.7 * 77)


def test_apply_random_masks_refuses_a_model_without_layers():
    with pytest.raises(ValueError, match="no conv or linear"):
        apply_random_masks(torch.nn.Sequential(torch.nn.ReLU()), 0.5, "erk")


def test_registry_models_all_accept_random_masks():
    for name in list_models():
        if name in ("resnet50", "wide_resnet50_2", "wrn28-10", "wrn28-5", "resnet34"):
            continue  # large; the same code path as resnet18
        kwargs = dict(num_classes=5, in_channels=3, layers=make_layers(supermask=False), width=0.25,
                      image_size=32)
        model = build_model(name, **kwargs)
        apply_random_masks(model, 0.8, "erk", torch.Generator().manual_seed(0))
        assert sparsity_report(model)["overall"] == pytest.approx(0.8, abs=0.005)


# ------------------------------------------------------------------------------------------ run.py + benchmark
def test_run_py_trains_slot_and_randommask_on_real_cifar10(tmp_path, data_root):
    small = ["--set", f"run.out_dir={tmp_path}", "--set", "train.max_iterations=2", "--set", "train.batch_size=32",
             "--set", "model.width=0.0625", "--set", "run.log_every=1", "--quiet"]
    r = run("train", str(REPO / "configs" / "cifar10" / "conv6_slot_k2_sampled.yaml"), *small, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert result["method"] == "slot" and result["iterations"] == 2 and result["params_total"] > 0
    r = run("export", str(tmp_path / "cifar10_conv6_slot_k2_sampled"), "-o", str(tmp_path / "slot.ticket"),
            cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    exported = json.loads(r.stdout.strip().splitlines()[-1])
    assert exported["identical_outputs"] and exported["slot_bits"] == result["params_total"]  # K=2: 1 bit each
    r = run("train", str(REPO / "configs" / "cifar10" / "conv6_randommask.yaml"), *small[:-1],  # not --quiet
            "--set", "model.ratios=pyramidal", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert result["method"] == "randommask" and result["sparsity"] == pytest.approx(0.8, abs=0.005)
    run_dir = tmp_path / "cifar10_conv6_randommask"
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    logged = [row for row in rows if row["split"] == "randommask"]
    assert logged and logged[0]["sparsity"] == pytest.approx(0.8, abs=0.005)
    per_layer = {k: v for k, v in logged[0].items() if k.startswith("sparsity/")}
    assert len(per_layer) == 9  # one per Conv6 layer
    # the same per-layer sparsities are printed at the start and reach TensorBoard
    printed = next(line for line in r.stderr.splitlines() if line.startswith("random mask (pyramidal"))
    for key, value in per_layer.items():
        assert f"{key.split('/', 1)[1]} {value:.3f}" in printed, (key, printed)
    tb = events(run_dir)
    for key, value in per_layer.items():
        assert tb.Scalars(f"randommask/{key}")[0].value == pytest.approx(value, abs=1e-6)
    # fine-tuning the slot run's chosen values as ordinary weights; a randommask run is no start for it
    r = run("train", str(REPO / "configs" / "cifar10" / "conv6_dense.yaml"), *small,
            "--set", f"train.init_from={tmp_path / 'cifar10_conv6_slot_k2_sampled'}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1])["method"] == "dense"
    r = run("train", str(REPO / "configs" / "cifar10" / "conv6_dense.yaml"), *small,
            "--set", f"train.init_from={tmp_path / 'cifar10_conv6_randommask'}", "--set", "run.name=ft", cwd=tmp_path)
    assert r.returncode == 2 and "slot run" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "ft").exists()  # nothing written
    r = run("train", str(REPO / "configs" / "cifar10" / "conv6_randommask.yaml"), "--set", "model.ratios=random",
            cwd=tmp_path)
    assert r.returncode == 2 and "balanced" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_approximation_benchmark_smoke(tmp_path):
    bench("approximation.py", "--widths", "8", "16", "--resamples", "1", "2", "--seeds", "2", "--steps", "20",
          "--results", str(tmp_path), "--name", "smoke", cwd=tmp_path)
    out = json.loads((tmp_path / "smoke.json").read_text())
    assert [(r["width"], r["resamples"]) for r in out["rows"]] == [(8, 1), (8, 2), (16, 1), (16, 2)]
    assert all(r["relative_rmse"] > 0 and len(r["per_seed"]) == 2 for r in out["rows"])
    assert (tmp_path / "smoke.png").is_file()


def test_iterand_switch_is_refused_where_there_is_nothing_to_redraw():
    from metaticket.runs.commands import sparsity_key
    from metaticket.runs.factory import build_learner

    cfg = REPO / "configs" / "cifar10" / "conv6_edgepopup.yaml"
    for method in ("dense", "slot", "randommask"):
        with pytest.raises(MetaticketError, match=f"train.rerand_every = 5 turns IteRand on.*train.method {method} "
                                                  f"has none"):
            build_classifier(load_config(cfg, ["model.width=0.125", f"train.method={method}",
                                               "train.rerand_every=5", "model.random_sparsity=0.5"]), 10)
    inside = load_config(REPO / "configs" / "cifar10" / "conv6_randommask_edgepopup.yaml",
                         ["model.width=0.125", "train.rerand_every=5"])
    assert method_of(inside.train).supermask
    assert method_label(inside.train.method, inside.train.rerand_every) == "randommask+iterand"
    for sets, label in ((["train.rerand_every=5"], "iterand"), ([], "edgepopup")):
        train = load_config(cfg, sets).train
        assert method_label(train.method, train.rerand_every) == label
    assert method_label("metaticket", 1000) == "metaticket+iterand"
    quick = REPO / "configs" / "omniglot" / "quickstart.yaml"
    with pytest.raises(MetaticketError, match="meta.rerand_every = 5 turns IteRand on.*meta.method maml has none"):
        build_learner(load_config(quick, ["meta.method=maml", "meta.rerand_every=5"]))
    # which key --sparsities sets: the top-k fraction, the random mask's, or none (threshold rule, dense)
    assert sparsity_key(load_config(cfg)) == "model.sparsity"
    assert sparsity_key(inside) == "model.random_sparsity"
    assert sparsity_key(load_config(quick)) is None
    assert sparsity_key(load_config(quick, ["model.mask=topk"])) == "model.sparsity"


def test_sweep_sets_the_key_that_prunes_and_labels_iterand(tmp_path, data_root):
    small = ["--set", f"run.out_dir={tmp_path}", "--set", "train.max_iterations=1", "--set", "train.batch_size=32",
             "--set", "model.width=0.0625", "--set", "train.eval_batch=2000", "--quiet"]
    r = run("sweep", str(REPO / "configs" / "cifar10" / "conv6_randommask.yaml"), *small, "--sparsities", "0.5",
            "0.95", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    groups = json.loads(r.stdout.strip().splitlines()[-1])["groups"]
    assert [g["target_sparsity"] for g in groups] == [0.5, 0.95]  # model.random_sparsity, measured below
    assert [g["sparsity"] for g in groups] == [pytest.approx(0.5, abs=0.01), pytest.approx(0.95, abs=0.01)]
    r = run("sweep", str(REPO / "configs" / "cifar10" / "conv6_{method}.yaml"), *small, "--methods", "edgepopup",
            "iterand", "--set", "train.rerand_unit=epochs", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert [g["method"] for g in json.loads(r.stdout.strip().splitlines()[-1])["groups"]] == ["edgepopup", "iterand"]
    quick = REPO / "configs" / "omniglot" / "quickstart.yaml"
    r = run("sweep", str(quick), "--set", f"run.out_dir={tmp_path}", "--sparsities", "0.5", cwd=tmp_path)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "--sparsities changes nothing" in r.stderr and "model.random_sparsity" in r.stderr
