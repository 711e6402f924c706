"""The compact ticket: seed + mask bits rebuild the same network; corruption and version drift are caught."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import QUICK, REPO, run, tiny, trained_metaticket

from metaticket.config import load_config
from metaticket.core.supermask import sparsity_report, supermask_layers
from metaticket.errors import MetaticketError
from metaticket.runs.factory import build_classifier, build_learner
from metaticket.runs.ticket import export_ticket, load_ticket, pack_bits, same_outputs, ticket_info, unpack_bits


@pytest.mark.parametrize("n", [1, 7, 8, 9, 1000, 4097])
def test_bit_packing_round_trip(n):
    bits = torch.rand(n, generator=torch.Generator().manual_seed(n)) < 0.3
    packed = pack_bits(bits)
    assert packed.dtype == torch.uint8 and packed.numel() == (n + 7) // 8
    assert torch.equal(unpack_bits(packed, n), bits)




def example(n: int = 32, channels: int = 1, size: int = 28) -> torch.Tensor:
    return torch.randn(n, channels, size, size, generator=torch.Generator().manual_seed(5))


def test_round_trip_gives_identical_outputs_including_resampled_weights(tmp_path):
    config, model = trained_metaticket()
    report = export_ticket(model, config, tmp_path / "m.ticket")
    assert report["resampled_weights"] > 0  # kept weights that IteRand re-drew are stored explicitly
    assert report["dense_tensors"] == 1  # head.bias; the random head and norms come from the seed
    loaded = load_ticket(tmp_path / "m.ticket")
    assert same_outputs(model, loaded, example()) == 0.0
    assert sparsity_report(loaded) == sparsity_report(model)
    for (name, a), (_, b) in zip(supermask_layers(model), supermask_layers(loaded)):
        kept = a.mask() != 0
        assert torch.equal(kept, b.mask() != 0), name
        assert torch.equal(a.weight[kept], b.weight[kept]), name


def test_fully_supermasked_network_is_about_32x_smaller(tmp_path):
    config = load_config(REPO / "configs" / "cifar10" / "conv6_edgepopup.yaml", ["model.width=0.5"])
    model = build_classifier(config, 10)  # every layer (head included) a top-k supermask, no affine norms
    with torch.no_grad():
        for _, layer in supermask_layers(model):
            layer.scores.normal_(generator=torch.Generator().manual_seed(2))
    report = export_ticket(model, config, tmp_path / "c.ticket", num_classes=10)
    assert report["dense_tensors"] == 0 and report["resampled_weights"] == 0
    assert 30 < report["ratio"] <= 32.5, report  # 1 bit instead of 32 per weight, plus a small header
    loaded = load_ticket(tmp_path / "c.ticket")
    assert same_outputs(model, loaded, example(8, 3, 32)) == 0.0


def test_dense_run_stores_its_learned_tensors(tmp_path):
    config = load_config(REPO / "configs" / "omniglot" / "mlp_5w1s_maml.yaml")
    model = build_learner(config).model
    with torch.no_grad():
        model.features[0].weight.mul_(1.5)
    report = export_ticket(model, config, tmp_path / "d.ticket")
    assert report["mask_bits"] == 0 and report["dense_tensors"] == 1
    assert same_outputs(model, load_ticket(tmp_path / "d.ticket"), example()) == 0.0


def _bits_offset(data: bytes, packed: torch.Tensor) -> int:
    needle = bytes(packed[:64].tolist())
    at = data.find(needle)
    assert at >= 0 and data.find(needle, at + 1) < 0
    return at


def test_a_flipped_bit_in_the_file_fails_the_checksum(tmp_path):
    config, model = trained_metaticket()
    path = tmp_path / "m.ticket"
    export_ticket(model, config, path)
    payload = torch.load(path, weights_only=True)
    data = bytearray(path.read_bytes())
    data[_bits_offset(bytes(data), payload["mask_bits"]) + 40] ^= 0x10  # one mask bit of the first layer
    path.write_bytes(bytes(data))
    with pytest.raises(MetaticketError, match="fails its checksum"):
        load_ticket(path)


def test_regenerated_weights_that_differ_are_reported_as_version_or_corruption(tmp_path):
    config, model = trained_metaticket()
    path = tmp_path / "m.ticket"
    export_ticket(model, config, path)
    payload = torch.load(path, weights_only=True)
    payload["init_sha256"] = "0" * 64  # what another torch's generator would give
    torch.save(payload, path)
    with pytest.raises(MetaticketError, match="regenerated from its seed differ.*torch"):
        load_ticket(path)


def test_not_a_ticket_and_missing_ticket(tmp_path):
    torch.save({"step": 3}, tmp_path / "x.pt")
    with pytest.raises(MetaticketError, match="is not a metaticket ticket"):
        load_ticket(tmp_path / "x.pt")
    with pytest.raises(MetaticketError, match="does not exist; write one with"):
        load_ticket(tmp_path / "none.ticket")


def test_model_that_does_not_match_its_config_is_refused(tmp_path):
    config, model = trained_metaticket()
    other = load_config(REPO / "configs" / "omniglot" / "mlp-w2_5w1s_metaticket.yaml")
    with pytest.raises(MetaticketError, match="does not match the network its config \\(or build\\) builds"):
        export_ticket(model, other, tmp_path / "m.ticket")


def test_cli_export_of_a_meta_run(tmp_path, data_root):
    r = run("meta-train", str(QUICK), *tiny(tmp_path), "--set", "meta.rerand_every=1", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "t.ticket"
    e = run("export", str(tmp_path / "t"), "-o", str(out), cwd=tmp_path)
    assert e.returncode == 0, e.stderr
    report = json.loads(e.stdout.strip().splitlines()[-1])
    assert report["identical_outputs"] is True and report["max_abs_output_diff"] == 0.0
    assert report["checkpoint"] == "best" and report["ratio"] > 20
    info = ticket_info(out)
    assert info["config"]["meta"]["method"] == "metaticket" and info["checkpoint"] == "best"
    bad = run("export", str(tmp_path / "nothing"), cwd=tmp_path)
    assert bad.returncode == 2 and "not a run folder" in bad.stderr and "Traceback" not in bad.stderr
