"""Training under Ray Train: Adaptor pretraining (and, later, downstream heads)."""
