"""Starting a training from another model's weights: what is copied, what is refused, and the
sources it accepts (checkpoint, bare state_dict, model or fold folder, 'builtin')."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from autoliver.errors import UserError
from autoliver.training.networks import build_network
from autoliver.training.pretrained import load_pretrained, resolve_source
from inference_helpers import tiny_spec


def network(seed: int, **kw):
    torch.manual_seed(seed)
    return build_network(tiny_spec(**kw))


def test_a_network_of_the_same_plan_gets_every_weight(tmp_path):
    source = network(0)
    path = tmp_path / "model" / "fold_all" / "checkpoint_final.pt"
    path.parent.mkdir(parents=True)
    torch.save({"network": source.state_dict(), "epoch": 3}, path)
    target = network(1)
    transfer = load_pretrained(target, tmp_path / "model")  # a model folder: its fold_all
    assert transfer.source == path and transfer.skipped == () and transfer.shared_fraction == 1.0
    for name, value in target.state_dict().items():
        torch.testing.assert_close(value, source.state_dict()[name], rtol=0, atol=0, msg=name)


def test_other_labels_keep_fresh_output_layers_and_say_so(tmp_path):
    source = network(0, num_classes=3)
    path = tmp_path / "weights.pt"
    torch.save({f"module.{k}": v for k, v in source.state_dict().items()}, path)  # bare, from DDP
    target = network(1, num_classes=2)
    fresh = {k: v.clone() for k, v in target.state_dict().items()}
    transfer = load_pretrained(target, path)
    assert transfer.skipped and all("shape" in s for s in transfer.skipped)
    assert 0.5 <= transfer.shared_fraction < 1.0
    for name, value in target.state_dict().items():
        expected = fresh[name] if any(s.startswith(name + ":") for s in transfer.skipped) else source.state_dict()[name]
        torch.testing.assert_close(value, expected, rtol=0, atol=0, msg=name)
    assert "kept fresh" in transfer.describe()


def test_a_network_planned_differently_is_refused(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save(network(0).state_dict(), path)
    other = build_network(dataclasses.replace(tiny_spec(), features_per_stage=(8, 16)))
    with pytest.raises(UserError, match="match the source"):
        load_pretrained(other, path)


def test_sources_that_are_not_weights_are_clear_errors(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        resolve_source(tmp_path / "missing.pt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no checkpoint_final.pt"):
        resolve_source(tmp_path / "empty")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="weights-only"):
        load_pretrained(network(0), junk)
    with pytest.raises(UserError, match="ships no starter model"):
        resolve_source("builtin")
