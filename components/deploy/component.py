from kfp import dsl

from emoflow.images import image


@dsl.component(base_image=image("base"), install_kfp_package=False)
def deploy(
    registration: dict,
    store: str,
    target: str,
    port: int,
    namespace: str,
    isvc_name: str,
    gpu: str,
    node_selector: dict,
    tolerations: list,
    service_account: str,
    canary_traffic_percent: int,
    image: str,
    timeout_s: int,
    image_pull_secrets: list,
    assets: str,
) -> str:
    """Serve the production model: a KServe InferenceService, or the same predictor on 127.0.0.1."""
    from emoflow import steps
    from emoflow.assets import use_mirror

    use_mirror(assets)  # a local predictor started from here inherits the mirror

    if target == "kserve" and not registration.get("promoted", True):
        # a candidate that did not beat production: the served model stays as it is
        print(f"not deploying: {registration.get('reason')}")
        return "unchanged"
    ref = f"{registration['model']}@production"
    return steps.deploy(ref, store, target=target, port=port, namespace=namespace, isvc_name=isvc_name,
                        gpu=gpu, node_selector=node_selector, tolerations=tolerations,
                        service_account=service_account, canary_traffic_percent=canary_traffic_percent,
                        timeout_s=timeout_s, image=image, image_pull_secrets=image_pull_secrets, assets=assets)
