"""Kubeflow pipelines built from the components in components/."""
