"""The training pipeline and the verbs around it.

- :mod:`pipelines.training`: ``training_pipeline`` (wiring only) and its builder.
- :mod:`pipelines.compile`: IR YAML.
- :mod:`pipelines.local`: ``run_local`` through ``kfp.local`` against the local stack.
- :mod:`pipelines.submit` / :mod:`pipelines.schedule`: runs and recurring runs on Kubeflow /
  OpenShift AI Data Science Pipelines.
- :mod:`pipelines.params`, :mod:`pipelines.source`: parameter parsing, source fingerprints.
"""
