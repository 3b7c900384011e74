"""Evaluation metrics (torchmetrics underneath), each module for one kind of prediction.

- :mod:`~adaptor.metrics.classification`: AUROC, AUPRC, accuracy, F1 with missing labels
- :mod:`~adaptor.metrics.segmentation`: Dice and IoU, over a split and per image
- :mod:`~adaptor.metrics.retrieval`: cross-modal recall@k on paired embeddings
"""
