"""The transfer study: pretrain on a paired corpus, evaluate on other datasets, across a
grid of encoder pairs and Adaptor presets (``adaptor study``)."""

from adaptor.study.runner import StudyError, StudyResult, run_study

__all__ = ["StudyError", "StudyResult", "run_study"]
