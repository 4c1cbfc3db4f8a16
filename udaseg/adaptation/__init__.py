"""Feature- and output-level domain adaptation methods (``udaseg adapt``); see ``registry``."""
