# Thin driver: every target calls the patchstack tool (build/patchstack), where the behaviour lives.
#
#   make help               this list
#   make check [GEMMA4=1]   validate every patch series against its pinned source
#   make lint               lint the series files and our patch files
#   make test               run the test suite (sets up its own venv under out/)
#   make sources            fetch and verify the pinned sources into the cache
#   make workspace UPSTREAM=<name> [GEMMA4=1]   the series as commits on the pin, under out/workspace/
#   make export UPSTREAM=<name>                 the workspace's commits back into patches/
#   make rebase UPSTREAM=<name> TO=<version|commit> [CONTINUE=1]   the series onto a new upstream
#   make matrix [UPSTREAM=<name>...] [GEMMA4=0|1]   every patch x upstream versions: out/matrix/index.html
#                                      (every group unless GEMMA4 is given; versions: patches/matrix.toml)
#   make image [GEMMA4=1] [TAG=...] [NAME=VALUE...]   the GPU image (needs a Docker engine)
#                                      (DEPS_IMAGE=<tag>: on a deps image, without the deps steps)
#   make image-deps [GEMMA4=1] [SMOKE=1] [NAME=VALUE...]   the Dockerfile's deps stage alone, tagged
#                                      by a hash of its settings, to push and reuse (DEPS_IMAGE)
#   make image-smoke [GEMMA4=1]        offline smoke build of the same Dockerfile, checked inside
#   make image-test IMAGE=... [TIER=static|gpu|rl] [GPUS=all|N|0,1]   the image's own tests, in it
#                                      (SMOKE=1 [GEMMA4=1]: the smoke image); out/image-test/
#   make inspect IMAGE=...             an image's provenance labels
#   make push REGISTRY=... [GEMMA4=1]  push the image's tags
#   make slurm-script [IMAGE=<tag>] [VALUES=<file>] [SET='key=value ...']   the Slurm batch script
#                                      (pyxis/enroot): out/cluster/gemma4.sbatch (docs/cluster.md)
#   make k8s-manifests IMAGE=<tag> [VALUES=<file>] [SET='key=value ...']    the KubeRay RayJob,
#                                      RayCluster and shared claim: out/cluster/k8s/
#   make clean                         remove out/ and the tool's egg-info
#   make distclean                     also the source cache, the smoke and Slurm test images, their
#                                      bases and the smoke deps images
#
# Sources come from UPSTREAM_<NAME>_GIT (a local mirror) or the URLs in patches/pins.toml.

PYTHON  ?= python3
GEMMA4  ?= 0
VENV    := out/venv
PY      := $(VENV)/bin/python
TOOL    := $(PY) -m patchstack
SELECT  := $(if $(filter 1,$(GEMMA4)),--gemma4,)
# The Dockerfile's build arguments a user may set, as NAME=VALUE on make's command line or in the
# environment (`make help` lists them with their defaults); the tool checks and records them.
IMAGE_SETTINGS := $(filter-out BASE_IMAGE OFFLINE GEMMA4 ALLOW_SKIP,$(shell sed -n 's/^ARG \([A-Za-z0-9_]*\).*/\1/p' docker/Dockerfile | sort -u))
BUILD_ARGS := $(foreach v,$(IMAGE_SETTINGS),$(if $($(v)),--build-arg '$(v)=$($(v))'))
BASE    := $(if $(BASE_IMAGE),--base-image '$(BASE_IMAGE)')
ifeq ($(filter 0 1,$(GEMMA4)),)
$(error GEMMA4 must be 0 or 1, not '$(GEMMA4)': GEMMA4=1 adds the Gemma4 patch groups)
endif

.PHONY: help venv sources check lint test clean distclean workspace export rebase matrix image image-deps image-smoke image-test inspect push slurm-script k8s-manifests

# The targets and what they do: the comment block at the top of this file.
help:
	@sed -n 's/^#   /  /p' $(firstword $(MAKEFILE_LIST))
	@echo "Image settings (make image NAME=VALUE ...; defaults from docker/Dockerfile):"
	@sed -n 's/^ARG \([A-Za-z0-9_]*\)=\{0,1\}\(.*\)/  \1=\2/p' docker/Dockerfile \
	  | grep -v -E '^  (OFFLINE|GEMMA4|ALLOW_SKIP)=' | sort -u -t= -k1,1

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@echo "make: installing the tool and the test packages into $(VENV) (about 5.5 GB the first time; pip shows its progress)"
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --progress-bar on -e '.[test]'
	touch $@

