# Container images. `make images` builds every image and tags it with the package version;
# the references come from `python -m emoflow.images` (the one place components, the pipeline,
# the InferenceService and the manifests read them from). Override the registry or tag with
# EMOFLOW_IMAGE_REGISTRY / EMOFLOW_IMAGE_TAG, the builder with DOCKER=podman.
# Use from the top Makefile with `include images/images.mk`, or: make -f images/images.mk images
IMAGES_PYTHON ?= python3
DOCKER ?= docker

.PHONY: images
images:  ## build and tag the base, train-gpu, serve and serve-gpu images
	@set -e; refs="$$($(IMAGES_PYTHON) -m emoflow.images)"; \
	ref() { printf '%s\n' "$$refs" | sed -n "s/^$$1=//p"; }; \
	$(DOCKER) build -f images/base/Dockerfile -t "$$(ref base)" . ; \
	$(DOCKER) build -f images/train-gpu/Dockerfile -t "$$(ref train-gpu)" . ; \
	$(DOCKER) build -f images/serve/Dockerfile --build-arg DEVICE=cpu -t "$$(ref serve)" . ; \
	$(DOCKER) build -f images/serve/Dockerfile --build-arg DEVICE=gpu -t "$$(ref serve-gpu)" . ; \
	printf 'built:\n%s\n' "$$refs"
