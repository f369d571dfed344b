"""Cluster infrastructure: kustomize manifests, offline validation, and the bootstrap.

``infra.render`` renders the overlays, ``infra.validate`` checks them against the upstream
schemas, ``infra.bootstrap`` applies them in dependency order. Never imports ``pipelines`` or
``components``.
"""