sources: venv
	$(TOOL) sources

check: venv
	$(TOOL) check $(SELECT) $(ARGS)

workspace: venv
	$(TOOL) workspace $(UPSTREAM) $(SELECT) $(ARGS)

export: venv
	$(TOOL) export $(UPSTREAM) $(ARGS)

rebase: venv
	$(TOOL) rebase $(UPSTREAM) $(if $(TO),--to $(TO)) $(if $(filter 1,$(CONTINUE)),--continue) $(ARGS)

# The matrix shows every group unless GEMMA4 is given on the command line or in the environment
# (GEMMA4=0: base only; GEMMA4=1: base and gemma4).
MATRIX_SELECT := $(if $(filter command line environment,$(origin GEMMA4)),$(if $(filter 1,$(GEMMA4)),--gemma4,--base))
matrix: venv
	$(TOOL) matrix $(UPSTREAM) $(MATRIX_SELECT) $(ARGS)

image: venv
	$(TOOL) image $(SELECT) $(if $(TAG),--tag $(TAG)) $(BASE) $(BUILD_ARGS) $(ARGS)

image-deps: venv
	$(TOOL) image-deps $(SELECT) $(if $(filter 1,$(SMOKE)),--smoke) $(BASE) $(BUILD_ARGS) $(ARGS)

image-smoke: venv
	$(TOOL) image-smoke $(SELECT) $(BUILD_ARGS) $(ARGS)

image-test: venv
	$(TOOL) image-test $(if $(IMAGE),'$(IMAGE)',$(if $(filter 1,$(SMOKE)),--smoke $(SELECT))) $(if $(TIER),--tier $(TIER)) $(if $(GPUS),--gpus $(GPUS)) $(ARGS)

inspect: venv
	$(TOOL) inspect $(IMAGE)

push: venv
	$(TOOL) push $(SELECT) --registry $(REGISTRY) $(if $(TAG),--tag $(TAG))

# The cluster launchers, from cluster/values.toml (or VALUES=<file>, SET='nodes=4 ...') and the
# Dockerfile's Ray pin; IMAGE is the tag `make image` printed.
CLUSTER_ARGS = $(if $(IMAGE),--image '$(IMAGE)') $(if $(VALUES),--values '$(VALUES)') $(foreach s,$(SET),--set '$(s)')
slurm-script: venv
	$(PY) cluster/render.py slurm $(CLUSTER_ARGS) $(ARGS)

k8s-manifests: venv
	$(PY) cluster/render.py k8s $(CLUSTER_ARGS) $(ARGS)

lint: venv
	$(TOOL) lint

# pytest exits 5 when it collected no test: for this suite that means the suite is broken.
test: venv
	$(PY) -m pytest $(ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests (exit 5): the suite is broken" >&2; fi; \
	exit $$rc

clean:
	rm -rf out build/*.egg-info

# Also what this project keeps outside the clone: its source cache (as the tool finds it) and the
# smoke and Slurm test images and the Debian bases it built, by their names; nothing else.
CACHE := $(or $(PATCHSTACK_CACHE),$(if $(XDG_CACHE_HOME),$(XDG_CACHE_HOME),$(HOME)/.cache)/gemma4-stack)
distclean: clean
	@# only the folders the tool makes there, so that a cache variable pointing elsewhere loses nothing else
	rm -rf $(foreach d,git locks rootfs sdist,'$(CACHE)/$(d)')
	-rmdir '$(CACHE)' 2>/dev/null
	@if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then \
	  imgs=$$(docker images --format '{{.Repository}}:{{.Tag}}' | grep -E '^gemma4-stack-(smoke|slurm-test)(-base|-deps)?:' || true); \
	  if [ -n "$$imgs" ]; then echo "docker rmi $$imgs"; docker rmi $$imgs; fi; \
	else echo "no Docker engine answers: smoke images, if any, are left"; fi
