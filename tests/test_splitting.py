"""Symmetry-breaking splits: replicas share their unit's outgoing weights unequally but exactly.

Every mode must keep the function (verified in onnxruntime), give replicas different outgoing
weights (except 'equal'), and be reproducible from what the result reports: the mapping and,
for per-unit modes, the shares."""

from __future__ import annotations

import numpy as np
import pytest

import onnx_net2net as n2n
from helpers import build, initializer, widen_checked

HEAD = '<ir_version: 8, opset_import: ["" : 17]>'

MLP = HEAD + """
g (float[2, 4] x) => (float[2, 3] y) {
    h = MatMul(x, W1)
    r = Relu(h)
    y = MatMul(r, W2)
}"""

# Conv -> Flatten -> Gemm: each channel is a block of H*W features in the Gemm's input.
BLOCKED = HEAD + """
g (float[1, 2, 3, 3] x) => (float[1, 4] y) {
    c = Conv<pads=[1, 1, 1, 1]>(x, Wc, Bc)
    r = Relu(c)
    f = Flatten(r)
    y = Gemm<transB=1>(f, Wf)
}"""

# Channels-last flatten (Keras, JAX): every position repeats all channels.
TILED = HEAD + """
g (float[1, 2, 3, 3] x) => (float[1, 4] y) {
    c = Conv<pads=[1, 1, 1, 1]>(x, Wc, Bc)
    r = Relu(c)
    t = Transpose<perm=[0, 2, 3, 1]>(r)
    f = Flatten(t)
    y = Gemm<transB=1>(f, Wf)
}"""

GROUPED = HEAD + """
g (float[1, 2, 5, 5] x) => (float[1, 4, 5, 5] y) {
    c = Conv<pads=[1, 1, 1, 1]>(x, Wc)
    r = Relu(c)
    y = Conv<group=2, pads=[1, 1, 1, 1]>(r, Wg)
}"""

MODELS = {
    "mlp": (MLP, {"W1": (4, 5), "W2": (5, 3)}, "W1", "W2", 0, 1),
    "blocked": (BLOCKED, {"Wc": (4, 2, 3, 3), "Bc": (4,), "Wf": (4, 36)}, "Wc", "Wf", 1, 9),
    "tiled": (TILED, {"Wc": (4, 2, 3, 3), "Bc": (4,), "Wf": (4, 36)}, "Wc", "Wf", 1, 9),
    "grouped": (GROUPED, {"Wc": (4, 2, 3, 3), "Wg": (4, 2, 3, 3)}, "Wc", "Wg", 1, 1),
}


def _model(name: str):
    text, weights, producer, consumer, axis, block = MODELS[name]
    return build(text, weights), producer, consumer, axis, block


def _unit_columns(weight: np.ndarray, axis: int, name: str, units: int) -> np.ndarray:
    """The consumer's weights as (unit, everything else): one row per unit."""
    moved = np.moveaxis(weight, axis, 0)
    if name == "tiled":   # along the axis: position-major, channel-minor
        moved = moved.reshape(-1, units, *moved.shape[1:]).swapaxes(0, 1)
    else:
        moved = moved.reshape(units, -1, *moved.shape[1:])
    return moved.reshape(units, -1)


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("split", ["equal", "random", "antithetic", "random-unit", "random-entry", "fresh"])
def test_every_split_keeps_the_function(name, split):
    model, producer, consumer, axis, _ = _model(name)
    result = n2n.widen_model(model, {producer: 8}, split=split, seed=1)
    assert result.exact and result.report.passed
    widen_checked(model, {producer: 8}, split=split, seed=1)  # also a valid model, at the usual tolerance


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("split", ["random", "antithetic", "random-unit", "random-entry", "fresh"])
def test_replicas_get_different_outgoing_weights_that_sum_to_the_original(name, split):
    model, producer, consumer, axis, block = _model(name)
    result = n2n.widen_model(model, {producer: 8}, split=split, seed=1)
    (group,) = result.widened
    source, old_units, new_units = np.asarray(group["mapping"]), group["old"], group["new"]
    if name == "grouped":   # inside each of the 2 conv groups, over the group's local inputs
        before, after = initializer(model, consumer), initializer(result.model, consumer)
        rows, per_old, per_new = before.shape[0] // 2, old_units // 2, new_units // 2
        for part in range(2):
            for unit in range(per_old):
                local = [j for j in range(per_new) if source[part * per_new + j] == part * per_old + unit]
                shares = after[part * rows:(part + 1) * rows][:, local]
                np.testing.assert_allclose(shares.sum(axis=1), before[part * rows:(part + 1) * rows, unit],
                                           rtol=1e-5, atol=1e-6)
                if len(local) > 1:
                    assert not np.allclose(shares[:, 0], shares[:, 1])
        return
    old = _unit_columns(initializer(model, consumer), axis, name, old_units)
    new = _unit_columns(initializer(result.model, consumer), axis, name, new_units)
    for unit in range(old_units):
        replicas = np.flatnonzero(source == unit)
        np.testing.assert_allclose(new[replicas].sum(axis=0), old[unit], rtol=1e-5, atol=1e-6)
        if len(replicas) > 1:
            assert not np.allclose(new[replicas[0]], new[replicas[1]])


