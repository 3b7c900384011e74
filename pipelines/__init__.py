"""Batch jobs for a Ray cluster: ``python -m pipelines.<job> --config FILE --out DIR``.

Jobs: ``embed`` (source → shards, with encoder actors), ``pretrain`` (Adaptor under Ray
Train), ``finetune`` (downstream heads), ``index`` (retrieval index) and ``flow`` (all of
them). Each calls the stage functions of :mod:`adaptor.run`, the code behind
``adaptor run``, and is driven by a YAML config from ``pipelines/configs/``. Submit one
to a cluster with ``ray job submit --working-dir . -- python -m pipelines.flow --config …``.
"""
