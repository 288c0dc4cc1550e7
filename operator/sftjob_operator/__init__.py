"""The SFTJob operator: runs `training-hub.io/v1alpha1` SFTJob resources as gangs of GPU pods.

Modules (docs/architecture.md): api (models), crd (models -> CRD), render (pure: SFTJob -> objects),
reconcile (pure: desired vs. observed -> actions + status), handlers (kopf wiring), kube (API calls), cli.
Importing the package loads nothing heavy; kopf and kubernetes are imported by handlers/kube only.
"""
