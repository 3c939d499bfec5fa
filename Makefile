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
#   make slurm-script [IMAGE=<ref>] [VALUES=<file>] [SET='key=value ...']   the Slurm batch script
#                                      (pyxis/enroot): out/cluster/gemma4.sbatch (docs/cluster.md)
#   make k8s-manifests IMAGE=<ref> [VALUES=<file>] [SET='key=value ...']    the KubeRay RayJob,
#                                      RayCluster and shared claim: out/cluster/k8s/
#   make clean                         remove out/ but the installed environments, and the egg-info
#   make distclean [CACHE=1]           also the environments and the smoke and Slurm test images this
#                                      clone made (CACHE=1: the source cache, shared by every clone)
#
# Sources come from UPSTREAM_<NAME>_GIT (a local mirror) or the URLs in patches/pins.toml.

PYTHON  ?= python3
GEMMA4  ?= 0
# Two environments: the tool's (its own two packages, seconds to install) for every target but
# `test`, and the test stack's (torch, transformers, megatron-core, Triton ...; about 5.5 GB).
TOOL_VENV := out/tool-venv
VENV    := out/venv
TOOL    := $(TOOL_VENV)/bin/python -m patchstack
PY      := $(VENV)/bin/python
SELECT  := $(if $(filter 1,$(GEMMA4)),--gemma4,)
# The Dockerfile's build arguments a user may set, as NAME=VALUE on make's command line or in the
# environment (`make help` lists them with their defaults); the tool checks and records them.
IMAGE_SETTINGS := $(filter-out BASE_IMAGE OFFLINE GEMMA4 ALLOW_SKIP,$(shell sed -n 's/^ARG \([A-Za-z0-9_]*\).*/\1/p' docker/Dockerfile | sort -u))
BUILD_ARGS := $(foreach v,$(IMAGE_SETTINGS),$(if $($(v)),--build-arg '$(v)=$($(v))'))
BASE    := $(if $(BASE_IMAGE),--base-image '$(BASE_IMAGE)')
ifeq ($(filter 0 1,$(GEMMA4)),)
$(error GEMMA4 must be 0 or 1, not '$(GEMMA4)': GEMMA4=1 adds the Gemma4 patch groups)
endif
# Every NAME=VALUE this Makefile reads; any other on the command line is refused before anything
# runs (a typo such as TE_VERISON=2.9 would otherwise build with the default).
# The tool's own environment variables (docs/tool.md) may be given here too.
SETTINGS := PYTHON GEMMA4 ARGS UPSTREAM TO CONTINUE TAG BASE_IMAGE IMAGE SMOKE TIER GPUS REGISTRY \
            VALUES SET CACHE $(IMAGE_SETTINGS) UPSTREAM_%_GIT UPSTREAM_%_SDIST PATCHSTACK_CACHE XDG_CACHE_HOME \
            PIP_INDEX_URL DEBIAN_MIRROR KUBERAY_CRDS
UNKNOWN := $(filter-out $(SETTINGS),$(foreach v,$(.VARIABLES),$(if $(filter command line,$(origin $(v))),$(v))))
ifneq ($(strip $(UNKNOWN)),)
$(error $(or $(shell $(PYTHON) build/patchstack/preflight.py unknown $(UNKNOWN) -- $(SETTINGS)),unknown setting $(strip $(UNKNOWN)): nothing was run))
endif
# `make distclean` removes only the Docker images this clone made: they carry this label.
CLONE_LABEL = $(shell $(PYTHON) build/patchstack/preflight.py clone-label)

.PHONY: help preflight venv tool-venv sources check lint test clean distclean workspace export rebase matrix image image-deps image-smoke image-test inspect push slurm-script k8s-manifests

# The targets and what they do: the comment block at the top of this file.
help:
	@sed -n 's/^#   /  /p' $(firstword $(MAKEFILE_LIST))
	@echo "Image settings (make image NAME=VALUE ...; defaults from docker/Dockerfile):"
	@sed -n 's/^ARG \([A-Za-z0-9_]*\)=\{0,1\}\(.*\)/  \1=\2/p' docker/Dockerfile \
	  | grep -v -E '^  (OFFLINE|GEMMA4|ALLOW_SKIP)=' | sort -u -t= -k1,1

# Before any install: this Python's version and the values given (TAG), with the system Python.
preflight:
	@$(PYTHON) build/patchstack/preflight.py

tool-venv: preflight $(TOOL_VENV)/.installed
venv: preflight $(VENV)/.installed

# A failed install leaves no half-made environment behind (the next make starts it again).
$(TOOL_VENV)/.installed: pyproject.toml
	@echo "make: installing the tool into $(TOOL_VENV) (unidiff and the Docker SDK, pinned in pyproject.toml)"
	@$(PYTHON) -m venv $(TOOL_VENV) && $(TOOL_VENV)/bin/python -m pip install -q --progress-bar off -e . \
	  || { rm -rf $(TOOL_VENV); echo "make: the tool's install failed (pip's message above); $(TOOL_VENV) removed" >&2; exit 1; }
	@touch $@

$(VENV)/.installed: pyproject.toml
	@echo "make: installing the tool and the test packages into $(VENV) (about 5.5 GB the first time; pip shows its progress)"
	@$(PYTHON) -m venv $(VENV) && $(PY) -m pip install --progress-bar on -e '.[test]' \
	  || { rm -rf $(VENV); echo "make: the test stack's install failed (pip's message above); $(VENV) removed" >&2; exit 1; }
	@touch $@

