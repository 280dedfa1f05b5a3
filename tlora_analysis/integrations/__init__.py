"""Where this toolkit meets other frameworks: the ``transformers.Trainer`` callback (:mod:`.trainer`)."""
