# xaiclip: set-up, demo, tests, lint, benchmarks. `make demo` and `make test` each install from scratch if needed.
VENV ?= .venv
PY := $(VENV)/bin/python
XAICLIP := $(VENV)/bin/xaiclip
export HF_HUB_OFFLINE ?= 1
export MPLBACKEND ?= Agg
DEMO_OUT ?= demo_out
TOY_TEXTS := $(foreach c,lymphocyte neutrophil eosinophil basophil monocyte,--text "a microscopic image of a $(c) cell")

.PHONY: install demo test lint bench clean report-screenshot

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# Pinned pair: timm needs torchvision, and a mismatched pair fails at import.
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[dev]'
	# medmnist declares torch/torchvision and would swap the pinned build: metadata only, no deps.
	$(PY) -m pip install -q --no-deps medmnist==3.0.2
	touch $@

# The main job on the embedded default (shipped toy model + toy cells): every command that exists, printed.
demo: install
	rm -rf $(DEMO_OUT) && mkdir -p $(DEMO_OUT)
	$(XAICLIP) --version
	$(XAICLIP) --help
	@echo "== store: encode the toy-cells prompts and all 1500 toy cells with the shipped toy-vit (CLS + patch tokens)"
	$(XAICLIP) store text --h5 $(DEMO_OUT)/toycells.h5 --prompts toycells
	$(XAICLIP) store image --h5 $(DEMO_OUT)/toycells.h5 --dataset toycells
	@echo "== db: read the library back"
	$(XAICLIP) db summarize --h5 $(DEMO_OUT)/toycells.h5
	$(XAICLIP) db tree --h5 $(DEMO_OUT)/toycells.h5
	$(XAICLIP) db verify --h5 $(DEMO_OUT)/toycells.h5 --require-complete
	$(XAICLIP) db sample 0 --h5 $(DEMO_OUT)/toycells.h5
	$(XAICLIP) db batch --h5 $(DEMO_OUT)/toycells.h5 --split test --idx 0:5 --feature label
	$(XAICLIP) db templates --h5 $(DEMO_OUT)/toycells.h5
	$(XAICLIP) db fetch --h5 $(DEMO_OUT)/toycells.h5 --template label_prompts_t01 --out $(DEMO_OUT)/label_prompts_t01.npy
	cp $(DEMO_OUT)/toycells.h5 $(DEMO_OUT)/cleared.h5
	$(XAICLIP) db clear --h5 $(DEMO_OUT)/cleared.h5 --yes
	@echo "== cam: heatmaps of image-text alignment on toy cells (toy-cnn and toy-vit)"
	$(XAICLIP) cam methods
	$(XAICLIP) cam layers --model toy-cnn --dataset toycells
	$(XAICLIP) cam run --model toy-cnn --dataset toycells --limit 8 --method gradcam --score dot --output-dir $(DEMO_OUT)/cam_gradcam $(TOY_TEXTS)
	$(XAICLIP) cam run --model toy-cnn --dataset toycells --limit 8 --method layercam --score dot --output-dir $(DEMO_OUT)/cam_layercam $(TOY_TEXTS)
	$(XAICLIP) cam run --model toy-vit --dataset toycells --limit 4 --method legrad --output-dir $(DEMO_OUT)/cam_legrad $(TOY_TEXTS)
	@echo "== attrib: submodular region attribution (exact greedy and the lazy fast mode) on 4 toy cells"
	$(XAICLIP) attrib run --model toy-vit --dataset toycells --limit 4 --search exact --output-dir $(DEMO_OUT)/attrib_exact
	$(XAICLIP) attrib run --model toy-vit --dataset toycells --limit 4 --search lazy --output-dir $(DEMO_OUT)/attrib_lazy
	$(XAICLIP) attrib merge $(DEMO_OUT)/attrib_exact
	$(XAICLIP) attrib merge $(DEMO_OUT)/attrib_lazy
	$(XAICLIP) attrib show $(DEMO_OUT)/attrib_exact --out $(DEMO_OUT)/attrib_exact/show
	$(XAICLIP) attrib baseline --method gradient --model toy-vit --dataset toycells --limit 4 --output-dir $(DEMO_OUT)/baseline
	@echo "== eval: every metric on those outputs"
	$(XAICLIP) eval smdl --results $(DEMO_OUT)/attrib_exact --output-dir $(DEMO_OUT)/eval_smdl_exact
	$(XAICLIP) eval smdl --results $(DEMO_OUT)/attrib_lazy --output-dir $(DEMO_OUT)/eval_smdl_lazy
	$(XAICLIP) eval faithfulness --model toy-cnn --maps $(DEMO_OUT)/cam_gradcam --output-dir $(DEMO_OUT)/eval_faith_gradcam
	$(XAICLIP) eval faithfulness --model toy-cnn --maps $(DEMO_OUT)/cam_layercam --output-dir $(DEMO_OUT)/eval_faith_layercam
	$(XAICLIP) eval compare --results $(DEMO_OUT)/eval_faith_gradcam --results $(DEMO_OUT)/eval_faith_layercam --output-dir $(DEMO_OUT)/eval_compare
	$(XAICLIP) eval mufidelity --model toy-cnn --maps $(DEMO_OUT)/cam_gradcam --output-dir $(DEMO_OUT)/eval_mufidelity
	$(XAICLIP) eval drop --model toy-cnn --maps $(DEMO_OUT)/cam_gradcam --output-dir $(DEMO_OUT)/eval_drop
	$(XAICLIP) eval localization --maps $(DEMO_OUT)/cam_gradcam --dataset toycells --output-dir $(DEMO_OUT)/eval_loc_gradcam
	$(XAICLIP) eval localization --maps $(DEMO_OUT)/cam_layercam --dataset toycells --output-dir $(DEMO_OUT)/eval_loc_layercam
	$(XAICLIP) eval sanity --model toy-vit --dataset toycells --limit 4 --method layercam --output-dir $(DEMO_OUT)/eval_sanity
	$(XAICLIP) eval zeroshot --h5 $(DEMO_OUT)/toycells.h5 --output-dir $(DEMO_OUT)/eval_zeroshot
	$(XAICLIP) eval probe --h5 $(DEMO_OUT)/toycells.h5 --output-dir $(DEMO_OUT)/eval_probe
	@echo "== train: patient tree -> split -> fit per modality -> extract -> fuse; a short CLIP run"
	$(XAICLIP) train toy-tree --output-dir $(DEMO_OUT)/tree
	$(XAICLIP) train pipeline --root-dir $(DEMO_OUT)/tree --output-dir $(DEMO_OUT)/train --model test_resnet \
	  --pretrained false --image-size 64 --epochs 3 --batch-size 16 --learning-rate 1e-3 --device cpu \
	  --num-workers 0 --best-hparams-dir $(DEMO_OUT)/train/best_hparams
	$(XAICLIP) train show $(DEMO_OUT)/train/pipeline-A
	$(XAICLIP) train clip --config toy-vit --epochs 1 --output-dir $(DEMO_OUT)/clip
	@echo "== report: one self-contained HTML page of everything above (its path is the last line)"
	$(XAICLIP) eval report $(DEMO_OUT)/toycells.h5 $(DEMO_OUT)/cam_gradcam $(DEMO_OUT)/cam_layercam $(DEMO_OUT)/attrib_exact \
	  $(DEMO_OUT)/attrib_lazy $(DEMO_OUT)/eval_smdl_exact $(DEMO_OUT)/eval_smdl_lazy $(DEMO_OUT)/eval_faith_gradcam \
	  $(DEMO_OUT)/eval_faith_layercam $(DEMO_OUT)/eval_compare $(DEMO_OUT)/eval_mufidelity $(DEMO_OUT)/eval_drop \
	  $(DEMO_OUT)/eval_loc_gradcam $(DEMO_OUT)/eval_loc_layercam $(DEMO_OUT)/eval_sanity $(DEMO_OUT)/eval_zeroshot \
	  $(DEMO_OUT)/eval_probe --out $(DEMO_OUT)/report.html

# The README's picture of the demo's report (needs Debian's chromium).
report-screenshot: demo
	$(PY) -c "from xaiclip_cli.viz.report import screenshot; screenshot('$(DEMO_OUT)/report.html', 'docs/report.png', 1280, 2000)"

test: install
	$(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check xaiclip_cli tests benchmarks

bench: install
	bash benchmarks/run_all.sh $(PY)

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache .ruff_cache
