"""Downstream evaluation: small models trained from nested label fractions, as one grid.

- :mod:`~adaptor.downstream.grid`: the grid runner (method × fraction × seed cells, one Ray
  task each, prepared data once per worker, resume by cell)
- :mod:`~adaptor.downstream.classification`: heads on cached embeddings (encoder vs Adaptor)
- :mod:`~adaptor.downstream.segmentation`: decoders on the encoder's feature maps
- :mod:`~adaptor.downstream.tuning`: classification from encoders tuned online (PEFT)
- :mod:`~adaptor.downstream.zeroshot`: classification without labels, from prompts
  (:mod:`~adaptor.downstream.prompts`) through the Adaptor's text path
- :mod:`~adaptor.downstream.step_memory`: the peak memory of one training step
- :mod:`~adaptor.downstream.results` and :mod:`~adaptor.downstream.plots`: tables and plots
"""