@pytest.mark.parametrize("name", ["mlp", "blocked", "tiled"])
@pytest.mark.parametrize("split", ["equal", "random-unit"])
def test_report_reproduces_the_written_weights(name, split):
    """Per-unit splits: original + mapping + shares rebuild every widened weight exactly."""
    model, producer, consumer, axis, block = _model(name)
    result = n2n.widen_model(model, {producer: 8}, split=split, seed=2)
    (group,) = result.widened
    source, shares = np.asarray(group["mapping"]), np.asarray(group["split"]["shares"])
    counts, old_units = np.asarray(group["replicas"]), group["old"]
    assert group["new"] == 8 and counts.sum() == 8 and len(counts) == old_units
    assert np.array_equal(np.bincount(source, minlength=old_units), counts)
    np.testing.assert_allclose(np.bincount(source, weights=shares), np.ones(old_units))
    incoming = initializer(model, producer)
    out_axis = 1 if name == "mlp" else 0
    np.testing.assert_array_equal(initializer(result.model, producer), np.take(incoming, source, axis=out_axis))
    old = _unit_columns(initializer(model, consumer), axis, name, old_units).astype(np.float64)
    rebuilt = (old[source] * shares[:, None]).astype(np.float32)
    new = _unit_columns(initializer(result.model, consumer), axis, name, 8)
    np.testing.assert_allclose(new, rebuilt, rtol=1e-6, atol=1e-7)


def test_equal_split_divides_like_the_paper_and_mapping_is_unchanged_by_the_split():
    model, producer, consumer, _, _ = _model("mlp")
    equal = n2n.widen_model(model, {producer: 8}, split="equal", seed=3)
    anti = n2n.widen_model(model, {producer: 8}, split="antithetic", seed=3)
    assert equal.widened[0]["mapping"] == anti.widened[0]["mapping"]   # the split has its own RNG stream
    source, counts = np.asarray(equal.widened[0]["mapping"]), np.asarray(equal.widened[0]["replicas"])
    w2 = initializer(model, consumer)
    np.testing.assert_array_equal(initializer(equal.model, consumer),
                                  (w2[source].astype(np.float64) / counts[source][:, None]).astype(np.float32))
    again = n2n.widen_model(model, {producer: 8}, split="antithetic", seed=3)
    np.testing.assert_array_equal(initializer(anti.model, consumer), initializer(again.model, consumer))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_fresh_copies_feed_nothing_so_their_noise_is_exact(name):
    """'fresh': originals keep their outgoing weights, copies get zeros and noisy incoming
    weights; the model is exact (bit for bit), even with --noise on top."""
    model, producer, consumer, axis, _ = _model(name)
    result = n2n.widen_model(model, {producer: 8}, split="fresh", noise=0.5, seed=5)
    assert result.exact and result.report.passed
    assert max(c.max_abs for c in result.report.outputs) == 0.0
    (group,) = result.widened
    source, old_units = np.asarray(group["mapping"]), group["old"]
    copies = [j for j in range(8) if j not in np.unique(source, return_index=True)[1]]
    assert group["split"]["shares"] == [0.0 if j in copies else 1.0 for j in range(8)]
    out_axis = 1 if name == "mlp" else 0
    incoming_old, incoming = initializer(model, producer), initializer(result.model, producer)
    for j in copies:
        assert not np.allclose(np.take(incoming, j, axis=out_axis), np.take(incoming_old, source[j], axis=out_axis))
    if name != "grouped":
        new = _unit_columns(initializer(result.model, consumer), axis, name, 8)
        old = _unit_columns(initializer(model, consumer), axis, name, old_units)
        assert not new[copies].any()
        np.testing.assert_array_equal(new[[j for j in range(8) if j not in copies]], old[np.arange(old_units)])


def test_antithetic_scale_sets_the_spread():
    model, producer, consumer, _, _ = _model("mlp")
    spreads = []
    for scale in (0.1, 1.0):
        result = n2n.widen_model(model, {producer: 12}, split="antithetic", split_scale=scale, seed=0)
        source, counts = np.asarray(result.widened[0]["mapping"]), np.asarray(result.widened[0]["replicas"])
        base = initializer(model, consumer)[source] / counts[source][:, None]
        spreads.append(np.std(initializer(result.model, consumer) - base))
        assert result.widened[0]["split"]["scale"] == scale
    assert 5 < spreads[1] / spreads[0] < 20


def test_unknown_split_is_refused():
    model, producer, _, _, _ = _model("mlp")
    with pytest.raises(n2n.Net2NetError, match="unknown split 'halves'"):
        n2n.widen_model(model, {producer: 8}, split="halves")
    with pytest.raises(n2n.Net2NetError, match="non-negative"):
        n2n.widen_model(model, {producer: 8}, split="antithetic", split_scale=-1.0)
