"""Built-in generated datasets (no download): Shapes (:mod:`.shapes`) and panoptic Shapes
(:mod:`.shapes_panoptic`), written once as real files and read back by the format readers."""
