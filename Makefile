PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/onnx-net2net inspect models/torch_cnn_bn.onnx
	$(BIN)/onnx-net2net widen models/torch_cnn_bn.onnx -o build/cnn_wide.onnx conv2=x2 fc1=x1.5 --force --dim batch=4
	$(BIN)/onnx-net2net deepen build/cnn_wide.onnx -o build/cnn_grown.onnx conv2 fc1 --force --dim batch=4
	$(BIN)/onnx-net2net verify models/torch_cnn_bn.onnx build/cnn_grown.onnx --dim batch=4

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python tools/bench_widen.py
	$(BIN)/python tools/bench_apply.py

clean:
	rm -rf $(VENV) build
