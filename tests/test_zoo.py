"""Real architectures: onnx's model-zoo copies, given random weights.

Every widenable group is widened by x1.5 in one rewrite and verified; a seeded sample of
groups is also widened one at a time. Counts are pinned so coverage cannot silently drop.
Set N2N_ZOO_EVERY_GROUP=1 to widen every group on its own (slow: minutes).
"""

from __future__ import annotations

import os
import random

import pytest

import onnx_net2net as n2n
from onnx_net2net.verification import compare_outputs, make_inputs, run
from tools.zoo import ZOO, zoo_model

pytestmark = pytest.mark.zoo

# (groups found, widenable) per architecture.
EXPECTED = {
    "bvlc_alexnet": (8, 5), "densenet121": (121, 120), "inception_v1": (58, 55), "inception_v2": (70, 69),
    "resnet50": (38, 37), "shufflenet": (21, 20), "squeezenet": (26, 25), "vgg19": (19, 18), "zfnet512": (8, 5),
}
SAMPLE = 4
BIG = {"vgg19", "bvlc_alexnet", "zfnet512"}  # hundreds of MB of weights: widened together only


@pytest.fixture(scope="module", params=ZOO)
def zoo(request):
    model = zoo_model(request.param)
    feeds = make_inputs(model)
    yield request.param, model, feeds, run(model, feeds)


def _assert_same(model, wide, feeds, expected):
    checks = compare_outputs([o.name for o in model.graph.output], expected, run(wide, feeds))
    assert all(c.passed for c in checks), checks
    return checks


def test_zoo_groups(zoo):
    name, model, feeds, expected = zoo
    inspection = n2n.inspect(model)
    widenable = [g["id"] for g in inspection.groups if g["widenable"]]
    assert (len(inspection.groups), len(widenable)) == EXPECTED[name]
    for group in inspection.groups:
        assert group["widenable"] or group["reason"]
    if not widenable:
        return
    wide = n2n.widen(model, {g: "x1.5" for g in widenable}, verify=False)
    _assert_same(model, wide, feeds, expected)
    every = os.environ.get("N2N_ZOO_EVERY_GROUP") == "1"
    if name in BIG and not every:
        return
    chosen = widenable if every else random.Random(name).sample(widenable, min(SAMPLE, len(widenable)))
    for group in chosen:
        _assert_same(model, n2n.widen(model, {group: "x1.5"}, verify=False), feeds, expected)


# (deepen points, exact with an identity layer) per architecture.
DEEPEN = {
    "bvlc_alexnet": (8, 8), "densenet121": (121, 121), "inception_v1": (58, 58), "inception_v2": (70, 70),
    "resnet50": (54, 54), "shufflenet": (50, 50), "squeezenet": (26, 26), "vgg19": (19, 19), "zfnet512": (8, 8),
}


def test_zoo_deepen(zoo):
    """Every exact point deepens in one rewrite; every point deepens with --residual."""
    name, model, feeds, expected = zoo
    points = n2n.inspect(model).deepen
    exact = [p["target"] for p in points if p["exact"]]
    assert (len(points), len(exact)) == DEEPEN[name]
    deep = n2n.deepen_model(model, exact, verify=False)
    assert len(deep.inserted) == len(exact)
    checks = _assert_same(model, deep.model, feeds, expected)
    assert all(c.max_abs == 0.0 for c in checks)  # identity layers are exact to the bit in float32
    _assert_same(model, n2n.deepen(model, [p["target"] for p in points], residual=True, verify=False),
                 feeds, expected)
