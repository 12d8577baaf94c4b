"""Regenerate the small ONNX models under models/ that come from exporters other than PyTorch's.

Run from the repository root with an interpreter that has the exporters (a venv outside the repo):

    python3 -m venv /work/otherenv
    /work/otherenv/bin/pip install scikit-learn skl2onnx onnx onnxruntime numpy    # sklearn
    /work/otherenv/bin/pip install tensorflow-cpu tf2onnx                            # keras
    /work/otherenv/bin/python tools/export_other_models.py sklearn keras

    python3 -m venv /work/jaxenv          # separate: jax2onnx pulls flax, orbax, tensorstore...
    /work/jaxenv/bin/pip install jax2onnx                                            # jax
    /work/jaxenv/bin/python tools/export_other_models.py jax

With no group named, every group runs (each needs its packages). Written with scikit-learn
1.9.1 + skl2onnx 1.20.0; tensorflow-cpu 2.21.0 (Keras 3.15.1) + tf2onnx 1.17.0; jax 0.10.2 +
flax 0.12.8 + jax2onnx 0.17.1; onnx 1.23.2, onnxruntime 1.32.0. These packages (tensorflow
~1.3 GB installed, jax's venv ~1.1 GB) are only needed to regenerate the files; the test suite
uses the committed .onnx files and imports none of them.

Files written (each well under 200 KB, opset 17, dynamic batch axis):

* models/sklearn_mlp_classifier.onnx: MLPClassifier(hidden_layer_sizes=(16, 12), relu) trained
  on make_classification (300 samples, 10 features, 3 classes); skl2onnx with zipmap=False, so
  the outputs are `label` (int64 [N]) and `probabilities` (float [N, 3]).
* models/sklearn_mlp_regressor.onnx: MLPRegressor(hidden_layer_sizes=(16,), tanh) trained on
  make_regression (300 samples, 8 features); output `variable` (float [N, 1]).
* models/keras_cnn.onnx: Keras Conv2D(8, 3, same, relu) -> BatchNormalization -> MaxPool2D ->
  Conv2D(16, 3, relu) -> Flatten -> Dense(16, relu) -> Dense(4) on NHWC input x [N, 8, 8, 3],
  output y [N, 4]. Untrained (seeded init); biases and the BatchNorm's statistics and affine
  parameters are set to random non-trivial values (tf2onnx drops all-zero biases).
* models/keras_mlp.onnx: Keras Dense(16, relu) -> Dense(3) on x [N, 10], seeded, random biases.
* models/jax_cnn.onnx, models/jax_mlp.onnx: the same two networks written with flax.nnx
  (Conv, BatchNorm with use_running_average=True, max_pool, Linear), seeded, with random
  biases and BatchNorm parameters, exported by jax2onnx; batch dim named "batch".

The exporters' output is saved as is. What it looks like:

* skl2onnx: Cast -> (MatMul, Add [1, n] intercepts, Relu/Tanh)... ; the classifier ends in
  Softmax -> Identity -> `probabilities` plus ArgMax -> ArrayFeatureExtractor (ai.onnx.ml) ->
  Reshape -> Cast -> `label`; the regressor ends in Reshape. The batch dim has no name.
* tf2onnx: Dense is MatMul + Add; Conv2D is Conv (bias fused) between Transposes to and from
  NCHW; Keras 3's BatchNormalization is not a fused TF op, so it comes out as Mul + Add with
  [1, C, 1, 1] constants, not a BatchNormalization node; Flatten is a Reshape whose shape is
  computed at run time (Shape -> Gather -> Cast -> Slice -> Concat -> Cast). Batch dims are
  named unk__N. tf2onnx's generated names (Transpose__34, const_fold_opt__43, ...) vary from
  run to run (its optimizer iterates over sets of nodes); the graph itself does not.
* jax2onnx: Linear is Gemm (with bias); Conv is Conv (bias fused, auto_pad SAME_UPPER/none)
  between Transposes; BatchNorm is a real BatchNormalization node; the second Conv's ReLU
  comes after its Transpose back to NHWC; reshape is Shape -> Gather -> Squeeze -> Unsqueeze
  -> Concat -> Reshape. The output is byte-for-byte reproducible.

Each model is checked against its source framework's prediction and the max abs diff printed.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
OUT_DIR = ROOT / "models"
OPSET = 17
MAX_BYTES = 200_000


def _ort_run(path: Path, x: np.ndarray) -> list[np.ndarray]:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})


def _report(path: Path, diffs: dict[str, float]) -> None:
    size = path.stat().st_size
    text = ", ".join(f"{k} {v:.3g}" for k, v in diffs.items())
    print(f"wrote {path.relative_to(ROOT)} ({size} bytes): {text}")
    if size > MAX_BYTES:
        raise RuntimeError(f"{path.name} is {size} bytes, over {MAX_BYTES}")


# ----------------------------------------------------------------------------- scikit-learn


def export_sklearn() -> None:
    import warnings

    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.datasets import make_classification, make_regression
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier, MLPRegressor

    X, y = make_classification(n_samples=300, n_features=10, n_informative=6, n_redundant=2,
                               n_classes=3, random_state=0)
    X = X.astype(np.float32)
    clf = MLPClassifier(hidden_layer_sizes=(16, 12), activation="relu", max_iter=300,
                        random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(X, y)
    onx = to_onnx(clf, initial_types=[("X", FloatTensorType([None, X.shape[1]]))],
                  target_opset=OPSET, options={id(clf): {"zipmap": False}})
    path = OUT_DIR / "sklearn_mlp_classifier.onnx"
    path.write_bytes(onx.SerializeToString())
    label, proba = _ort_run(path, X)
    _report(path, {"probabilities max|diff|": float(np.abs(proba - clf.predict_proba(X)).max()),
                   "label mismatches": float((label != clf.predict(X)).sum())})

    X, y = make_regression(n_samples=300, n_features=8, n_informative=6, noise=0.1,
                           random_state=0)
    X = X.astype(np.float32)
    y = (y / y.std()).astype(np.float32)
    reg = MLPRegressor(hidden_layer_sizes=(16,), activation="tanh", max_iter=300, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        reg.fit(X, y)
    onx = to_onnx(reg, initial_types=[("X", FloatTensorType([None, X.shape[1]]))],
                  target_opset=OPSET)
    path = OUT_DIR / "sklearn_mlp_regressor.onnx"
    path.write_bytes(onx.SerializeToString())
    (pred,) = _ort_run(path, X)
    _report(path, {"variable max|diff|": float(np.abs(pred.reshape(-1) - reg.predict(X)).max())})


# ----------------------------------------------------------------------------- keras


def _randomize_biases(model, rng) -> None:
    """Keras initializes biases to zero and tf2onnx then drops them: give them values."""
    for layer in model.layers:
        bias = getattr(layer, "bias", None)
        if bias is not None:
            bias.assign((rng.standard_normal(bias.shape[0]) * 0.1).astype(np.float32))


def _keras_cnn():
    import keras
    from keras import layers

    model = keras.Sequential([
        keras.Input((8, 8, 3)),
        layers.Conv2D(8, 3, padding="same", activation="relu"),
        layers.BatchNormalization(),
        layers.MaxPool2D(),
        layers.Conv2D(16, 3, activation="relu"),
        layers.Flatten(),
        layers.Dense(16, activation="relu"),
        layers.Dense(4),
    ])
    rng = np.random.default_rng(0)
    _randomize_biases(model, rng)
    for layer in model.layers:
        if isinstance(layer, layers.BatchNormalization):
            n = layer.gamma.shape[0]
            layer.gamma.assign(rng.uniform(0.5, 1.5, n).astype(np.float32))
            layer.beta.assign((rng.standard_normal(n) * 0.1).astype(np.float32))
            layer.moving_mean.assign((rng.standard_normal(n) * 0.1).astype(np.float32))
            layer.moving_variance.assign(rng.uniform(0.5, 1.5, n).astype(np.float32))
    return model, (8, 8, 3)


def _keras_mlp():
    import keras
    from keras import layers

    model = keras.Sequential([
        keras.Input((10,)),
        layers.Dense(16, activation="relu"),
        layers.Dense(3),
    ])
    _randomize_biases(model, np.random.default_rng(0))
    return model, (10,)


def export_keras() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import tensorflow as tf
    import tf2onnx

    for name, build in (("keras_cnn", _keras_cnn), ("keras_mlp", _keras_mlp)):
        keras.utils.set_random_seed(0)
        model, shape = build()
        spec = (tf.TensorSpec((None, *shape), tf.float32, name="x"),)

        # tf2onnx 1.17's from_keras fails on Keras 3 models (KeyError 'keras_tensor_1'); an
        # inference-mode tf.function is what from_keras would trace anyway.
        @tf.function(input_signature=spec)
        def forward(x, model=model):
            return {"y": model(x, training=False)}

        path = OUT_DIR / f"{name}.onnx"
        tf2onnx.convert.from_function(forward, input_signature=spec, opset=OPSET,
                                      output_path=str(path))
        x = np.random.default_rng(1).standard_normal((4, *shape)).astype(np.float32)
        (got,) = _ort_run(path, x)
        want = model.predict(x, verbose=0)
        _report(path, {"y max|diff|": float(np.abs(got - want).max())})


# ----------------------------------------------------------------------------- jax / flax


def export_jax() -> None:
    import jax.numpy as jnp
    from flax import nnx
    from jax2onnx import to_onnx

    class MLP(nnx.Module):
        def __init__(self, rngs: nnx.Rngs) -> None:
            self.fc1 = nnx.Linear(10, 16, rngs=rngs)
            self.fc2 = nnx.Linear(16, 3, rngs=rngs)

        def __call__(self, x):
            return self.fc2(nnx.relu(self.fc1(x)))

    class CNN(nnx.Module):
        """NHWC [N, 8, 8, 3], the same layers as keras_cnn."""

        def __init__(self, rngs: nnx.Rngs) -> None:
            self.conv1 = nnx.Conv(3, 8, (3, 3), padding="SAME", rngs=rngs)
            self.bn1 = nnx.BatchNorm(8, use_running_average=True, rngs=rngs)
            self.conv2 = nnx.Conv(8, 16, (3, 3), padding="VALID", rngs=rngs)
            self.fc1 = nnx.Linear(2 * 2 * 16, 16, rngs=rngs)
            self.fc2 = nnx.Linear(16, 4, rngs=rngs)

        def __call__(self, x):
            x = self.bn1(nnx.relu(self.conv1(x)))
            # keywords: jax2onnx's max_pool patch takes window_shape only by keyword
            x = nnx.max_pool(x, window_shape=(2, 2), strides=(2, 2))
            x = nnx.relu(self.conv2(x))
            x = x.reshape(x.shape[0], -1)
            return self.fc2(nnx.relu(self.fc1(x)))

    for name, cls, shape in (("jax_cnn", CNN, (8, 8, 3)), ("jax_mlp", MLP, (10,))):
        model = cls(nnx.Rngs(0))
        rng = np.random.default_rng(0)
        # flax initializes biases to zero and BatchNorm to the identity: give them values
        def rand(var, values) -> None:
            var[...] = jnp.asarray(values, jnp.float32)

        for _, module in nnx.iter_modules(model):
            if isinstance(module, (nnx.Linear, nnx.Conv)) and module.bias is not None:
                n = module.bias.shape[0]
                rand(module.bias, rng.standard_normal(n) * 0.1)
            elif isinstance(module, nnx.BatchNorm):
                n = module.scale.shape[0]
                rand(module.scale, rng.uniform(0.5, 1.5, n))
                rand(module.bias, rng.standard_normal(n) * 0.1)
                rand(module.mean, rng.standard_normal(n) * 0.1)
                rand(module.var, rng.uniform(0.5, 1.5, n))
        path = OUT_DIR / f"{name}.onnx"
        onx = to_onnx(model, [("batch", *shape)], opset=OPSET, model_name=name,
                      input_names=["x"], output_names=["y"])
        path.write_bytes(onx.SerializeToString())
        x = np.random.default_rng(1).standard_normal((4, *shape)).astype(np.float32)
        (got,) = _ort_run(path, x)
        _report(path, {"y max|diff|": float(np.abs(got - np.asarray(model(x))).max())})


EXPORTERS = {"sklearn": export_sklearn, "keras": export_keras, "jax": export_jax}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("groups", nargs="*", metavar="GROUP",
                        help=f"exporters to run, of {', '.join(EXPORTERS)} (default: all)")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.groups) - set(EXPORTERS))
    if unknown:
        parser.error(f"unknown group(s) {', '.join(unknown)}; choose from {', '.join(EXPORTERS)}")
    OUT_DIR.mkdir(exist_ok=True)
    failures = []
    for group in args.groups or list(EXPORTERS):
        try:
            EXPORTERS[group]()
        except Exception:  # noqa: BLE001 - one exporter failing should not stop the rest
            traceback.print_exc()
            failures.append(group)
    if failures:
        print("FAILED: " + ", ".join(failures), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
