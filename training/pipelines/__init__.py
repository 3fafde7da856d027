"""Pipelines built from the stages: the stage runner, the chignolin demo, the alanine-dipeptide studies, the PHL study."""