sources: tool-venv
	$(TOOL) sources

check: tool-venv
	$(TOOL) check $(SELECT) $(ARGS)

workspace: tool-venv
	$(TOOL) workspace $(UPSTREAM) $(SELECT) $(ARGS)

export: tool-venv
	$(TOOL) export $(UPSTREAM) $(ARGS)

rebase: tool-venv
	$(TOOL) rebase $(UPSTREAM) $(if $(TO),--to $(TO)) $(if $(filter 1,$(CONTINUE)),--continue) $(ARGS)

# The matrix shows every group unless GEMMA4 is given on the command line or in the environment
# (GEMMA4=0: base only; GEMMA4=1: base and gemma4).
MATRIX_SELECT := $(if $(filter command line environment,$(origin GEMMA4)),$(if $(filter 1,$(GEMMA4)),--gemma4,--base))
matrix: tool-venv
	$(TOOL) matrix $(UPSTREAM) $(MATRIX_SELECT) $(ARGS)

image: tool-venv
	$(TOOL) image $(SELECT) $(if $(TAG),--tag '$(TAG)') $(BASE) $(BUILD_ARGS) $(ARGS)

image-deps: tool-venv
	$(TOOL) image-deps $(SELECT) $(if $(filter 1,$(SMOKE)),--smoke) $(BASE) $(BUILD_ARGS) $(ARGS)

image-smoke: tool-venv
	$(TOOL) image-smoke $(SELECT) $(BUILD_ARGS) $(ARGS)

image-test: tool-venv
	$(TOOL) image-test $(if $(IMAGE),'$(IMAGE)',$(if $(filter 1,$(SMOKE)),--smoke $(SELECT))) $(if $(TIER),--tier $(TIER)) $(if $(GPUS),--gpus $(GPUS)) $(ARGS)

inspect: tool-venv
	$(TOOL) inspect $(IMAGE)

push: tool-venv
	@[ -n '$(REGISTRY)' ] || { echo "make push needs REGISTRY=<host[/path]>, e.g. REGISTRY=registry.example.com/team" >&2; exit 2; }
	$(TOOL) push $(SELECT) --registry '$(REGISTRY)' $(if $(TAG),--tag '$(TAG)')

# The cluster launchers, from cluster/values.toml (or VALUES=<file>, SET='nodes=4 ...') and the
# Dockerfile's Ray pin; IMAGE is the image in a registry (<ref>: registry.example.com/team/gemma4-stack:<tag>,
# after make push); a local tag is refused for Slurm (docs/cluster.md, "The image's name").
CLUSTER_ARGS = $(if $(IMAGE),--image '$(IMAGE)') $(if $(VALUES),--values '$(VALUES)') $(foreach s,$(SET),--set '$(s)')
slurm-script: tool-venv
	$(TOOL_VENV)/bin/python cluster/render.py slurm $(CLUSTER_ARGS) $(ARGS)

k8s-manifests: tool-venv
	$(TOOL_VENV)/bin/python cluster/render.py k8s $(CLUSTER_ARGS) $(ARGS)

lint: tool-venv
	$(TOOL) lint

# pytest exits 5 when it collected no test: for this suite that means the suite is broken.
test: venv
	$(PY) -m pytest $(ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests (exit 5): the suite is broken" >&2; fi; \
	exit $$rc

# The installed environments stay (make distclean removes them): everything else under out/ goes.
clean:
	@if [ -d out ]; then find out -mindepth 1 -maxdepth 1 ! -name venv ! -name tool-venv -exec rm -rf {} +; fi
	rm -rf build/*.egg-info
	@for v in $(VENV) $(TOOL_VENV); do [ ! -d $$v ] || echo "kept $$v (installed packages; make distclean removes it)"; done

# Also what this clone made outside itself: the Docker images it built for its checks (the smoke
# images and their base, the Slurm test images), found by the clone label they carry, and no other
# clone's. The source cache is shared by every clone of this user: CACHE=1 removes it too (the
# folders the tool makes there only, so a cache variable pointing elsewhere loses nothing else).
SRC_CACHE := $(or $(PATCHSTACK_CACHE),$(if $(XDG_CACHE_HOME),$(XDG_CACHE_HOME),$(HOME)/.cache)/gemma4-stack)
distclean:
	rm -rf out build/*.egg-info
	@if [ "$(CACHE)" = 1 ]; then \
	  echo "rm -rf $(foreach d,git locks rootfs sdist,'$(SRC_CACHE)/$(d)')"; \
	  rm -rf $(foreach d,git locks rootfs sdist,'$(SRC_CACHE)/$(d)'); rmdir '$(SRC_CACHE)' 2>/dev/null || true; \
	else echo "kept the source cache $(SRC_CACHE) (shared by every clone here; make distclean CACHE=1 removes it)"; fi
	@if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then \
	  label='$(CLONE_LABEL)'; [ -n "$$label" ] || { echo "distclean: no clone label ($(PYTHON) failed): images left" >&2; exit 1; }; \
	  imgs=$$(docker images -q --filter "label=$$label" | sort -u); \
	  if [ -n "$$imgs" ]; then echo "docker rmi (this clone's images, label $$label):"; \
	    docker images --filter "label=$$label" --format '  {{.Repository}}:{{.Tag}}'; \
	    docker rmi -f $$imgs >/dev/null; else echo "no Docker image of this clone's"; fi; \
	else echo "no Docker engine answers: this clone's images, if any, are left"; fi
