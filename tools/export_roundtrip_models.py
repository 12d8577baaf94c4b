"""Export one small PyTorch CNN (conv without bias + BatchNorm + ReLU, conv, linear) the four
ways users do, into models/roundtrip/, to test handing grown weights back by name:

- cnn_legacy_folded.onnx:    torch.onnx.export(dynamo=False) defaults: BatchNorm folded into the
                             conv, weights renamed onnx::Conv_N;
- cnn_legacy_preserve.onnx:  dynamo=False, training=TrainingMode.PRESERVE: names and BatchNorm kept;
- cnn_dynamo_fused.onnx:     dynamo=True defaults: BatchNorm fused into conv1.weight (same name!);
- cnn_dynamo_plain.onnx:     dynamo=True, optimize=False: names and BatchNorm kept.

Beside them, cnn_state_dict.json lists the module's state_dict keys and shapes. Needs torch:

    /work/venv-torch/bin/python tools/export_roundtrip_models.py
"""

from __future__ import annotations

import contextlib
import io
import json
import warnings
from pathlib import Path

import torch
import torch.nn as nn

OUT = Path(__file__).resolve().parent.parent / "models" / "roundtrip"


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 4 * 4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.conv2(x))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 4), 1))


def main() -> None:
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    model = SmallCNN()
    with torch.no_grad():  # trained-looking BatchNorm statistics, so folding changes values
        model.bn1.running_mean.normal_()
        model.bn1.running_var.uniform_(0.5, 2.0)
        model.bn1.weight.normal_()
        model.bn1.bias.normal_()
    model.eval()
    x = torch.randn(2, 3, 8, 8)
    OUT.mkdir(parents=True, exist_ok=True)
    ways = {"cnn_legacy_folded": {"dynamo": False},
            "cnn_legacy_preserve": {"dynamo": False, "training": torch.onnx.TrainingMode.PRESERVE},
            "cnn_dynamo_fused": {"dynamo": True, "external_data": False},
            "cnn_dynamo_plain": {"dynamo": True, "optimize": False, "external_data": False}}
    for name, options in ways.items():
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            torch.onnx.export(model, (x,), str(OUT / f"{name}.onnx"), input_names=["x"], **options)
    keys = {k: list(v.shape) for k, v in model.state_dict().items()}
    (OUT / "cnn_state_dict.json").write_text(json.dumps(keys, indent=1) + "\n")


if __name__ == "__main__":
    main()
