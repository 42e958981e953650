"""mmext_init: exact, reported weight initialization for OpenMMLab 2.0 (work in progress)."""
